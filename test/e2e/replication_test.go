package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/blocknat/blocknat/loader"
	"github.com/blocknat/blocknat/test/netns"
	"github.com/blocknat/blocknat/test/testutil"
	"github.com/blocknat/blocknat/test/testutil/pgtest"
	"github.com/blocknat/blocknat/userspace/metrics"
	"github.com/blocknat/blocknat/userspace/wire"
)

// The replication tests run the whole chain with real parts: routers
// (blocknatd in their own topologies, the same mapping in each) replicate
// to a PostgreSQL server of the test's own, and `blocknatd fleet` answers
// the real CLI from it.

// Database names the tests give the fleet's PostgreSQL.
const (
	fleetDB    = "fleet"
	fleetOwner = "blocknat" // owns the schema; the fleet service connects as it
)

// fleetEnv is a PostgreSQL server and a fleet service answering from it.
type fleetEnv struct {
	pg     *pgtest.Server
	socket string
}

// startFleet starts PostgreSQL and the fleet service, which migrates the
// schema (and so creates the blocknat_router group) before it answers.
// Cleanup stops the service before the server, which pgtest registered
// first.
func startFleet(t *testing.T) *fleetEnv {
	t.Helper()
	netns.RequirePrivileged(t)
	pg := pgtest.Start(t)
	// CREATEROLE: the first migration creates the blocknat_router group.
	pg.CreateRole(t, fleetOwner, "LOGIN", "CREATEROLE")
	pg.CreateDB(t, fleetDB, fleetOwner)
	dir := t.TempDir()
	f := &fleetEnv{pg: pg, socket: filepath.Join(dir, "fleet.sock")}
	cfgPath := filepath.Join(dir, "fleet.yaml")
	cfg := fmt.Sprintf("name: lab\npostgres: '%s'\nstate_dir: %s\napi: {socket: %s}\n"+
		"roles: {investigator: {uids: [0]}, auditor: {uids: [0]}, admin: {uids: [0]}}\n",
		pg.DSN(fleetOwner, fleetDB), filepath.Join(dir, "state"), f.socket)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	d := &daemon{done: make(chan struct{})}
	cmd := exec.Command(bins.Blocknatd, "fleet", "--config", cfgPath)
	cmd.Stdout, cmd.Stderr = &d.out, &d.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d.proc = cmd.Process
	go func() { d.err = cmd.Wait(); close(d.done) }()
	t.Cleanup(func() {
		d.stop(t)
		if t.Failed() {
			t.Logf("blocknatd fleet log:\n%s", d.Log())
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := runCmd(t.Context(), bins.Blocknat, "status", "--socket", f.socket, "--json"); err == nil {
			break
		}
		select {
		case <-d.done:
			t.Fatalf("blocknatd fleet exited before answering (%v):\n%s", d.err, d.Log())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("blocknatd fleet did not answer within 30s:\n%s", d.Log())
		}
	}
	return f
}

// routerRole creates a router's login role, a member of the group the
// migrations made: it may only call the ingest functions, and only under
// its own name.
func (f *fleetEnv) routerRole(t *testing.T, name string) string {
	t.Helper()
	f.pg.CreateRole(t, name, "LOGIN", "IN ROLE blocknat_router")
	return f.pg.DSN(name, fleetDB)
}

// startReplicatingRouter starts blocknatd on topo, replicating as router
// name (replicateMore adds fields to the replicate section), with extra
// configuration lines.
func (f *fleetEnv) startReplicatingRouter(t *testing.T, topo *netns.Topology, name, replicateMore, extra string) *env {
	t.Helper()
	dsn := f.routerRole(t, name)
	e := prepareEnvOn(t, topo, fmt.Sprintf("replicate: {postgres: '%s', router: %s%s}\n", dsn, name, replicateMore)+extra)
	e.start(t)
	return e
}

// status is the whole status answer of a router (--config) or of the
// fleet (--socket).
func statusVia(t *testing.T, target ...string) wire.StatusResponse {
	t.Helper()
	var st wire.StatusResponse
	out, err := runCmd(t.Context(), bins.Blocknat, append([]string{"status", "--json"}, target...)...)
	if err != nil {
		t.Fatalf("blocknat status %v: %v\n%s", target, err, out)
	}
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatalf("blocknat status: bad JSON %q: %v", out, err)
	}
	return st
}

// replication is the router's replication row.
func (e *env) replication(t *testing.T) wire.ReplicationStatus {
	t.Helper()
	st := statusVia(t, "--config", e.cfgPath)
	if st.Agent == nil || st.Agent.Replication == nil {
		t.Fatalf("the router's status has no replication row: %+v", st.Agent)
	}
	return *st.Agent.Replication
}

// waitReplicated waits until the database holds every change the router
// has made: connected, nothing in the outbox, the last seq sent.
func (e *env) waitReplicated(t *testing.T, within time.Duration) wire.ReplicationStatus {
	t.Helper()
	var r wire.ReplicationStatus
	testutil.Eventually(t, within, func() bool {
		r = e.replication(t)
		return r.Connected && r.OutboxDepth == 0 && r.StoreLast > 0 && r.StoreSent == r.StoreLast
	}, "the router's outbox drained to PostgreSQL")
	return r
}

// fleetRouter is the fleet's view of one router's copy.
func (f *fleetEnv) fleetRouter(t *testing.T, name string) (wire.FleetRouter, bool) {
	t.Helper()
	st := statusVia(t, "--socket", f.socket)
	if st.Fleet == nil {
		t.Fatalf("the fleet's status has no fleet part: %+v", st)
	}
	for _, r := range st.Fleet.Routers {
		if r.Name == name {
			return r, true
		}
	}
	return wire.FleetRouter{}, false
}

// lookupVia asks a router (--config) or the fleet (--socket) who held
// public at the time at, within tolerance.
func lookupVia(t *testing.T, public netip.AddrPort, at time.Time, tolerance time.Duration, target ...string) wire.LookupResponse {
	t.Helper()
	args := append([]string{"lookup", "--ip", public.Addr().String(), "--port", strconv.Itoa(int(public.Port())),
		"--time", at.UTC().Format(time.RFC3339Nano), "--tolerance", tolerance.String(), "--purpose", "case 2026-7717", "--json"}, target...)
	var ans wire.LookupResponse
	out, err := runCmd(t.Context(), bins.Blocknat, args...)
	if err != nil {
		t.Fatalf("blocknat %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	if err := json.Unmarshal(out, &ans); err != nil {
		t.Fatalf("blocknat lookup: bad JSON %q: %v", out, err)
	}
	return ans
}

// exportVia exports every record of [from, to] as JSONL through the CLI.
func exportVia(t *testing.T, from, to time.Time, target ...string) []wire.Record {
	t.Helper()
	file := filepath.Join(t.TempDir(), "export.jsonl")
	args := append([]string{"export", "--from", from.UTC().Format(time.RFC3339Nano), "--to", to.UTC().Format(time.RFC3339Nano),
		"--format", "jsonl", "--purpose", "case 2026-7717", "--out", file}, target...)
	if out, err := runCmd(t.Context(), bins.Blocknat, args...); err != nil {
		t.Fatalf("blocknat %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	fh, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	var recs []wire.Record
	sc := bufio.NewScanner(fh)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var r wire.Record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("export line %q: %v", sc.Bytes(), err)
		}
		recs = append(recs, r)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return recs
}

// recordKey is what identifies a record in both exports: who, which
// block, and its interval to the millisecond the store keeps.
func recordKey(r wire.Record) string {
	end := "open"
	if r.End != nil {
		end = strconv.FormatInt(r.End.UnixMilli(), 10)
	}
	return fmt.Sprintf("%d %s %s %d-%d %d-%s", r.Subscriber, r.Inside, r.Public, r.PortLo, r.PortHi, r.Start.UnixMilli(), end)
}

// sameRecord reports whether the fleet's candidate and the router's name
// the same subscriber, block and start.
func sameRecord(a, b wire.Record) bool {
	return a.Subscriber == b.Subscriber && a.Inside == b.Inside && a.Public == b.Public &&
		a.PortLo == b.PortLo && a.PortHi == b.PortHi && a.Start.Equal(b.Start)
}

// TestReplicationFleetLookup: a subscriber behind router A and another
// behind router B (the same mapping on both) reach a server; once both
// routers have replicated, a fleet lookup of each public address, port and
// time names the right subscriber and the right router, agreeing with the
// router's own answer. The routers' database role can neither read nor
// delete what they replicated.
func TestReplicationFleetLookup(t *testing.T) {
	netns.RequireTools(t, "psql")
	f := startFleet(t)
	a := f.startReplicatingRouter(t, netns.NewTestTopology(t, "bn-e2erepa"), "rtr_a", "", "")
	b := f.startReplicatingRouter(t, netns.NewTestTopology(t, "bn-e2erepb"), "rtr_b", "", "")

	httpSrv, err := netns.StartHTTPServer(a.topo.Internet, netip.AddrPortFrom(a.topo.ServerAddrs[0], 8080))
	if err != nil {
		t.Fatal(err)
	}
	defer httpSrv.Close()
	udpSrv, err := netns.StartUDPEcho(b.topo.Internet, netip.AddrPortFrom(b.topo.ServerAddrs[1], 9000))
	if err != nil {
		t.Fatal(err)
	}
	defer udpSrv.Close()
	subA, subB := a.topo.Subscribers[0], b.topo.Subscribers[1]
	if out, err := subA.NS.Exec(t.Context(), "curl", "--noproxy", "*", "-sS", "-m", "5", "-o", "/dev/null", "http://"+httpSrv.Addr.String()+"/"); err != nil {
		t.Fatalf("curl behind router A: %v %s", err, out)
	}
	seenAtA := time.Now()
	if _, err := netns.UDPRoundTrip(subB.NS, 0, udpSrv.Addr, []byte("behind B"), 3*time.Second); err != nil {
		t.Fatalf("UDP behind router B: %v", err)
	}
	seenAtB := time.Now()
	seenA, seenB := httpSrv.Remotes()[0], lastPort(t, udpSrv)

	for _, tc := range []struct {
		name   string
		router *env
		sub    *netns.Subscriber
		seen   netip.AddrPort
		at     time.Time
	}{
		{"rtr_a", a, subA, seenA, seenAtA},
		{"rtr_b", b, subB, seenB, seenAtB},
	} {
		testutil.Eventually(t, 5*time.Second, func() bool {
			return statusVia(t, "--config", tc.router.cfgPath).Store.OpenRecords == 1
		}, "%s records its block", tc.name)
		r := tc.router.waitReplicated(t, 20*time.Second)
		if fr, ok := f.fleetRouter(t, tc.name); !ok || fr.StoreSeq < r.StoreSent || fr.LastIngest == nil {
			t.Errorf("fleet status of %s: %+v (found %v), want store seq >= %d and a last ingest", tc.name, fr, ok, r.StoreSent)
		}

		own := lookupVia(t, tc.seen, tc.at, 2*time.Second, "--config", tc.router.cfgPath)
		fleet := lookupVia(t, tc.seen, tc.at, 2*time.Second, "--socket", f.socket)
		if len(own.Candidates) != 1 || own.Candidates[0].Inside != tc.sub.Addr {
			t.Fatalf("%s's own lookup of %s: %+v, want %s", tc.name, tc.seen, own.Candidates, tc.sub.Addr)
		}
		if len(fleet.Candidates) != 1 {
			t.Fatalf("fleet lookup of %s: %d candidates %+v, want one", tc.seen, len(fleet.Candidates), fleet.Candidates)
		}
		c := fleet.Candidates[0]
		if c.Inside != tc.sub.Addr || c.Router != tc.name {
			t.Errorf("fleet lookup of %s: %s via router %q, want %s via %s", tc.seen, c.Inside, c.Router, tc.sub.Addr, tc.name)
		}
		if !sameRecord(c, own.Candidates[0]) || c.End != nil {
			t.Errorf("fleet candidate %+v\nrouter's own   %+v\nwant the same subscriber, block and start, still open", c, own.Candidates[0])
		}
		// The epoch came over too: the fleet reads it from the router's copy.
		if oe := own.Candidates[0].EpochInForce; c.EpochInForce == nil || oe == nil || c.EpochInForce.ID != oe.ID || !c.EpochInForce.Start.Equal(oe.Start) || c.Epoch != own.Candidates[0].Epoch {
			t.Errorf("fleet candidate's epoch %d in force %+v, the router's %d %+v", c.Epoch, c.EpochInForce, own.Candidates[0].Epoch, oe)
		}
		if tc.seen.Addr() != c.Public || tc.seen.Port() < c.PortLo || tc.seen.Port() > c.PortHi {
			t.Errorf("fleet candidate's block %s %d-%d does not hold what the server saw, %s", c.Public, c.PortLo, c.PortHi, tc.seen)
		}
	}

	// The fleet's own audit log holds the questions it answered, verifies,
	// and is itself copied to the database.
	var shown wire.AuditShowResponse
	out, err := runCmd(t.Context(), bins.Blocknat, "audit", "show", "--socket", f.socket, "--json")
	if err != nil {
		t.Fatalf("fleet audit show: %v\n%s", err, out)
	}
	if err := json.Unmarshal(out, &shown); err != nil {
		t.Fatalf("fleet audit show: bad JSON %q: %v", out, err)
	}
	lookups := 0
	for _, en := range shown.Entries {
		if en.Action == "lookup" && en.Purpose == "case 2026-7717" && en.Outcome == "answered" {
			lookups++
		}
	}
	if lookups != 2 {
		t.Errorf("the fleet's audit log holds %d answered lookups, want 2: %+v", lookups, shown.Entries)
	}
	if out, err := runCmd(t.Context(), bins.Blocknat, "audit", "verify", "--socket", f.socket); err != nil {
		t.Errorf("fleet audit verify: %v\n%s", err, out)
	}
	testutil.Eventually(t, 10*time.Second, func() bool {
		fr, ok := f.fleetRouter(t, "fleet:lab")
		return ok && fr.AuditSeq >= uint64(len(shown.Entries))
	}, "the fleet's own audit log copied to the database")

	// The router's role: the rows are there (the superuser sees them),
	// but the role that wrote them can neither read nor delete them.
	if n := f.count(t, "SELECT count(*) FROM blocknat.open_records WHERE router = 'rtr_a'"); n != 1 {
		t.Fatalf("the database holds %d open records of rtr_a, want 1: the permission check would prove nothing", n)
	}
	for _, sql := range []string{
		"SELECT count(*) FROM blocknat.records",
		"SELECT count(*) FROM blocknat.open_records",
		"DELETE FROM blocknat.records",
		"DELETE FROM blocknat.open_records",
	} {
		out, err := exec.CommandContext(t.Context(), "psql", "-X", "-v", "ON_ERROR_STOP=1", "-Atc", sql, f.pg.DSN("rtr_a", fleetDB)).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "permission denied") {
			t.Errorf("psql as rtr_a: %s: err=%v output %q, want permission denied", sql, err, out)
		}
	}
	if n := f.count(t, "SELECT count(*) FROM blocknat.open_records WHERE router = 'rtr_a'"); n != 1 {
		t.Errorf("after the router role's DELETE the database holds %d open records of rtr_a, want 1", n)
	}
}

// count runs a count query as the superuser in the fleet's database.
func (f *fleetEnv) count(t *testing.T, sql string, args ...any) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, f.pg.DSN(pgtest.Superuser, fleetDB))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var n int64
	if err := conn.QueryRow(ctx, sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// TestReplicationSurvivesPostmasterKill: PostgreSQL is killed with SIGKILL
// while blocks are being activated. The router goes on translating and
// recording (its own lookup answers) with the changes kept in its outbox;
// once the database is back, every record the router holds is in the
// fleet's copy exactly once, and so is every audit entry.
func TestReplicationSurvivesPostmasterKill(t *testing.T) {
	f := startFleet(t)
	topo := netns.NewTestTopology(t, "bn-e2erepk")
	// 48 subscribers behind one namespace, each a block activation; short
	// timeouts release the blocks during the test, so closes are
	// replicated too.
	var addrs []netip.Addr
	for a, i := netip.MustParseAddr("100.64.0.10"), 0; i < 48; a, i = a.Next(), i+1 {
		addrs = append(addrs, a)
	}
	if err := topo.AddSubscriberAddrs(t.Context(), 0, addrs); err != nil {
		t.Fatal(err)
	}
	testStart := time.Now()
	// max_lag 2s: the database stays down longer, which the alarm says.
	e := f.startReplicatingRouter(t, topo, "rtr_k", ", max_lag: 2s",
		"timeouts: {udp: 1s, block_idle: 1s}\nintervals: {sweep: 200ms}\nmetrics: {listen: \""+metricsListen+"\"}\n")
	srv, err := netns.StartUDPEcho(topo.Internet, netip.AddrPortFrom(topo.ServerAddrs[0], 9000))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	ns := topo.Subscribers[0].NS

	if err := sendFrom(ns, addrs[:16], srv.Addr, 30*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	// In the middle of the activations: the replicator is sending them.
	f.pg.Kill9(t)
	if err := sendFrom(ns, addrs[16:32], srv.Addr, 30*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, func() bool { return len(srv.Remotes()) >= 32 }, "the server heard 32 subscribers")
	var down wire.ReplicationStatus
	testutil.Eventually(t, 5*time.Second, func() bool {
		down = e.replication(t)
		return !down.Connected && down.OutboxDepth > 0
	}, "status shows replication not connected with changes waiting")
	t.Logf("database down: sent %d of %d changes, %d in the outbox, last error %q", down.StoreSent, down.StoreLast, down.OutboxDepth, down.LastError)
	if down.StoreSent >= down.StoreLast {
		t.Errorf("replication row while the database is down: %+v, want changes not yet sent", down)
	}
	// The router still records on its own: a block activated while the
	// database is dead is in its lookup.
	last := lastPort(t, srv)
	// The server has heard the packet; the Recorder commits its block's
	// record within its batch interval, so ask until it has.
	var ans wire.LookupResponse
	testutil.Eventually(t, 5*time.Second, func() bool {
		ans = lookupVia(t, last, time.Now(), 2*time.Second, "--config", e.cfgPath)
		return len(ans.Candidates) > 0
	}, "the router's own lookup of %s while the database is down", last)
	if want := e.reverse(t, last).Inside; len(ans.Candidates) != 1 || ans.Candidates[0].Inside != want {
		t.Errorf("router's lookup of %s while the database is down: %+v, want %s", last, ans.Candidates, want)
	}
	// Long enough for the first blocks to be released, still down.
	time.Sleep(2500 * time.Millisecond)
	if err := sendFrom(ns, addrs[32:], srv.Addr, 30*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if r := e.replication(t); r.Connected || r.OutboxDepth <= down.OutboxDepth {
		t.Errorf("replication row after more changes with the database down: %+v, want more waiting than %d", r, down.OutboxDepth)
	}
	if alarm := replicationAlarm(statusVia(t, "--config", e.cfgPath).Agent.Alarm); alarm == "" {
		t.Errorf("no replication alarm with changes waiting past replicate.max_lag 2s: %v", statusVia(t, "--config", e.cfgPath).Agent.Alarm)
	}
	human, err := runCmd(t.Context(), bins.Blocknat, "status", "--config", e.cfgPath)
	if err != nil || !strings.Contains(string(human), "as rtr_k, NOT CONNECTED") {
		t.Errorf("blocknat status while the database is down: %v, want a replication row saying NOT CONNECTED:\n%s", err, human)
	}
	text := e.metricsText(t, metricsListen)
	if v := metricValue(t, text, metrics.ReplicationConnected); v != 0 {
		t.Errorf("%s = %v while the database is down", metrics.ReplicationConnected, v)
	}
	if v := metricValue(t, text, metrics.ReplicationOutbox); v <= float64(down.OutboxDepth) {
		t.Errorf("%s = %v, want more than %d", metrics.ReplicationOutbox, v, down.OutboxDepth)
	}
	if v := metricValue(t, text, metrics.ReplicationLag); v < 2 {
		t.Errorf("%s = %v with the database down for more than 3s", metrics.ReplicationLag, v)
	}
	f.pg.Restart(t)

	// Every block released, so that no record changes under the
	// comparison; then everything sent.
	testutil.Eventually(t, 15*time.Second, func() bool {
		return len(readPinned(t, e, (*loader.Pinned).ActiveSubscribers)) == 0
	}, "every block released")
	e.waitReplicated(t, 45*time.Second)
	testutil.Eventually(t, 5*time.Second, func() bool {
		return replicationAlarm(statusVia(t, "--config", e.cfgPath).Agent.Alarm) == ""
	}, "the replication alarm clears once the outbox drained")
	text = e.metricsText(t, metricsListen)
	if c, o := metricValue(t, text, metrics.ReplicationConnected), metricValue(t, text, metrics.ReplicationOutbox); c != 1 || o != 0 {
		t.Errorf("after the catch-up %s = %v and %s = %v, want 1 and 0", metrics.ReplicationConnected, c, metrics.ReplicationOutbox, o)
	}

	to := time.Now().Add(time.Minute)
	own := exportVia(t, testStart.Add(-time.Minute), to, "--config", e.cfgPath)
	if len(own) != len(addrs) {
		t.Errorf("the router holds %d records, want one for each of the %d activations", len(own), len(addrs))
	}
	var fleet []wire.Record
	// The fleet's pool may hold a connection the kill broke: ask again.
	testutil.Eventually(t, 10*time.Second, func() bool {
		_, err := runCmd(t.Context(), bins.Blocknat, "status", "--socket", f.socket, "--json")
		return err == nil
	}, "the fleet answers again")
	fleet = exportVia(t, testStart.Add(-time.Minute), to, "--socket", f.socket)
	want := map[string]bool{}
	for _, r := range own {
		if r.End == nil {
			t.Errorf("router record %+v still open after every block was released", r)
		}
		want[recordKey(r)] = true
	}
	got := map[string]int{}
	for _, r := range fleet {
		got[recordKey(r)]++
		if r.Router != "rtr_k" {
			t.Errorf("fleet export line %+v names router %q, want rtr_k", r, r.Router)
		}
	}
	for k, n := range got {
		switch {
		case !want[k]:
			t.Errorf("the fleet holds a record the router does not: %s", k)
		case n != 1:
			t.Errorf("the fleet holds record %s %d times", k, n)
		}
	}
	for k := range want {
		if got[k] == 0 {
			t.Errorf("the fleet lacks the router's record %s", k)
		}
	}
	t.Logf("the router exported %d records, the fleet %d", len(own), len(fleet))
	if len(fleet) != len(own) {
		t.Errorf("the fleet exported %d records, the router %d", len(fleet), len(own))
	}
	if n := f.count(t, "SELECT count(*) FROM blocknat.open_records WHERE router = 'rtr_k'"); n != 0 {
		t.Errorf("the database holds %d open records of rtr_k after every release was replicated", n)
	}

	// The audit log: the router's questions while the database was dead
	// (the status, the lookup) arrive with the rest, each once.
	var sent uint64
	testutil.Eventually(t, 20*time.Second, func() bool {
		r := e.replication(t)
		sent = r.AuditSent
		return r.Connected && r.AuditPending == 0 && r.AuditSent == r.AuditLast && r.AuditLast > 0
	}, "the router's audit log replicated")
	fr, ok := f.fleetRouter(t, "rtr_k")
	if !ok || fr.AuditSeq < sent || fr.StoreSeq != e.replication(t).StoreLast {
		t.Errorf("fleet status of rtr_k: %+v (found %v), want audit seq >= %d and the router's last store seq", fr, ok, sent)
	}
	rows := f.count(t, "SELECT count(*) FROM blocknat.audit WHERE router = 'rtr_k'")
	distinct := f.count(t, "SELECT count(DISTINCT seq) FROM blocknat.audit WHERE router = 'rtr_k'")
	highest := f.count(t, "SELECT coalesce(max(seq), 0) FROM blocknat.audit WHERE router = 'rtr_k'")
	t.Logf("audit: the router sent %d entries; the database holds %d rows, %d distinct, highest %d", sent, rows, distinct, highest)
	if rows != distinct || rows != highest || uint64(rows) < sent {
		t.Errorf("the database holds %d audit entries of rtr_k (%d distinct, highest seq %d), want 1..%d or more, each once", rows, distinct, highest, sent)
	}
}

// replicationAlarm is the alarm's replication reason, "" when it does not
// hold.
func replicationAlarm(alarm []string) string {
	for _, a := range alarm {
		if strings.Contains(a, "replication") {
			return a
		}
	}
	return ""
}

// TestFailoverMergesIntervals: one subscriber (the same inside address
// behind two routers with the same mapping) uses router A until A
// releases its idle block, then router B. The fleet names it once, with
// both intervals, from routers A and B, on the same public address and
// block; each router's own answer holds its own record only.
//
// A releases the block (block_idle) rather than dying: a killed agent
// would leave its record open until its next start, and the intervals
// would overlap, which says less about the merge.
func TestFailoverMergesIntervals(t *testing.T) {
	f := startFleet(t)
	const timeouts = "timeouts: {udp: 1s, block_idle: 1s}\nintervals: {sweep: 200ms}\n"
	a := f.startReplicatingRouter(t, netns.NewTestTopology(t, "bn-e2efoa"), "rtr_a", "", timeouts)
	b := f.startReplicatingRouter(t, netns.NewTestTopology(t, "bn-e2efob"), "rtr_b", "", timeouts)
	subA, subB := a.topo.Subscribers[0], b.topo.Subscribers[0]
	if subA.Addr != subB.Addr {
		t.Fatalf("the topologies give subscriber 0 %s and %s: not the same subscriber", subA.Addr, subB.Addr)
	}
	srvA, err := netns.StartUDPEcho(a.topo.Internet, netip.AddrPortFrom(a.topo.ServerAddrs[0], 9000))
	if err != nil {
		t.Fatal(err)
	}
	defer srvA.Close()
	srvB, err := netns.StartUDPEcho(b.topo.Internet, netip.AddrPortFrom(b.topo.ServerAddrs[0], 9000))
	if err != nil {
		t.Fatal(err)
	}
	defer srvB.Close()

	if _, err := netns.UDPRoundTrip(subA.NS, 0, srvA.Addr, []byte("via A"), 3*time.Second); err != nil {
		t.Fatal(err)
	}
	seenA := lastPort(t, srvA)
	var recA wire.Record
	testutil.Eventually(t, 10*time.Second, func() bool {
		h := a.history(t, subA.Addr)
		if len(h) == 1 && h[0].End != nil {
			recA = h[0]
			return true
		}
		return false
	}, "router A releases the idle block and closes its record")

	if _, err := netns.UDPRoundTrip(subB.NS, 0, srvB.Addr, []byte("via B"), 3*time.Second); err != nil {
		t.Fatal(err)
	}
	seenB := lastPort(t, srvB)
	// B releases its block too, so that both intervals are closed and
	// nothing changes under the comparison.
	var recB wire.Record
	testutil.Eventually(t, 10*time.Second, func() bool {
		h := b.history(t, subB.Addr)
		if len(h) == 1 && h[0].End != nil {
			recB = h[0]
			return true
		}
		return false
	}, "router B records the block and releases it")
	block := b.forward(t, subB.Addr)
	for _, seen := range []netip.AddrPort{seenA, seenB} {
		if seen.Addr() != block.Public || seen.Port() < block.PortLo || seen.Port() > block.PortHi {
			t.Fatalf("the server saw %s, outside the subscriber's block %s %d-%d", seen, block.Public, block.PortLo, block.PortHi)
		}
	}
	if recA.Public != recB.Public || recA.PortLo != recB.PortLo || recA.PortHi != recB.PortHi {
		t.Fatalf("router A recorded %s %d-%d, router B %s %d-%d: not the same block", recA.Public, recA.PortLo, recA.PortHi, recB.Public, recB.PortLo, recB.PortHi)
	}
	if !recA.End.Before(recB.Start) {
		t.Fatalf("router A's record ends %v, after router B's starts %v", recA.End, recB.Start)
	}
	a.waitReplicated(t, 20*time.Second)
	b.waitReplicated(t, 20*time.Second)

	// A time between the two intervals, with a tolerance spanning both.
	at := recA.End.Add(recB.Start.Sub(*recA.End) / 2)
	const tolerance = 30 * time.Second
	fleet := lookupVia(t, seenA, at, tolerance, "--socket", f.socket)
	if len(fleet.Candidates) != 1 {
		t.Fatalf("fleet lookup: %d candidates %+v, want the subscriber once", len(fleet.Candidates), fleet.Candidates)
	}
	c := fleet.Candidates[0]
	if c.Inside != subA.Addr || c.Subscriber != recA.Subscriber || c.Public != recA.Public || c.PortLo != recA.PortLo || c.PortHi != recA.PortHi {
		t.Errorf("fleet candidate %+v, want %s on %s %d-%d", c, subA.Addr, recA.Public, recA.PortLo, recA.PortHi)
	}
	if c.Router != "" || !c.Start.Equal(recA.Start) || c.End == nil || !c.End.Equal(*recB.End) {
		t.Errorf("fleet candidate router %q start %v end %v: want no single router, from A's start %v to B's end %v", c.Router, c.Start, c.End, recA.Start, *recB.End)
	}
	if len(c.Intervals) != 2 {
		t.Fatalf("fleet candidate intervals %+v, want A's and B's", c.Intervals)
	}
	ia, ib := c.Intervals[0], c.Intervals[1]
	if ia.Router != "rtr_a" || !ia.Start.Equal(recA.Start) || ia.End == nil || !ia.End.Equal(*recA.End) {
		t.Errorf("first interval %+v, want rtr_a %v to %v", ia, recA.Start, *recA.End)
	}
	if ib.Router != "rtr_b" || !ib.Start.Equal(recB.Start) || ib.End == nil || !ib.End.Equal(*recB.End) {
		t.Errorf("second interval %+v, want rtr_b %v to %v", ib, recB.Start, *recB.End)
	}

	human, err := runCmd(t.Context(), bins.Blocknat, "lookup", "--socket", f.socket, "--ip", seenA.Addr().String(),
		"--port", strconv.Itoa(int(seenA.Port())), "--time", at.UTC().Format(time.RFC3339Nano), "--tolerance", tolerance.String(),
		"--purpose", "case 2026-7717")
	if err != nil {
		t.Fatalf("fleet lookup: %v\n%s", err, human)
	}
	for _, want := range []string{"1 candidate", subA.Addr.String(), "router rtr_a: ", "router rtr_b: "} {
		if !strings.Contains(string(human), want) {
			t.Errorf("the fleet's human answer lacks %q:\n%s", want, human)
		}
	}

	// Each router knows its own part only.
	for _, r := range []struct {
		name string
		e    *env
		rec  wire.Record
	}{{"rtr_a", a, recA}, {"rtr_b", b, recB}} {
		own := lookupVia(t, seenA, at, tolerance, "--config", r.e.cfgPath)
		if len(own.Candidates) != 1 || !sameRecord(own.Candidates[0], r.rec) || len(own.Candidates[0].Intervals) != 0 || own.Candidates[0].Router != "" {
			t.Errorf("%s's own lookup: %+v, want its one record %+v", r.name, own.Candidates, r.rec)
		}
	}
}
