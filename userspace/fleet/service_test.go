package fleet

import (
	"bytes"
	"context"
	"encoding/csv"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/blocknat/blocknat/test/testutil"
	"github.com/blocknat/blocknat/test/testutil/pgtest"
	"github.com/blocknat/blocknat/userspace/api/client"
	"github.com/blocknat/blocknat/userspace/audit"
	"github.com/blocknat/blocknat/userspace/auditwire"
	"github.com/blocknat/blocknat/userspace/mapping"
	"github.com/blocknat/blocknat/userspace/pgfleet"
	"github.com/blocknat/blocknat/userspace/store"
	"github.com/blocknat/blocknat/userspace/wire"
)

func mustTime(t testing.TB, s string) time.Time {
	t.Helper()
	v, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// The fleet fixture, as two routers record it: cgn-a and cgn-b have the
// same mapping (100.64.0.0/24 over 198.51.100.10/31, blocks of 504) under
// epochs of their own, cgn-a's 1 and cgn-b's 4. Subscriber 3 (100.64.0.3,
// 198.51.100.10 ports 2536-3039) held its block on cgn-a until cgn-a failed
// at 12:00:00.5, and on cgn-b from 12:00:01.2; subscriber 4 on cgn-b only.
// Both routers' DHCP hooks heard phone A's lease of 100.64.0.3.
var (
	sub3       = netip.MustParseAddr("100.64.0.3")
	sub4       = netip.MustParseAddr("100.64.0.4")
	phoneA     = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x0a}
	publicAddr = netip.MustParseAddr("198.51.100.10")
)

