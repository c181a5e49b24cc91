package fleet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/blocknat/blocknat/userspace/logattr"
	"github.com/blocknat/blocknat/userspace/metrics"
	"github.com/blocknat/blocknat/userspace/config"
	"github.com/blocknat/blocknat/userspace/pgfleet"
	"github.com/blocknat/blocknat/userspace/replicate"
)

// Metric names of the fleet service's endpoint (metrics.listen). The only
// label besides the alarm's reason is router: a router's name, which says
// where records are kept, not whose they are.
const (
	MetricDatabaseUp              = "blocknat_fleet_database_up"
	MetricRouterStoreSeq          = "blocknat_fleet_router_store_seq"
	MetricRouterAuditSeq          = "blocknat_fleet_router_audit_seq"
	MetricRouterLastIngest        = "blocknat_fleet_router_last_ingest_timestamp_seconds"
	MetricRouterAuditHoles        = "blocknat_fleet_router_audit_holes"
	MetricRouterAuditHoleEntries  = "blocknat_fleet_router_audit_hole_entries"
	MetricRouterStale             = "blocknat_fleet_router_stale"
	MetricStaleAfter              = "blocknat_fleet_stale_after_seconds"
	MetricReplicationConnected    = "blocknat_fleet_replication_connected"
	MetricReplicationLag          = "blocknat_fleet_replication_lag_seconds"
	MetricReplicationMaxLag       = "blocknat_fleet_replication_max_lag_seconds"
	MetricReplicationAuditPending = "blocknat_fleet_replication_audit_pending_entries"
	MetricAlarm                   = "blocknat_fleet_alarm"
)

// Alarm reasons: the reason label of blocknat_fleet_alarm, each 1 while it
// holds.
const (
	AlarmDatabase    = "database"     // the scrape's queries of the database failed
	AlarmReplication = "replication"  // the fleet's own audit copy is behind replicate_max_lag, or stopped
	AlarmStaleRouter = "stale_router" // a router has not ingested for stale_after
)

// AlarmReasons lists every reason, in the order the alarm states them.
var AlarmReasons = []string{AlarmDatabase, AlarmReplication, AlarmStaleRouter}

// MetricNames lists every metric name the fleet service exports, besides
// the Go runtime's and the process's.
var MetricNames = []string{MetricDatabaseUp, MetricRouterStoreSeq, MetricRouterAuditSeq, MetricRouterLastIngest,
	MetricRouterAuditHoles, MetricRouterAuditHoleEntries, MetricRouterStale, MetricStaleAfter,
	MetricReplicationConnected, MetricReplicationLag, MetricReplicationMaxLag, MetricReplicationAuditPending, MetricAlarm}

// scrapeTimeout bounds a scrape's queries below Prometheus's default
// scrape_timeout (10s), so that a hung database still yields a scrape
// carrying the database alarm rather than a timed-out one carrying
// nothing.
const scrapeTimeout = 5 * time.Second

const (
	labelRouter = "router"
	labelReason = "reason"
)

// figures are what one scrape reports, read once.
type figures struct {
	now time.Time
	// routers and holes are nil when the database could not be read,
	// and dbErr says why.
	routers []pgfleet.RouterState
	holes   map[string]holeCount
	dbErr   error
	// replication is the fleet's own audit copy; nil before it starts.
	replication *replicate.State
	staleAfter  time.Duration
}

type holeCount struct{ runs, entries uint64 }

// isFleetLog tells a fleet service's own audit log from a router's. Only
// routers are held to stale_after: a fleet's log ingests when someone
// uses that fleet, which a standby may not for days, and this service's
// own copy has the replication reason instead.
func isFleetLog(router string) bool { return strings.HasPrefix(router, config.FleetRouterPrefix) }

// stale says whether r is a router in service (not retired, or back
// since) that has not ingested for staleAfter.
func (f *figures) stale(r pgfleet.RouterState) bool {
	return !isFleetLog(r.Name) && r.InService() && f.now.Sub(r.LastIngest) > f.staleAfter
}

// alarm is the sentence for one reason, "" when it does not hold.
func (f *figures) alarm(reason string) string {
	switch reason {
	case AlarmDatabase:
		if f.dbErr != nil {
			return "the fleet database cannot be read: " + f.dbErr.Error()
		}
	case AlarmReplication:
		if f.replication != nil {
			return f.replication.Behind()
		}
	case AlarmStaleRouter:
		var names []string
		for _, r := range f.routers {
			if f.stale(r) {
				names = append(names, r.Name)
			}
		}
		if len(names) > 0 {
			return fmt.Sprintf("no ingest for over stale_after %s from %s", f.staleAfter, strings.Join(names, ", "))
		}
	}
	return ""
}

// figures reads the database and the replicator for one scrape.
func (s *Service) figures() *figures {
	f := &figures{now: s.now(), staleAfter: time.Duration(s.cfg.StaleAfter)}
	if s.repl != nil {
		st := s.repl.State()
		f.replication = &st
	}
	ctx, cancel := context.WithTimeout(context.Background(), scrapeTimeout)
	defer cancel()
	routers, err := s.db.Routers(ctx)
	if err != nil {
		f.dbErr = err
		return f
	}
	holes, err := s.db.AuditHoles(ctx)
	if err != nil {
		f.dbErr = err
		return f
	}
	f.routers, f.holes = routers, map[string]holeCount{}
	for _, h := range holes {
		c := f.holes[h.Router]
		c.runs++
		c.entries += h.ToSeq - h.FromSeq + 1
		f.holes[h.Router] = c
	}
	return f
}

