package fleet

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"

	"github.com/blocknat/blocknat/test/testutil"
	"github.com/blocknat/blocknat/userspace/config"
	"github.com/blocknat/blocknat/userspace/mapping"
	"github.com/blocknat/blocknat/userspace/metrics"
	"github.com/blocknat/blocknat/userspace/pgfleet"
	"github.com/blocknat/blocknat/userspace/replicate"
	"github.com/blocknat/blocknat/userspace/store"
	"github.com/blocknat/blocknat/userspace/wire"
)

// withMetrics turns the endpoint on at a port the kernel picks: port 0,
// which the configuration refuses from an operator, since nobody could
// scrape it.
func withMetrics(c *Config) { c.Metrics.Listen = "127.0.0.1:0" }

// exposition is one scrape of /metrics: each sample's value by its name
// and labels as exposed (`name{label="v"}`), and the text.
type exposition struct {
	samples map[string]float64
	text    string
}

// scrape GETs the fleet's /metrics over HTTP.
func (r *running) scrape(t *testing.T) exposition {
	t.Helper()
	addr := r.svc.MetricsAddr()
	if addr == nil {
		t.Fatal("the metrics endpoint is not listening")
	}
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get("http://" + addr.String() + metrics.Path)
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape: %d, %v\n%s", resp.StatusCode, err, body)
	}
	e := exposition{samples: map[string]float64{}, text: string(body)}
	for _, line := range strings.Split(e.text, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if i < 0 || err != nil {
			t.Fatalf("scrape: line %q", line)
		}
		e.samples[line[:i]] = v
	}
	return e
}

// value is the sample's value, failing when it is absent.
func (e exposition) value(t *testing.T, sample string) float64 {
	t.Helper()
	v, ok := e.samples[sample]
	if !ok {
		t.Fatalf("no sample %s in:\n%s", sample, e.fleetLines())
	}
	return v
}

func (e exposition) has(sample string) bool { _, ok := e.samples[sample]; return ok }

