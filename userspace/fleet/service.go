// Package fleet is the fleet service, `blocknatd fleet --config FILE`: the
// query API of userspace/api answered from the PostgreSQL copy that every
// router replicates (userspace/pgfleet's Reader), so that one audited
// lookup covers the whole fleet and each candidate names the router that
// recorded it.
//
// The service keeps an audit log of its own, set up as a router's agent
// sets up its own (userspace/apiserve: the same chain, signed checkpoints,
// roles and audit rule), in state_dir, and copies it to the database as
// router "fleet:NAME" (userspace/replicate, audit stream only), so that
// the uses of the copy are on record beside the copy.
//
// At start it migrates the database's schema (as the owner role), and it
// drops the expired day partitions then and daily, with the same retention
// settings as the routers.
//
// With metrics.listen set it serves /metrics (metrics.go): each router's
// copy as the database holds it, read once per scrape, and an alarm for
// an unreadable database, a lagging copy of its own log, and a router
// that has gone quiet for longer than stale_after, which a replicating
// router never does.
package fleet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"github.com/blocknat/blocknat/userspace/api"
	"github.com/blocknat/blocknat/userspace/apiserve"
	"github.com/blocknat/blocknat/userspace/logattr"
	"github.com/blocknat/blocknat/userspace/pgfleet"
	"github.com/blocknat/blocknat/userspace/replicate"
	"github.com/blocknat/blocknat/userspace/sdnotify"
	"github.com/blocknat/blocknat/userspace/wire"
)

// RetentionEvery is how often expired partitions are dropped after the
// start's run.
const RetentionEvery = 24 * time.Hour

// Service is a fleet service, built by New and run by Run.
type Service struct {
	cfg *Config
	log *slog.Logger
	now func() time.Time

	db       *pgfleet.DB
	reader   *pgfleet.Reader
	from, to int // schema versions before and after the start's migration
	audit    apiserve.AuditRunner
	repl     *replicate.Replicator // the copy of its own audit log
	api      *api.Server

	mu            sync.Mutex
	lastRetention time.Time
	metricsAddr   net.Addr
}

// New builds a service for cfg; nothing is opened until Run.
func New(cfg *Config, log *slog.Logger) *Service {
	return &Service{cfg: cfg, log: log, now: time.Now}
}

// component is one part of the service: started in the order of
// components, stopped in reverse.
type component struct {
	name  string
	start func(ctx context.Context) error
	stop  func() error
}

// components are the service's parts in the order they start. A part
// that serves reports its end on its done channel, nil until it starts.
func (s *Service) components(apiDone, metricsDone *<-chan error) []component {
	return []component{
		{name: "state_dir", start: func(context.Context) error { return s.prepareStateDir() }},
		// Migrated before anything reads it.
		{name: "database", start: s.openDatabase, stop: func() error { s.db.Close(); return nil }},
		{name: "audit", start: s.openAudit, stop: func() error { return s.audit.Stop() }},
		// Stopped after the API: the entries of the last requests are
		// sent if the database takes them in time, and stay in the local
		// chain for the next start if not.
		s.replicationComponent(),
		s.retentionComponent(),
		// Reads the database and the replicator, so it starts after them,
		// and before the API, so that a service answering is watched.
		s.metricsComponent(metricsDone),
		s.apiComponent(apiDone),
	}
}

// Run runs the service until ctx ends (a clean stop: nil) or a part of it
// fails.
func Run(ctx context.Context, cfg *Config, log *slog.Logger) error {
	return New(cfg, log).Run(ctx)
}

// Run starts the components in order, waits, and stops the started ones
// in reverse.
func (s *Service) Run(ctx context.Context) (err error) {
	var apiDone, metricsDone <-chan error
	comps := s.components(&apiDone, &metricsDone)
	started := 0
	defer func() {
		for i := started - 1; i >= 0; i-- {
			if c := comps[i]; c.stop != nil {
				if serr := c.stop(); serr != nil {
					s.log.Error("fleet: stop failed", logattr.Component, c.name, logattr.Err, serr)
					err = errors.Join(err, fmt.Errorf("stop %s: %w", c.name, serr))
				}
			}
		}
	}()
	for _, c := range comps {
		if err := c.start(ctx); err != nil {
			return fmt.Errorf("start %s: %w", c.name, err)
		}
		started++
	}
	s.log.Info("fleet service ready", logattr.Name, s.cfg.Name, logattr.Path, s.cfg.API.Socket)
	notify(s.log, "READY=1", "STATUS=answering for the fleet from PostgreSQL")
	select {
	case <-ctx.Done():
		notify(s.log, "STOPPING=1")
		return nil
	case err := <-apiDone:
		return fmt.Errorf("api: %w", err)
	case err := <-metricsDone:
		return fmt.Errorf("metrics: %w", err)
	}
}

func notify(log *slog.Logger, state ...string) {
	if _, err := sdnotify.Notify(state...); err != nil {
		log.Warn("could not tell the service manager", logattr.Err, err.Error())
	}
}