// collector is the fleet service's prometheus.Collector.
type collector struct {
	read func() *figures

	databaseUp, storeSeq, auditSeq, lastIngest, holes, holeEntries, stale, staleAfter *prometheus.Desc
	replConnected, replLag, replMaxLag, replPending, alarm, scrapeError               *prometheus.Desc
}

func newCollector(read func() *figures) *collector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, labels, nil)
	}
	return &collector{
		read: read,
		databaseUp: d(MetricDatabaseUp,
			"1 when this scrape's queries of the fleet database succeeded; else 0, and the router series are absent."),
		storeSeq: d(MetricRouterStoreSeq,
			"Last seq of the router's store stream (records, leases, epochs) the database holds; 0 for a fleet service's own log.", labelRouter),
		auditSeq:   d(MetricRouterAuditSeq, "Last seq of the router's audit log the database holds.", labelRouter),
		lastIngest: d(MetricRouterLastIngest, "Unix time the database last took a batch from the router, of either stream.", labelRouter),
		holes: d(MetricRouterAuditHoles,
			"Runs of the router's audit entries its own retention removed before they reached the database (recorded holes).", labelRouter),
		holeEntries: d(MetricRouterAuditHoleEntries, "Audit entries of the router lost in those holes.", labelRouter),
		stale: d(MetricRouterStale,
			"1 while the router (not a fleet service's own log) has not ingested for over stale_after; else 0.", labelRouter),
		staleAfter:    d(MetricStaleAfter, "stale_after: a router without an ingest for longer raises the stale_router alarm."),
		replConnected: d(MetricReplicationConnected, "1 while the last exchange of the fleet's own audit copy with the database succeeded; else 0."),
		replLag: d(MetricReplicationLag,
			"Age of the fleet's oldest own audit entry not yet in the database; 0 when none waits."),
		replMaxLag:  d(MetricReplicationMaxLag, "replicate_max_lag: above it the alarm's replication reason holds."),
		replPending: d(MetricReplicationAuditPending, "The fleet's own audit entries not yet in the database."),
		alarm: d(MetricAlarm,
			"1 while the reason holds: database (the fleet database cannot be read), replication (the fleet's own audit copy is behind replicate_max_lag or stopped) or stale_router (a router has not ingested for stale_after); else 0.",
			labelReason),
		scrapeError: d("blocknat_fleet_scrape_error", "A part of the fleet's state could not be read for this scrape."),
	}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.databaseUp, c.storeSeq, c.auditSeq, c.lastIngest, c.holes, c.holeEntries, c.stale,
		c.staleAfter, c.replConnected, c.replLag, c.replMaxLag, c.replPending, c.alarm} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	f := c.read()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	flag := func(b bool) float64 {
		if b {
			return 1
		}
		return 0
	}
	gauge(c.databaseUp, flag(f.dbErr == nil))
	for _, r := range f.routers {
		gauge(c.storeSeq, float64(r.Store), r.Name)
		gauge(c.auditSeq, float64(r.Audit), r.Name)
		gauge(c.lastIngest, float64(r.LastIngest.UnixNano())/1e9, r.Name)
		// 0 for a router without holes, so that an alert on an increase
		// has a series to compare with.
		h := f.holes[r.Name]
		gauge(c.holes, float64(h.runs), r.Name)
		gauge(c.holeEntries, float64(h.entries), r.Name)
		gauge(c.stale, flag(f.stale(r)), r.Name)
	}
	gauge(c.staleAfter, f.staleAfter.Seconds())
	if r := f.replication; r != nil {
		gauge(c.replConnected, flag(r.Connected))
		gauge(c.replLag, r.Lag.Seconds())
		gauge(c.replMaxLag, r.MaxLag.Seconds())
		gauge(c.replPending, float64(r.AuditPending))
	}
	for _, reason := range AlarmReasons {
		gauge(c.alarm, flag(f.alarm(reason) != ""), reason)
	}
	if f.dbErr != nil {
		// Served with the rest (promhttp.ContinueOnError), the alarm
		// above all.
		ch <- prometheus.NewInvalidMetric(c.scrapeError, f.dbErr)
	}
}

// metricsComponent serves the fleet's figures on metrics.listen; it does
// nothing when that is empty. It binds at start, so that a taken port
// stops the start naming the field.
func (s *Service) metricsComponent(done *<-chan error) component {
	var stop context.CancelFunc
	return component{name: "metrics",
		start: func(ctx context.Context) error {
			listen := s.cfg.Metrics.Listen
			if listen == "" {
				return nil
			}
			reg, err := metrics.Registry(newCollector(s.figures))
			if err != nil {
				return err
			}
			ln, err := metrics.Listen(listen)
			if err != nil {
				return err
			}
			s.mu.Lock()
			s.metricsAddr = ln.Addr()
			s.mu.Unlock()
			ctx, stop = context.WithCancel(ctx)
			served := make(chan error, 1)
			go func() {
				served <- metrics.Serve(ctx, ln, reg, s.log)
				// Closed after its one error, so that stop still returns
				// when Run has taken that error.
				close(served)
			}()
			*done = served
			s.log.Info("serving metrics", logattr.Listen, ln.Addr().String(), logattr.Path, metrics.Path)
			return nil
		},
		stop: func() error {
			if stop == nil {
				return nil
			}
			stop()
			if err := <-*done; err != nil && !errors.Is(err, context.Canceled) {
				return err
			}
			return nil
		},
	}
}

// MetricsAddr is the address the metrics endpoint listens on; nil while it
// does not.
func (s *Service) MetricsAddr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.metricsAddr
}