// fleetLines is the fleet's own part of the text, for failure messages.
func (e exposition) fleetLines() string {
	var out []string
	for _, l := range strings.Split(e.text, "\n") {
		if strings.Contains(l, "blocknat_fleet_") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func routerSample(name, router string) string { return fmt.Sprintf("%s{router=%q}", name, router) }
func alarmSample(reason string) string        { return fmt.Sprintf("%s{reason=%q}", MetricAlarm, reason) }

// scrapeUntil scrapes until cond holds of a scrape, and returns that one.
func (r *running) scrapeUntil(t *testing.T, timeout time.Duration, cond func(exposition) bool, what string) exposition {
	t.Helper()
	var e exposition
	if !testutil.Poll(timeout, func() bool { e = r.scrape(t); return cond(e) }) {
		t.Fatalf("%s: not within %s; last scrape:\n%s", what, timeout, e.fleetLines())
	}
	return e
}

// TestFleetMetrics: the endpoint answers over HTTP with every figure
// documented; a router's seqs and last ingest appear with its first batch
// and move with its next, its audit holes are counted, it turns stale
// once stale_after passes without an ingest (the fleet's own log never
// does) and fresh again with one; and a second service on the taken port
// stops at start naming metrics.listen.
func TestFleetMetrics(t *testing.T) {
	ctx := context.Background()
	dsn := fleetDatabase(t)
	const staleAfter = 3 * time.Second
	f := startFleetWith(t, dsn, fmt.Sprintf("stale_after: %s\n", staleAfter), withMetrics)
	// An audited request, so that the fleet's own log has an entry to
	// copy.
	if _, err := f.client.Status(ctx); err != nil {
		t.Fatalf("Status: %v", err)
	}

	e := f.scrapeUntil(t, 20*time.Second, func(e exposition) bool {
		return e.has(routerSample(MetricRouterAuditSeq, "fleet:east"))
	}, "the fleet's own log in the metrics")
	for sample, want := range map[string]float64{MetricDatabaseUp: 1, MetricStaleAfter: staleAfter.Seconds(),
		MetricReplicationConnected: 1, MetricReplicationMaxLag: 60, alarmSample(AlarmDatabase): 0,
		alarmSample(AlarmReplication): 0, alarmSample(AlarmStaleRouter): 0,
		routerSample(MetricRouterStale, "fleet:east"): 0} {
		if got := e.value(t, sample); got != want {
			t.Errorf("%s = %v, want %v", sample, got, want)
		}
	}
	if e.has(routerSample(MetricRouterStoreSeq, "cgn-a")) {
		t.Errorf("cgn-a before it replicated anything:\n%s", e.fleetLines())
	}

	// cgn-a's outbox in three batches, as its replicator might send it.
	evs := routerOutbox(t, 1, func(st *store.Store, m *mapping.Mapping) {
		leasePhoneA(t, st)
		hold(t, st, m, sub3, 1, "2026-11-20T11:58:40.12Z", "2026-11-20T12:00:00.5Z")
		hold(t, st, m, sub4, 1, "2026-11-20T11:59:00Z", "")
	})
	if len(evs) < 3 {
		t.Fatalf("%d outbox events, want three batches", len(evs))
	}
	db, err := pgfleet.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ingest := func(batch []store.OutboxEvent) {
		t.Helper()
		if last, err := db.Ingest(ctx, "cgn-a", batch); err != nil || last != batch[len(batch)-1].Seq {
			t.Fatalf("Ingest: %d, %v", last, err)
		}
	}
	first, second, third := evs[:1], evs[1:len(evs)-1], evs[len(evs)-1:]

	before := time.Now()
	ingest(first)
	e = f.scrape(t)
	if got := e.value(t, routerSample(MetricRouterStoreSeq, "cgn-a")); got != float64(first[0].Seq) {
		t.Errorf("store seq %v after the first batch, want %d", got, first[0].Seq)
	}
	firstIngest := e.value(t, routerSample(MetricRouterLastIngest, "cgn-a"))
	if at := time.Unix(0, int64(firstIngest*1e9)); at.Before(before.Add(-time.Second)) || at.After(time.Now().Add(time.Second)) {
		t.Errorf("last ingest %s, want about now (%s)", at, before)
	}
	for sample, want := range map[string]float64{routerSample(MetricRouterAuditSeq, "cgn-a"): 0,
		routerSample(MetricRouterAuditHoles, "cgn-a"): 0, routerSample(MetricRouterAuditHoleEntries, "cgn-a"): 0,
		routerSample(MetricRouterStale, "cgn-a"): 0, alarmSample(AlarmStaleRouter): 0} {
		if got := e.value(t, sample); got != want {
			t.Errorf("%s = %v, want %v", sample, got, want)
		}
	}
	// Every figure is documented, under the fleet's prefix.
	for _, name := range MetricNames {
		if !strings.HasPrefix(name, "blocknat_fleet_") || !strings.Contains(e.text, "# HELP "+name+" ") {
			t.Errorf("%s: no HELP, or not blocknat_fleet_", name)
		}
	}

	time.Sleep(10 * time.Millisecond) // so that the next ingest's time is later
	ingest(second)
	// cgn-a's audit entries 1 to 10 fell to its own retention before
	// they reached the database.
	if _, err := db.SkipAudit(ctx, "cgn-a", 0, 11); err != nil {
		t.Fatalf("SkipAudit: %v", err)
	}
	e = f.scrape(t)
	for sample, want := range map[string]float64{routerSample(MetricRouterStoreSeq, "cgn-a"): float64(second[len(second)-1].Seq),
		routerSample(MetricRouterAuditSeq, "cgn-a"): 10, routerSample(MetricRouterAuditHoles, "cgn-a"): 1,
		routerSample(MetricRouterAuditHoleEntries, "cgn-a"): 10} {
		if got := e.value(t, sample); got != want {
			t.Errorf("%s = %v, want %v", sample, got, want)
		}
	}
	if got := e.value(t, routerSample(MetricRouterLastIngest, "cgn-a")); got <= firstIngest {
		t.Errorf("last ingest %v did not move on from %v", got, firstIngest)
	}

	// A second service whose endpoint's port is taken stops at start.
	other := *f.cfg
	other.Name = "west"
	other.StateDir = filepath.Join(t.TempDir(), "state")
	other.API.Socket = filepath.Join(t.TempDir(), "west.sock")
	other.Metrics.Listen = f.svc.MetricsAddr().String()
	runCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := Run(runCtx, &other, slog.New(slog.NewTextHandler(io.Discard, nil))); err == nil ||
		!strings.Contains(err.Error(), "metrics.listen") {
		t.Errorf("a fleet on a taken metrics port: %v, want an error naming metrics.listen", err)
	}

	e = f.scrapeUntil(t, staleAfter+10*time.Second, func(e exposition) bool {
		return e.samples[routerSample(MetricRouterStale, "cgn-a")] == 1
	}, "cgn-a stale")
	if e.value(t, alarmSample(AlarmStaleRouter)) != 1 || e.value(t, routerSample(MetricRouterStale, "fleet:east")) != 0 {
		t.Errorf("cgn-a stale, but the alarm or the fleet's own log:\n%s", e.fleetLines())
	}
	// The status says the same as the metrics.
	st, err := f.client.Status(ctx)
	if err != nil || st.Fleet == nil {
		t.Fatalf("status: %+v, %v", st, err)
	}
	staleIn := func(st *wire.FleetStatus) (names []string) {
		for _, r := range st.Routers {
			if r.Stale {
				names = append(names, r.Name)
			}
		}
		return names
	}
	if got := staleIn(st.Fleet); !slices.Equal(got, []string{"cgn-a"}) || len(st.Fleet.Alarm) != 1 ||
		!strings.Contains(st.Fleet.Alarm[0], "no ingest for over stale_after 3s from cgn-a") {
		t.Errorf("status: stale %v, alarm %q; want cgn-a and its alarm", got, st.Fleet.Alarm)
	}
	ingest(third)
	if st, err := f.client.Status(ctx); err != nil || len(staleIn(st.Fleet)) != 0 || len(st.Fleet.Alarm) != 0 {
		t.Errorf("status after cgn-a's next ingest: %+v, %v; want nothing stale and no alarm", st.Fleet, err)
	}
	e = f.scrape(t)
	if e.value(t, routerSample(MetricRouterStale, "cgn-a")) != 0 || e.value(t, alarmSample(AlarmStaleRouter)) != 0 ||
		e.value(t, routerSample(MetricRouterStoreSeq, "cgn-a")) != float64(third[0].Seq) {
		t.Errorf("after cgn-a's next ingest:\n%s", e.fleetLines())
	}
}

// TestFleetMetricsDatabaseDown: with PostgreSQL killed (kill -9), a scrape
// still answers with what the fleet knows without it: the database alarm,
// the fleet's own audit copy, whose lag passes replicate_max_lag once a
// request waits to be copied (the replication alarm), and no router
// series, rather than old ones. After the restart both alarms clear.
func TestFleetMetricsDatabaseDown(t *testing.T) {
	ctx := context.Background()
	pg, dsn := fleetDatabaseServer(t)
	feed(t, ctx, dsn)
	f := startFleetWith(t, dsn, "", func(c *Config) {
		withMetrics(c)
		c.ReplicateMaxLag = config.Duration(time.Second)
	})
	if _, err := f.client.Status(ctx); err != nil {
		t.Fatalf("Status: %v", err)
	}
	e := f.scrapeUntil(t, 20*time.Second, func(e exposition) bool {
		return e.samples[routerSample(MetricRouterStoreSeq, "cgn-b")] > 0 && e.samples[MetricReplicationConnected] == 1
	}, "the routers in the metrics")
	if e.value(t, alarmSample(AlarmDatabase)) != 0 || e.value(t, MetricDatabaseUp) != 1 {
		t.Errorf("alarm with the database up:\n%s", e.fleetLines())
	}

	pg.Kill9(t)
	// Refused, as the database cannot answer, and audited: an entry
	// that waits for the database.
	if _, err := f.client.Lookup(ctx, wire.LookupRequest{IP: publicAddr.String(), Port: 2600, Time: "2026-11-20T12:00:00Z",
		Purpose: "case 2026/118"}); err == nil {
		t.Error("a lookup answered with the database down")
	}
	e = f.scrapeUntil(t, 30*time.Second, func(e exposition) bool {
		return e.samples[alarmSample(AlarmReplication)] == 1
	}, "the replication alarm with the database down")
	for sample, want := range map[string]float64{MetricDatabaseUp: 0, alarmSample(AlarmDatabase): 1,
		alarmSample(AlarmStaleRouter): 0, MetricReplicationConnected: 0} {
		if got := e.value(t, sample); got != want {
			t.Errorf("%s = %v, want %v", sample, got, want)
		}
	}
	if e.value(t, MetricReplicationAuditPending) < 1 || e.value(t, MetricReplicationLag) <= 1 {
		t.Errorf("the lookup's entry does not wait, or not for over replicate_max_lag:\n%s", e.fleetLines())
	}
	if e.has(routerSample(MetricRouterStoreSeq, "cgn-a")) {
		t.Errorf("router series while the database is down:\n%s", e.fleetLines())
	}
	if !strings.Contains(f.log.String(), "metrics scrape incomplete") {
		t.Errorf("the failed scrape is not in the log:\n%s", f.log.String())
	}

	pg.Restart(t)
	e = f.scrapeUntil(t, 30*time.Second, func(e exposition) bool {
		return e.samples[alarmSample(AlarmDatabase)] == 0 && e.samples[alarmSample(AlarmReplication)] == 0
	}, "both alarms clear after the restart")
	if e.value(t, MetricDatabaseUp) != 1 || e.value(t, MetricReplicationAuditPending) != 0 || !e.has(routerSample(MetricRouterStoreSeq, "cgn-a")) {
		t.Errorf("after the restart:\n%s", e.fleetLines())
	}
}

// TestMetricsConfig: the endpoint is off unless metrics.listen is set,
// stale_after defaults to 26h and reads a duration.
func TestMetricsConfig(t *testing.T) {
	c, err := ParseConfig([]byte(minimalConfig))
	if err != nil {
		t.Fatal(err)
	}
	if c.Metrics.Listen != "" || time.Duration(c.StaleAfter) != 26*time.Hour {
		t.Errorf("metrics.listen %q, stale_after %s; want off and 26h", c.Metrics.Listen, c.StaleAfter)
	}
	c, err = ParseConfig([]byte(minimalConfig + "metrics: {listen: \"127.0.0.1:9478\"}\nstale_after: 2d\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Metrics.Listen != "127.0.0.1:9478" || time.Duration(c.StaleAfter) != 48*time.Hour {
		t.Errorf("metrics.listen %q, stale_after %s", c.Metrics.Listen, c.StaleAfter)
	}
}

// TestListenRuleAsARouters: the fleet accepts exactly the metrics.listen
// values a router's configuration accepts.
func TestListenRuleAsARouters(t *testing.T) {
	const agentMinimal = "inside: {interfaces: [eth1], prefixes: [100.64.0.0/24]}\noutside: {interfaces: [eth0], pool: [198.51.100.10/31]}\n"
	for _, listen := range []string{"127.0.0.1:9477", ":9477", "localhost:9477", "[::1]:9477", "0.0.0.0:1", "9477",
		"127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:http", "example.org:9477", "[::1]", "127.0.0.1:-1"} {
		line := fmt.Sprintf("metrics: {listen: %q}\n", listen)
		_, routerErr := config.Parse([]byte(agentMinimal + line))
		_, fleetErr := ParseConfig([]byte(minimalConfig + line))
		if (routerErr == nil) != (fleetErr == nil) {
			t.Errorf("metrics.listen %q: a router's config says %v, the fleet's %v", listen, routerErr, fleetErr)
		}
		if fleetErr != nil && !strings.Contains(fleetErr.Error(), "metrics.listen") {
			t.Errorf("metrics.listen %q: %v does not name the field", listen, fleetErr)
		}
	}
}

// TestMetricNamesLint: every figure passes promlint, and a full scrape
// exports exactly MetricNames.
func TestMetricNamesLint(t *testing.T) {
	now := time.Now()
	reg := prometheus.NewRegistry()
	reg.MustRegister(newCollector(func() *figures {
		return &figures{now: now, staleAfter: DefaultStaleAfter, replication: &replicate.State{MaxLag: time.Minute},
			routers: []pgfleet.RouterState{{Name: "cgn-a", Store: 7, Audit: 3, LastIngest: now.Add(-27 * time.Hour)}},
			holes:   map[string]holeCount{"cgn-a": {runs: 1, entries: 2}}}
	}))
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	problems, err := promlint.NewWithMetricFamilies(fams).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
	var names []string
	for _, f := range fams {
		names = append(names, f.GetName())
	}
	if !slices.Equal(names, slices.Sorted(slices.Values(MetricNames))) {
		t.Errorf("exported %v\nMetricNames %v", names, MetricNames)
	}
}

// TestRetiredRouterIsNotStale: a retired router is not expected, so never
// stale; one that delivered after its retirement is in service again and
// is held to stale_after like any other.
func TestRetiredRouterIsNotStale(t *testing.T) {
	now := time.Now()
	f := &figures{now: now, staleAfter: time.Hour}
	r := pgfleet.RouterState{Name: "cgn-a", LastIngest: now.Add(-2 * time.Hour)}
	if !f.stale(r) {
		t.Error("a router 2h without an ingest, stale_after 1h: not stale")
	}
	r.Retired = now.Add(-time.Minute)
	if f.stale(r) || f.alarm(AlarmStaleRouter) != "" {
		t.Error("a retired router is stale")
	}
	r.Retired, r.LastIngest = now.Add(-3*time.Hour), now.Add(-2*time.Hour)
	if !f.stale(r) {
		t.Error("a router back in service since its retirement, then 2h quiet: not stale")
	}
}