// prepareStateDir creates state_dir private: the audit key is in it.
func (s *Service) prepareStateDir() error {
	if err := os.MkdirAll(s.cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("state_dir %s: %w", s.cfg.StateDir, err)
	}
	if err := os.Chmod(s.cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("state_dir %s: %w", s.cfg.StateDir, err)
	}
	return nil
}

func (s *Service) openDatabase(ctx context.Context) error {
	db, err := pgfleet.Connect(ctx, s.cfg.Postgres)
	if err != nil {
		return err
	}
	from, to, err := db.Migrate(ctx, s.log)
	if err != nil {
		db.Close()
		return fmt.Errorf("migrate the database schema: %w", err)
	}
	s.log.Info("database schema", logattr.FromVersion, from, logattr.ToVersion, to)
	s.db, s.from, s.to = db, from, to
	s.reader = db.Reader(pgfleet.ReaderOptions{Now: s.now})
	return nil
}

func (s *Service) openAudit(ctx context.Context) error {
	l, err := apiserve.OpenAudit(s.cfg.AuditDir(), s.cfg.AuditKeyPath(), s.cfg.Audit, s.cfg.Retention, s.log)
	if err != nil {
		return err
	}
	s.audit = apiserve.AuditRunner{Log: l}
	s.audit.Start(ctx)
	return nil
}

// retentionComponent drops expired partitions now and every RetentionEvery.
func (s *Service) retentionComponent() component {
	var stop context.CancelFunc
	done := make(chan struct{})
	return component{name: "retention",
		start: func(ctx context.Context) error {
			if err := s.retention(ctx); err != nil {
				return err
			}
			ctx, stop = context.WithCancel(ctx)
			go func() {
				defer close(done)
				t := time.NewTicker(RetentionEvery)
				defer t.Stop()
				for {
					select {
					case <-ctx.Done():
						return
					case <-t.C:
						if err := s.retention(ctx); err != nil && ctx.Err() == nil {
							// Tried again tomorrow; the records stay a day
							// longer, which the log says.
							s.log.Error("fleet retention failed; expired partitions stay until the next run", logattr.Err, err)
						}
					}
				}
			}()
			return nil
		},
		stop: func() error {
			stop()
			<-done
			return nil
		},
	}
}

func (s *Service) retention(ctx context.Context) error {
	now := s.now()
	dropped, err := s.db.DropExpired(ctx, pgfleet.Retention{Records: time.Duration(s.cfg.Retention.Records),
		Audit: time.Duration(s.cfg.Retention.Audit)}, now)
	if err != nil {
		return fmt.Errorf("drop expired partitions: %w", err)
	}
	s.mu.Lock()
	s.lastRetention = now
	s.mu.Unlock()
	s.log.Info("fleet retention: expired day partitions dropped", logattr.Count, len(dropped), logattr.Partitions, dropped)
	return nil
}

func (s *Service) apiComponent(done *<-chan error) component {
	var stop context.CancelFunc
	return component{name: "api",
		start: func(ctx context.Context) error {
			s.api = api.NewServer(api.Deps{Store: s.reader, Audit: s.audit.Log, Roles: apiserve.Roles(s.cfg.Roles),
				Fleet: s.status, Now: time.Now, Logger: s.log})
			ctx, stop = context.WithCancel(ctx)
			served := make(chan error, 1)
			go func() {
				served <- <-apiserve.Serve(ctx, s.api, s.cfg.API)
				// Closed after its one error, so that stop still returns
				// when Run has taken that error.
				close(served)
			}()
			*done = served
			return nil
		},
		stop: func() error {
			stop()
			if err := <-*done; err != nil && !errors.Is(err, context.Canceled) {
				return err
			}
			return nil
		},
	}
}

// status is the fleet's part of /v1/status.
func (s *Service) status(ctx context.Context) (*wire.FleetStatus, error) {
	// The figures the metrics report, so that the two always agree; a
	// database that cannot be read is an alarm here too, not a failed
	// status.
	f := s.figures()
	st := &wire.FleetStatus{Name: s.cfg.Name, SchemaVersion: s.to, Routers: []wire.FleetRouter{}, Alarm: []string{}}
	for _, r := range f.routers {
		fr := wire.FleetRouter{Name: r.Name, StoreSeq: r.Store, AuditSeq: r.Audit, Stale: f.stale(r), AuditHoleEntries: f.holes[r.Name].entries}
		if !r.LastIngest.IsZero() {
			t := r.LastIngest.UTC()
			fr.LastIngest = &t
		}
		if !r.InService() {
			t := r.Retired
			fr.Retired = &t
		}
		st.Routers = append(st.Routers, fr)
	}
	for _, reason := range AlarmReasons {
		if text := f.alarm(reason); text != "" {
			st.Alarm = append(st.Alarm, text)
		}
	}
	s.mu.Lock()
	st.Retention = wire.RetentionStatus{Period: s.cfg.Retention.Records.String(), LastAt: s.lastRetention}
	s.mu.Unlock()
	st.Replication = s.replicationStatus()
	return st, nil
}