// routerOutbox records on a real Pebble store with an outbox, as a router
// does, and returns the outbox's events for pgfleet.Ingest.
func routerOutbox(t *testing.T, epoch uint32, record func(st *store.Store, m *mapping.Mapping)) []store.OutboxEvent {
	t.Helper()
	c := testutil.NewClock(mustTime(t, "2026-11-20T12:30:00Z"), 0)
	st, err := store.Open(filepath.Join(t.TempDir(), "records"), store.Options{Now: c.Now, Outbox: true,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatalf("store.Open: %v", err)
	}
	defer st.Close()
	m, err := mapping.New([]netip.Prefix{netip.MustParsePrefix("100.64.0.0/24")},
		[]netip.Prefix{netip.MustParsePrefix("198.51.100.10/31")}, 1024, 65535, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.PutEpoch(store.Epoch{ID: epoch, Start: mustTime(t, "2026-11-01T00:00:00Z"), Prefixes: m.Prefixes, Pool: m.Pool,
		PortLo: m.PortLo, PortHi: m.PortHi, BlockSize: m.BlockSize, Ratio: m.Ratio, Hash: m.Hash()}); err != nil {
		t.Fatal(err)
	}
	record(st, m)
	evs, err := st.Outbox(0, 1000)
	if err != nil || len(evs) == 0 {
		t.Fatalf("Outbox: %d events, %v", len(evs), err)
	}
	return evs
}

func hold(t *testing.T, st *store.Store, m *mapping.Mapping, inside netip.Addr, epoch uint32, start, end string) {
	t.Helper()
	blk, err := m.Forward(inside)
	if err != nil {
		t.Fatal(err)
	}
	rec := store.Record{Subscriber: blk.Subscriber, Inside: inside, Public: blk.Public, PortLo: blk.PortLo, PortHi: blk.PortHi,
		Epoch: epoch, Start: mustTime(t, start)}
	ops := []store.Op{{Kind: store.OpActivate, Record: rec}}
	if end != "" {
		ops = append(ops, store.Op{Kind: store.OpRelease, Record: store.Record{Subscriber: rec.Subscriber, Public: rec.Public,
			PortLo: rec.PortLo, End: mustTime(t, end)}})
	}
	if err := st.Apply(ops); err != nil {
		t.Fatalf("Apply: %v", err)
	}
}

func leasePhoneA(t *testing.T, st *store.Store) {
	t.Helper()
	if err := st.ApplyLeases([]store.LeaseEvent{{Kind: store.LeaseAdd, Time: mustTime(t, "2026-11-20T11:50:00Z"), Inside: sub3,
		MAC: phoneA, Hostname: "phone-a", Expires: mustTime(t, "2026-11-20T12:50:00Z"), Source: "dnsmasq"}}); err != nil {
		t.Fatal(err)
	}
}

// fleetDatabase starts PostgreSQL with an owner role and a database, and
// returns the owner's connection string.
func fleetDatabase(t *testing.T) string {
	t.Helper()
	_, dsn := fleetDatabaseServer(t)
	return dsn
}

// fleetDatabaseServer is fleetDatabase with the server, for a test that
// kills it.
func fleetDatabaseServer(t *testing.T) (*pgtest.Server, string) {
	t.Helper()
	pg := pgtest.Start(t)
	pg.CreateRole(t, "blocknat_owner", "LOGIN", "CREATEROLE")
	pg.CreateDB(t, "blocknat", "blocknat_owner")
	return pg, pg.DSN("blocknat_owner", "blocknat")
}

// feed replicates the two routers' outboxes into the database, as their
// replicators would, and returns the last seq of each.
func feed(t *testing.T, ctx context.Context, dsn string) map[string]uint64 {
	t.Helper()
	a := routerOutbox(t, 1, func(st *store.Store, m *mapping.Mapping) {
		leasePhoneA(t, st)
		hold(t, st, m, sub3, 1, "2026-11-20T11:58:40.12Z", "2026-11-20T12:00:00.5Z")
	})
	b := routerOutbox(t, 4, func(st *store.Store, m *mapping.Mapping) {
		leasePhoneA(t, st)
		hold(t, st, m, sub3, 4, "2026-11-20T12:00:01.2Z", "")
		hold(t, st, m, sub4, 4, "2026-11-20T11:00:00Z", "")
	})
	db, err := pgfleet.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	defer db.Close()
	if _, _, err := db.Migrate(ctx, slog.New(slog.NewTextHandler(io.Discard, nil))); err != nil {
		t.Fatalf("Migrate: %v", err)
	}
	lasts := map[string]uint64{}
	for _, r := range []struct {
		name string
		evs  []store.OutboxEvent
	}{{"cgn-a", a}, {"cgn-b", b}} {
		last, err := db.Ingest(ctx, r.name, r.evs)
		if err != nil || last != r.evs[len(r.evs)-1].Seq {
			t.Fatalf("Ingest %s: last %d of %d, %v", r.name, last, len(r.evs), err)
		}
		lasts[r.name] = last
	}
	return lasts
}

type running struct {
	cfg    *Config
	svc    *Service
	client *client.Client
	log    *testutil.Buffer
	done   chan error
	cancel context.CancelFunc
}

// startFleet runs the fleet service on a socket in a temporary directory,
// with root as investigator, auditor and admin.
func startFleet(t *testing.T, dsn string) *running {
	t.Helper()
	return startFleetWith(t, dsn, "", nil)
}

// startFleetWith is startFleet with extra lines of configuration, and
// tweak to change the parsed configuration before the start.
func startFleetWith(t *testing.T, dsn, extra string, tweak func(*Config)) *running {
	t.Helper()
	dir := t.TempDir()
	uid := os.Getuid()
	cfg, err := ParseConfig([]byte(fmt.Sprintf(`name: east
postgres: %q
state_dir: %s
api: {socket: %s}
roles:
  investigator: {uids: [%d]}
  auditor: {uids: [%d]}
  admin: {uids: [%d]}
replicate_max_lag: 1m
`, dsn, filepath.Join(dir, "state"), filepath.Join(dir, "fleet.sock"), uid, uid, uid) + extra))
	if err != nil {
		t.Fatalf("ParseConfig: %v", err)
	}
	if tweak != nil {
		tweak(cfg)
	}
	r := &running{cfg: cfg, log: &testutil.Buffer{}, done: make(chan error, 1)}
	r.svc = New(cfg, slog.New(slog.NewTextHandler(r.log, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() { r.done <- r.svc.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-r.done:
		case <-time.After(30 * time.Second):
			t.Error("the fleet service did not stop")
		}
		if t.Failed() {
			t.Logf("fleet log:\n%s", r.log.String())
		}
	})
	testutil.Eventually(t, 20*time.Second, func() bool {
		c, err := net.Dial("unix", cfg.API.Socket)
		if err == nil {
			c.Close()
		}
		return err == nil
	}, "the fleet's socket %s answers", cfg.API.Socket)
	r.client, err = client.Dial(cfg.API.Socket)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { r.client.Close() })
	return r
}

// TestFleetServes: the fleet service answers from PostgreSQL across both
// routers through the real client on its socket: a lookup for the
// failover names subscriber 3 once with cgn-a's and cgn-b's intervals,
// the history and the export name their routers, every request is in the
// fleet's own audit chain (show, verify, subject), a lookup's evidence
// verifies with the fleet's key, and the status lists each router's copy
// and, once replicated, the fleet's own audit log.
func TestFleetServes(t *testing.T) {
	ctx := context.Background()
	dsn := fleetDatabase(t)
	lasts := feed(t, ctx, dsn)
	f := startFleet(t, dsn)
	if !strings.Contains(f.log.String(), "to_version=") {
		t.Errorf("the start did not log the schema migration:\n%s", f.log.String())
	}

	const purpose = "case 2026/117"
	ans, err := f.client.Lookup(ctx, wire.LookupRequest{IP: publicAddr.String(), Port: 2600, Time: "2026-11-20T12:00:00Z",
		Tolerance: "2s", Purpose: purpose})
	if err != nil {
		t.Fatalf("Lookup: %v", err)
	}
	if len(ans.Candidates) != 1 {
		t.Fatalf("%d candidates, want subscriber 3 once: %+v", len(ans.Candidates), ans.Candidates)
	}
	c := ans.Candidates[0]
	if c.Subscriber != 3 || c.Inside != sub3 || c.Public != publicAddr || c.PortLo != 2536 || c.PortHi != 3039 || c.Router != "" ||
		len(c.Intervals) != 2 || c.Intervals[0].Router != "cgn-a" || c.Intervals[1].Router != "cgn-b" ||
		c.Intervals[0].Epoch != 1 || c.Intervals[1].Epoch != 4 || c.End != nil {
		t.Errorf("candidate %+v", c)
	}
	if c.EpochInForce == nil || c.EpochInForce.ID != 1 {
		t.Errorf("epoch in force %+v, want cgn-a's epoch 1", c.EpochInForce)
	}
	if len(c.Leases) != 1 || c.Leases[0].MAC != phoneA.String() || !slices.Equal(c.Leases[0].Routers, []string{"cgn-a", "cgn-b"}) {
		t.Errorf("leases %+v, want phone A's once, heard by both", c.Leases)
	}
	var owners []string
	for _, o := range ans.Owners {
		if o.Mapped && o.Subscriber == 3 && o.Active {
			owners = append(owners, fmt.Sprintf("%s/%d", o.Router, o.Epoch.ID))
		}
	}
	if !slices.Equal(owners, []string{"cgn-a/1", "cgn-b/4"}) {
		t.Errorf("owners %v (%+v), want cgn-a's epoch 1 and cgn-b's epoch 4, each active", owners, ans.Owners)
	}

	// Subscriber 4's block: cgn-b's alone, under cgn-b's epoch.
	ans4, err := f.client.Lookup(ctx, wire.LookupRequest{IP: publicAddr.String(), Port: 3100, Time: "2026-11-20T12:10:00Z", Purpose: purpose})
	if err != nil || len(ans4.Candidates) != 1 || ans4.Candidates[0].Router != "cgn-b" || ans4.Candidates[0].EpochInForce == nil ||
		ans4.Candidates[0].EpochInForce.ID != 4 {
		t.Errorf("lookup of subscriber 4: %+v, %v", ans4, err)
	}

	hist, err := f.client.History(ctx, wire.HistoryRequest{Subscriber: sub3.String(), From: "2026-11-20T00:00:00Z",
		To: "2026-11-20T23:59:59Z", Purpose: purpose})
	if err != nil || len(hist.Records) != 1 || len(hist.Records[0].Intervals) != 2 {
		t.Errorf("history: %+v, %v", hist, err)
	}

	var out bytes.Buffer
	res, err := f.client.Export(ctx, wire.ExportRequest{From: "2026-11-20T00:00:00Z", To: "2026-11-20T23:59:59Z",
		Format: wire.FormatCSV, Purpose: purpose}, &out, nil)
	if err != nil || res.Records != 3 {
		t.Fatalf("Export: %+v, %v", res, err)
	}
	rows, err := csv.NewReader(&out).ReadAll()
	if err != nil || len(rows) != 4 || !slices.Equal(rows[0], wire.CSVHeaderFleet) {
		t.Fatalf("export csv %v, %v", rows, err)
	}
	var routers []string
	for _, row := range rows[1:] {
		routers = append(routers, row[len(row)-1])
	}
	slices.Sort(routers)
	if !slices.Equal(routers, []string{"cgn-a", "cgn-b", "cgn-b"}) {
		t.Errorf("export routers %v", routers)
	}

	// The evidence of the lookup verifies with the fleet's own key.
	data, err := wire.EncodeEvidenceFile(ans.Evidence)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := audit.LoadPublicKey(filepath.Join(f.cfg.AuditDir(), "audit.pub"))
	if err != nil {
		t.Fatalf("the fleet's public key: %v", err)
	}
	ev, err := wire.DecodeEvidenceFile(data)
	if err == nil {
		err = auditwire.VerifyEvidence(ev, pub)
	}
	if err != nil {
		t.Errorf("evidence: %v", err)
	}

	show, err := f.client.AuditShow(ctx, 1, 100)
	if err != nil {
		t.Fatalf("AuditShow: %v", err)
	}
	var actions []string
	for _, e := range show.Entries {
		actions = append(actions, e.Action)
	}
	want := []string{wire.ActionLookup, wire.ActionLookup, wire.ActionHistory, wire.ActionExport}
	if !slices.Equal(actions, want) || show.Entries[0].Purpose != purpose {
		t.Errorf("audit entries %v, want %v", actions, want)
	}
	ver, err := f.client.AuditVerify(ctx)
	if err != nil || !ver.OK || ver.LastSeq != 5 {
		t.Errorf("audit verify: %+v, %v", ver, err)
	}
	now := time.Now().UTC()
	subj, err := f.client.AuditSubject(ctx, wire.AuditSubjectRequest{Subscriber: sub3.String(),
		From: now.Add(-time.Hour).Format(time.RFC3339), To: now.Add(time.Hour).Format(time.RFC3339)})
	if err != nil {
		t.Fatalf("AuditSubject: %v", err)
	}
	var uses []uint64
	for _, u := range subj.Uses {
		uses = append(uses, u.Seq)
	}
	// The first lookup and the history name subscriber 3, and so does the
	// export of everyone.
	if !slices.Equal(uses, []uint64{1, 3, 4}) {
		t.Errorf("uses of subscriber 3: %v (%+v)", uses, subj.Uses)
	}

	// The status names both routers' copies, and the fleet's own audit
	// log arrives as router fleet:east.
	var st *wire.StatusResponse
	testutil.Eventually(t, 20*time.Second, func() bool {
		st, err = f.client.Status(ctx)
		if err != nil || st.Fleet == nil {
			return false
		}
		for _, r := range st.Fleet.Routers {
			if r.Name == "fleet:east" && r.AuditSeq+1 >= st.AuditSeq {
				return true
			}
		}
		return false
	}, "the fleet's own audit log in the database")
	if st.Fleet.Name != "east" || st.Fleet.SchemaVersion != pgfleet.SchemaVersion || st.Agent != nil ||
		st.Fleet.Retention.LastAt.IsZero() || st.Fleet.Replication == nil {
		t.Errorf("fleet status %+v", st.Fleet)
	}
	seqs := map[string]uint64{}
	for _, r := range st.Fleet.Routers {
		seqs[r.Name] = r.StoreSeq
		if r.Name != "fleet:east" && r.LastIngest == nil {
			t.Errorf("router %s: no last ingest", r.Name)
		}
	}
	if seqs["cgn-a"] != lasts["cgn-a"] || seqs["cgn-b"] != lasts["cgn-b"] || seqs["fleet:east"] != 0 {
		t.Errorf("routers' store seqs %v, want %v and no store stream of the fleet's", seqs, lasts)
	}

	// The copy is the fleet's chain as written: same seqs, same hashes.
	db, err := pgfleet.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	copied, err := db.AuditCopy(ctx, "fleet:east", 1, 100)
	if err != nil || len(copied) < len(show.Entries) {
		t.Fatalf("AuditCopy: %d entries, %v", len(copied), err)
	}
	for i, e := range show.Entries {
		if got := auditwire.EntryOf(copied[i]); got.Seq != e.Seq || got.Hash != e.Hash || got.Action != e.Action {
			t.Errorf("copied entry %d: %+v, local %+v", i, got, e)
		}
	}
}

// TestComponentsOrder: the database is migrated before anything reads it,
// the audit log is open before the replication and the API that use it,
// the metrics, which read the database and the replication, start after
// them, and the API, which writes the log, starts last and stops first.
func TestComponentsOrder(t *testing.T) {
	var apiDone, metricsDone <-chan error
	var names []string
	for _, c := range New(&Config{}, slog.Default()).components(&apiDone, &metricsDone) {
		names = append(names, c.name)
	}
	if want := []string{"state_dir", "database", "audit", "replication", "retention", "metrics", "api"}; !slices.Equal(names, want) {
		t.Errorf("components %v, want %v", names, want)
	}
}

// TestFleetMigratesAtStart: a database at the previous schema version is
// migrated by the fleet's start, which logs both versions, and a fleet
// with no router yet answers an empty lookup and lists only its own log.
func TestFleetMigratesAtStart(t *testing.T) {
	ctx := context.Background()
	dsn := fleetDatabase(t)
	db, err := pgfleet.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.MigrateTo(ctx, pgfleet.SchemaVersion-1, slog.New(slog.NewTextHandler(io.Discard, nil))); err != nil {
		t.Fatalf("MigrateTo: %v", err)
	}
	db.Close()
	f := startFleet(t, dsn)
	if want := fmt.Sprintf("from_version=%d to_version=%d", pgfleet.SchemaVersion-1, pgfleet.SchemaVersion); !strings.Contains(f.log.String(), want) {
		t.Errorf("the start's log lacks %q:\n%s", want, f.log.String())
	}
	ans, err := f.client.Lookup(ctx, wire.LookupRequest{IP: publicAddr.String(), Port: 2600, Time: "2026-11-20T12:00:00Z", Purpose: "case 1"})
	if err != nil || len(ans.Candidates) != 0 || len(ans.Owners) != 0 {
		t.Errorf("lookup in an empty fleet: %+v, %v", ans, err)
	}
	testutil.Eventually(t, 20*time.Second, func() bool {
		st, err := f.client.Status(ctx)
		return err == nil && st.Fleet != nil && st.Fleet.SchemaVersion == pgfleet.SchemaVersion &&
			len(st.Fleet.Routers) == 1 && st.Fleet.Routers[0].Name == "fleet:east" && st.Fleet.Routers[0].AuditSeq >= 1
	}, "the status lists the fleet's own log alone")
}

// TestFleetAPIFailureStops: when the API cannot serve (a file that is not
// a socket holds its path), Run stops every part and returns the API's
// error instead of waiting on it for ever.
func TestFleetAPIFailureStops(t *testing.T) {
	dsn := fleetDatabase(t)
	dir := t.TempDir()
	cfg, err := ParseConfig([]byte(fmt.Sprintf("name: east\npostgres: %q\nstate_dir: %s\napi: {socket: %s}\n",
		dsn, filepath.Join(dir, "state"), filepath.Join(dir, "fleet.sock"))))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfg.API.Socket, []byte("not a socket"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.Metrics.Listen = "127.0.0.1:0"
	done := make(chan error, 1)
	go func() { done <- Run(context.Background(), cfg, slog.New(slog.NewTextHandler(io.Discard, nil))) }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "api") || !strings.Contains(err.Error(), cfg.API.Socket) {
			t.Errorf("Run: %v, want the API's error naming its socket", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return after the API failed")
	}
}
