package api

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/blocknat/blocknat/test/testutil"
	"github.com/blocknat/blocknat/userspace/mapping"
	"github.com/blocknat/blocknat/userspace/store"
	"github.com/blocknat/blocknat/userspace/wire"
)

// routerStores is a fleet's Store made of routers' own Pebble stores: it
// answers what each store answers, with every record, epoch and lease
// tagged with its router, as the fleet's PostgreSQL reader does.
type routerStores struct {
	names  []string
	stores map[string]*store.Store
}

var errReadOnly = errors.New("a fleet does not take lease events")

func (f *routerStores) each(fn func(name string, st *store.Store) error) error {
	for _, n := range f.names {
		if err := fn(n, f.stores[n]); err != nil {
			return err
		}
	}
	return nil
}

func tagRecords(name string, recs []store.Record) []store.Record {
	for i := range recs {
		recs[i].Router = name
	}
	return recs
}

func tagLeases(name string, ls []store.Lease) []store.Lease {
	for i := range ls {
		ls[i].Router = name
	}
	return ls
}

func byStart(recs []store.Record) []store.Record {
	slices.SortStableFunc(recs, func(a, b store.Record) int { return a.Start.Compare(b.Start) })
	return recs
}

func (f *routerStores) LookupInterval(ip netip.Addr, port uint16, from, to time.Time) ([]store.Record, error) {
	var out []store.Record
	err := f.each(func(n string, st *store.Store) error {
		recs, err := st.LookupInterval(ip, port, from, to)
		out = append(out, tagRecords(n, recs)...)
		return err
	})
	return byStart(out), err
}

func (f *routerStores) NearestRecords(sub uint32, public netip.Addr, portLo uint16, from, to time.Time) (before, after *store.Record, err error) {
	err = f.each(func(n string, st *store.Store) error {
		b, a, err := st.NearestRecords(sub, public, portLo, from, to)
		if b != nil && (before == nil || b.End.After(before.End)) {
			b.Router, before = n, b
		}
		if a != nil && (after == nil || a.Start.Before(after.Start)) {
			a.Router, after = n, a
		}
		return err
	})
	return before, after, err
}

func (f *routerStores) History(inside netip.Addr, from, to time.Time) ([]store.Record, error) {
	var out []store.Record
	err := f.each(func(n string, st *store.Store) error {
		recs, err := st.History(inside, from, to)
		out = append(out, tagRecords(n, recs)...)
		return err
	})
	return byStart(out), err
}

func (f *routerStores) Export(from, to time.Time, fn func(store.Record) error) error {
	return f.each(func(n string, st *store.Store) error {
		return st.Export(from, to, func(r store.Record) error { r.Router = n; return fn(r) })
	})
}

func (f *routerStores) ExportWithLeases(from, to time.Time, fn func(store.Record, []store.Lease) error) error {
	return f.each(func(n string, st *store.Store) error {
		return st.ExportWithLeases(from, to, func(r store.Record, ls []store.Lease) error {
			r.Router = n
			return fn(r, tagLeases(n, ls))
		})
	})
}

// EpochAt answers with the first router's epochs, which is wrong for any
// other router's record: the server must ask RouterEpochAt.
func (f *routerStores) EpochAt(t time.Time) (store.Epoch, error) {
	return f.stores[f.names[0]].EpochAt(t)
}

func (f *routerStores) RouterEpochAt(router string, t time.Time) (store.Epoch, error) {
	st, ok := f.stores[router]
	if !ok {
		return store.Epoch{}, store.ErrNotFound
	}
	e, err := st.EpochAt(t)
	e.Router = router
	return e, err
}

func (f *routerStores) Epochs() ([]store.Epoch, error) {
	var out []store.Epoch
	err := f.each(func(n string, st *store.Store) error {
		es, err := st.Epochs()
		for i := range es {
			es[i].Router = n
		}
		out = append(out, es...)
		return err
	})
	return out, err
}

func (f *routerStores) LeasesOf(inside netip.Addr, from, to time.Time) ([]store.Lease, error) {
	var out []store.Lease
	err := f.each(func(n string, st *store.Store) error {
		ls, err := st.LeasesOf(inside, from, to)
		out = append(out, tagLeases(n, ls)...)
		return err
	})
	slices.SortStableFunc(out, func(a, b store.Lease) int { return a.Start.Compare(b.Start) })
	return out, err
}

func (f *routerStores) LeasesByMAC(mac net.HardwareAddr, from, to time.Time) ([]store.Lease, error) {
	var out []store.Lease
	err := f.each(func(n string, st *store.Store) error {
		ls, err := st.LeasesByMAC(mac, from, to)
		out = append(out, tagLeases(n, ls)...)
		return err
	})
	slices.SortStableFunc(out, func(a, b store.Lease) int { return a.Start.Compare(b.Start) })
	return out, err
}

func (f *routerStores) ApplyLeases([]store.LeaseEvent) error { return errReadOnly }

func (f *routerStores) Stats() (store.Stats, error) { return f.stores[f.names[0]].Stats() }

// The fleet fixture: routers a and b have the Wi-Fi fixture's mapping
// (so the same blocks) under epochs of their own, a's numbered 1 and b's
// 7; router c has another pool. Subscriber 3 (100.64.0.3, 198.51.100.10
// ports 2536-3039) held its block on a from 11:58:40.12 to 12:00:00.5,
// when a failed, and on b from 12:00:01.2 on. Subscriber 4 held its block
// on b only. Both a's and b's DHCP hooks heard phone A's lease of
// 100.64.0.3; only b heard its renewal.
var (
	fleetSub4Inside = netip.MustParseAddr("100.64.0.4")
	fleetStart      = "2026-11-01T00:00:00Z"
)

func openRouterStore(t *testing.T, m *mapping.Mapping, epoch uint32) *store.Store {
	t.Helper()
	c := testutil.NewClock(mustTime(t, "2026-11-20T12:30:00Z"), 0)
	st, err := store.Open(filepath.Join(t.TempDir(), "records"), store.Options{Now: c.Now, Logger: quietLogger()})
	if err != nil {
		t.Fatalf("store.Open: %v", err)
	}
	t.Cleanup(func() { st.Close() })
	err = st.PutEpoch(store.Epoch{ID: epoch, Start: mustTime(t, fleetStart), Prefixes: m.Prefixes, Pool: m.Pool,
		PortLo: m.PortLo, PortHi: m.PortHi, BlockSize: m.BlockSize, Ratio: m.Ratio, Hash: m.Hash()})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func activate(t *testing.T, st *store.Store, m *mapping.Mapping, inside netip.Addr, epoch uint32, start, end string) store.Record {
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
	return rec
}

func fleetHarness(t *testing.T, roles ...Role) (*harness, *routerStores) {
	t.Helper()
	m, err := mapping.New([]netip.Prefix{netip.MustParsePrefix("100.64.0.0/24")},
		[]netip.Prefix{netip.MustParsePrefix("198.51.100.10/31")}, 1024, 65535, 0)
	if err != nil {
		t.Fatal(err)
	}
	other, err := mapping.New([]netip.Prefix{netip.MustParsePrefix("100.65.0.0/24")},
		[]netip.Prefix{netip.MustParsePrefix("203.0.113.8/31")}, 1024, 65535, 0)
	if err != nil {
		t.Fatal(err)
	}
	a, b, c := openRouterStore(t, m, 1), openRouterStore(t, m, 7), openRouterStore(t, other, 1)
	activate(t, a, m, wifiInside, 1, "2026-11-20T11:58:40.12Z", "2026-11-20T12:00:00.5Z")
	activate(t, b, m, wifiInside, 7, "2026-11-20T12:00:01.2Z", "")
	activate(t, b, m, fleetSub4Inside, 7, "2026-11-20T11:00:00Z", "")
	lease := store.LeaseEvent{Kind: store.LeaseAdd, Time: mustTime(t, "2026-11-20T11:50:00Z"), Inside: wifiInside, MAC: macA,
		Hostname: "phone-a", Expires: mustTime(t, "2026-11-20T12:50:00Z"), Source: "dnsmasq"}
	renewal := lease
	renewal.Kind, renewal.Time, renewal.Expires = store.LeaseRenew, mustTime(t, "2026-11-20T12:20:00Z"), mustTime(t, "2026-11-20T13:20:00Z")
	if err := a.ApplyLeases([]store.LeaseEvent{lease}); err != nil {
		t.Fatal(err)
	}
	if err := b.ApplyLeases([]store.LeaseEvent{lease, renewal}); err != nil {
		t.Fatal(err)
	}
	fleet := &routerStores{names: []string{"a", "b", "c"}, stores: map[string]*store.Store{"a": a, "b": b, "c": c}}
	h := newHarness(t, harnessOptions{roles: rootRoles(roles...), store: fleet})
	return h, fleet
}

func TestFleetLookupMergesRouters(t *testing.T) {
	h, _ := fleetHarness(t, RoleInvestigator)
	ctx := context.Background()
	// [11:59:58, 12:00:03) meets a's record and b's.
	ans, err := h.client.Lookup(ctx, wire.LookupRequest{IP: "198.51.100.10", Port: 2600, Time: "2026-11-20T12:00:00Z",
		Tolerance: "2s", Purpose: "case 17"})
	if err != nil {
		t.Fatalf("Lookup: %v", err)
	}
	if len(ans.Candidates) != 1 {
		t.Fatalf("%d candidates, want one for the subscriber who moved from a to b: %+v", len(ans.Candidates), ans.Candidates)
	}
	c := ans.Candidates[0]
	if c.Subscriber != 3 || c.Inside != wifiInside || c.Public != wifiPublic || c.PortLo != 2536 || c.PortHi != 3039 {
		t.Errorf("candidate %+v", c)
	}
	if c.Router != "" || !c.Start.Equal(mustTime(t, "2026-11-20T11:58:40.12Z")) || c.End != nil {
		t.Errorf("merged candidate: router %q, start %s, end %v; want no single router, a's start, still open", c.Router, c.Start, c.End)
	}
	if len(c.Intervals) != 2 {
		t.Fatalf("intervals %+v, want a's and b's", c.Intervals)
	}
	ia, ib := c.Intervals[0], c.Intervals[1]
	if ia.Router != "a" || ia.Epoch != 1 || ia.End == nil || !ia.End.Equal(mustTime(t, "2026-11-20T12:00:00.5Z")) ||
		ib.Router != "b" || ib.Epoch != 7 || !ib.Start.Equal(mustTime(t, "2026-11-20T12:00:01.2Z")) || ib.End != nil {
		t.Errorf("intervals %+v / %+v", ia, ib)
	}
	// Nobody held the block on either router between 12:00:00.5 and
	// 12:00:01.2, so the candidate covers only part of the interval.
	if c.Coverage != wire.CoveragePart {
		t.Errorf("coverage %q, want part (the failover's gap)", c.Coverage)
	}
	if c.EpochInForce == nil || c.EpochInForce.ID != 1 {
		t.Errorf("epoch in force %+v, want a's epoch 1", c.EpochInForce)
	}
	if len(c.Leases) != 1 || c.Leases[0].MAC != macA.String() || !slices.Equal(c.Leases[0].Routers, []string{"a", "b"}) ||
		c.Leases[0].End == nil || !c.Leases[0].End.Equal(mustTime(t, "2026-11-20T13:20:00Z")) {
		t.Errorf("leases %+v, want phone A's lease once, from a and b, with b's renewal", c.Leases)
	}
	// One row for a's epoch and one for b's, each active by its own
	// router's record; c's pool does not hold the address, so c is left out.
	if len(ans.Owners) != 2 {
		t.Fatalf("owners %+v, want a's and b's", ans.Owners)
	}
	for i, want := range []struct {
		router string
		epoch  uint32
	}{{"a", 1}, {"b", 7}} {
		o := ans.Owners[i]
		if o.Router != want.router || o.Epoch.ID != want.epoch || !o.Mapped || o.Subscriber != 3 || o.PortLo != 2536 || !o.Active {
			t.Errorf("owner %d: %+v, want router %s epoch %d mapping subscriber 3, active", i, o, want.router, want.epoch)
		}
	}

	// In the gap alone the answer is empty, and each router's owner row
	// names the nearest records of its block on either side.
	ans, err = h.client.Lookup(ctx, wire.LookupRequest{IP: "198.51.100.10", Port: 2600, Time: "2026-11-20T12:00:00.8Z", Purpose: "case 17"})
	if err != nil || len(ans.Candidates) != 0 || len(ans.Owners) != 2 {
		t.Fatalf("gap lookup: %+v, %v", ans, err)
	}
	for _, o := range ans.Owners {
		if o.Active || o.Before == nil || o.Before.Router != "a" || o.After == nil || o.After.Router != "b" {
			t.Errorf("gap owner %+v (before %+v, after %+v)", o, o.Before, o.After)
		}
	}

	// An address in c's pool alone: c's row, and not a's or b's.
	ans, err = h.client.Lookup(ctx, wire.LookupRequest{IP: "203.0.113.8", Port: 2600, Time: "2026-11-20T12:00:00Z", Purpose: "case 17"})
	if err != nil || len(ans.Owners) != 1 || ans.Owners[0].Router != "c" || !ans.Owners[0].Mapped || ans.Owners[0].Active {
		t.Errorf("lookup in c's pool: %+v, %v", ans.Owners, err)
	}
	// An address in nobody's pool: every router says so.
	ans, err = h.client.Lookup(ctx, wire.LookupRequest{IP: "192.0.2.1", Port: 2600, Time: "2026-11-20T12:00:00Z", Purpose: "case 17"})
	if err != nil || len(ans.Owners) != 3 || ans.Owners[0].Mapped {
		t.Errorf("lookup outside every pool: %+v, %v", ans.Owners, err)
	}
}

func TestFleetEpochInForcePerRouter(t *testing.T) {
	h, _ := fleetHarness(t, RoleInvestigator)
	// Subscriber 4's block (ports 3040-3543) only ever held on b, under
	// b's epoch 7; the store's EpochAt would say a's epoch 1.
	ans, err := h.client.Lookup(context.Background(), wire.LookupRequest{IP: "198.51.100.10", Port: 3100,
		Time: "2026-11-20T12:00:00Z", Purpose: "case 17"})
	if err != nil || len(ans.Candidates) != 1 {
		t.Fatalf("Lookup: %+v, %v", ans, err)
	}
	c := ans.Candidates[0]
	if c.Router != "b" || len(c.Intervals) != 1 || c.Intervals[0].Router != "b" || c.Coverage != wire.CoverageAll {
		t.Errorf("candidate %+v", c)
	}
	if c.EpochInForce == nil || c.EpochInForce.ID != 7 {
		t.Errorf("epoch in force %+v, want b's epoch 7", c.EpochInForce)
	}
	var activeBy []string
	for _, o := range ans.Owners {
		if o.Active {
			activeBy = append(activeBy, o.Router)
		}
	}
	if !slices.Equal(activeBy, []string{"b"}) {
		t.Errorf("owners active by %v, want b only (a's epoch maps the block too, but a held it never): %+v", activeBy, ans.Owners)
	}
}

func TestFleetHistoryAndExport(t *testing.T) {
	h, _ := fleetHarness(t, RoleInvestigator)
	ctx := context.Background()
	hist, err := h.client.History(ctx, wire.HistoryRequest{Subscriber: wifiInside.String(), From: "2026-11-20T00:00:00Z",
		To: "2026-11-20T23:59:59Z", Purpose: "case 17"})
	if err != nil {
		t.Fatalf("History: %v", err)
	}
	if len(hist.Records) != 1 || len(hist.Records[0].Intervals) != 2 || hist.Records[0].Router != "" {
		t.Fatalf("history %+v, want one record with a's and b's intervals", hist.Records)
	}
	r := hist.Records[0]
	// The leases are resolved over the merged span, a's start onwards.
	if !r.LeasesFrom.Equal(mustTime(t, "2026-11-20T11:58:40.12Z")) || !r.LeasesTo.Equal(mustTime(t, "2026-11-20T23:59:59Z")) ||
		len(r.Leases) != 1 || !slices.Equal(r.Leases[0].Routers, []string{"a", "b"}) {
		t.Errorf("history leases over [%s, %s]: %+v", r.LeasesFrom, r.LeasesTo, r.Leases)
	}
	byMAC, err := h.client.History(ctx, wire.HistoryRequest{MAC: macA.String(), From: "2026-11-20T00:00:00Z",
		To: "2026-11-20T23:59:59Z", Purpose: "case 17"})
	if err != nil || len(byMAC.Leases) != 1 || len(byMAC.Records) != 1 || len(byMAC.Records[0].Intervals) != 2 {
		t.Errorf("history by MAC: %+v, %v", byMAC, err)
	}

	// An export lists each router's record, the CSV with a router column.
	var out bytes.Buffer
	res, err := h.client.Export(ctx, wire.ExportRequest{From: "2026-11-20T00:00:00Z", To: "2026-11-20T23:59:59Z",
		Format: wire.FormatCSV, Purpose: "case 17"}, &out, nil)
	if err != nil || res.Records != 3 {
		t.Fatalf("Export: %+v, %v", res, err)
	}
	rows, err := csv.NewReader(&out).ReadAll()
	if err != nil || len(rows) != 4 || !slices.Equal(rows[0], wire.CSVHeaderFleet) {
		t.Fatalf("csv %v, %v", rows, err)
	}
	var routers []string
	for _, row := range rows[1:] {
		routers = append(routers, row[len(row)-1])
	}
	slices.Sort(routers)
	if !slices.Equal(routers, []string{"a", "b", "b"}) {
		t.Errorf("csv routers %v", routers)
	}
	out.Reset()
	if _, err := h.client.Export(ctx, wire.ExportRequest{From: "2026-11-20T00:00:00Z", To: "2026-11-20T23:59:59Z",
		Format: wire.FormatJSONL, Subscriber: wifiInside.String(), Purpose: "case 17"}, &out, nil); err != nil {
		t.Fatalf("Export jsonl: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("jsonl %q", out.String())
	}
	for i, want := range []string{"a", "b"} {
		var rec wire.Record
		if err := json.Unmarshal([]byte(lines[i]), &rec); err != nil || rec.Router != want || rec.Intervals != nil {
			t.Errorf("jsonl line %d: %+v, %v; want router %s", i, rec, err, want)
		}
	}
}

// A router's own answers name no router: the fields are absent from the
// JSON, and the CSV keeps its columns.
func TestRouterAnswersNameNoRouter(t *testing.T) {
	h := wifiHarness(t, RoleInvestigator)
	resp, body := h.raw("POST", wire.PathLookup, `{"ip":"198.51.100.10","port":2600,"time":"2026-11-20T12:00:05Z","purpose":"case 1"}`)
	if resp.StatusCode != 200 || !strings.Contains(body, `"subscriber":3`) {
		t.Fatalf("lookup %d %s", resp.StatusCode, body)
	}
	for _, field := range []string{`"router"`, `"intervals"`, `"routers"`} {
		if strings.Contains(body, field) {
			t.Errorf("a router's answer holds %s: %s", field, body)
		}
	}
	var out bytes.Buffer
	if _, err := h.client.Export(context.Background(), wire.ExportRequest{From: "2026-11-20T00:00:00Z", To: "2026-11-20T23:59:59Z",
		Format: wire.FormatCSV, Purpose: "case 1"}, &out, nil); err != nil {
		t.Fatal(err)
	}
	rows, err := csv.NewReader(&out).ReadAll()
	if err != nil || len(rows) < 2 || !slices.Equal(rows[0], wire.CSVHeader) || len(rows[1]) != len(wire.CSVHeader) {
		t.Errorf("router csv %v, %v", rows, err)
	}
}

// TestFleetStatus: a fleet service's status carries its own part, read
// per request; a failure to read it fails the request, audited.
func TestFleetStatus(t *testing.T) {
	fleet := &routerStores{names: []string{"a"}, stores: map[string]*store.Store{"a": openFixtureStore(t)}}
	var fail atomic.Bool
	h := newHarness(t, harnessOptions{roles: rootRoles(RoleAdmin), store: fleet,
		fleet: func(context.Context) (*wire.FleetStatus, error) {
			if fail.Load() {
				return nil, errors.New("database gone")
			}
			return &wire.FleetStatus{Name: "east", Routers: []wire.FleetRouter{{Name: "a", StoreSeq: 12}}}, nil
		}})
	ans, err := h.client.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if ans.Fleet == nil || ans.Fleet.Name != "east" || len(ans.Fleet.Routers) != 1 || ans.Fleet.Routers[0].StoreSeq != 12 ||
		ans.Agent != nil || ans.Store.Epochs != 2 {
		t.Errorf("fleet status %+v (fleet %+v)", ans, ans.Fleet)
	}
	fail.Store(true)
	if _, err := h.client.Status(context.Background()); err == nil || !strings.Contains(err.Error(), "database gone") {
		t.Errorf("status with the database gone: %v", err)
	}
	if e := h.lastEntry(); e.Action != wire.ActionStatus || e.Outcome != "error" {
		t.Errorf("last entry %+v", e)
	}
}
