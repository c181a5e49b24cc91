package store

import (
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/blocknat/blocknat/test/testutil"
)

// evString is a canonical form of an event, Enqueued included.
func evString(ev OutboxEvent) string {
	var body string
	switch ev.Kind {
	case OutboxOpen, OutboxClose:
		body = recString(ev.Record)
	case OutboxLeaseHeld, OutboxLeaseEnded:
		body = leaseString(ev.Lease)
	case OutboxEpoch:
		body = outboxEpochString(ev.Epoch)
	}
	return fmt.Sprintf("%d %s %s %s", ev.Seq, ev.Enqueued.UTC().Format(time.RFC3339Nano), ev.Kind, body)
}

func outboxEpochString(e Epoch) string {
	clock := "none"
	if e.Clock != nil {
		clock = fmt.Sprintf("%+v", *e.Clock)
	}
	return fmt.Sprintf("epoch=%d start=%s recorded=%s prefixes=%v pool=%v ports=%d-%d block=%d ratio=%d hash=%x clock=%s",
		e.ID, e.Start.UTC().Format(time.RFC3339Nano), e.Recorded.UTC().Format(time.RFC3339Nano), e.Prefixes, e.Pool,
		e.PortLo, e.PortHi, e.BlockSize, e.Ratio, e.Hash[:4], clock)
}

// allOutbox reads every event kept.
func allOutbox(t testing.TB, s *Store) []OutboxEvent {
	t.Helper()
	evs, err := s.Outbox(0, 1<<30)
	if err != nil {
		t.Fatalf("Outbox: %v", err)
	}
	return evs
}

func outboxState(t testing.TB, s *Store) OutboxState {
	t.Helper()
	st, err := s.OutboxState()
	if err != nil {
		t.Fatalf("OutboxState: %v", err)
	}
	return st
}

// replica is what a consumer of the outbox builds from nothing, with the
// rules OutboxKind documents.
type replica struct {
	open   map[openID]Record
	closed map[recordID]Record
	held   map[netip.Addr]Lease
	ended  map[string]Lease
	epochs map[string]Epoch
}

func newReplica() *replica {
	return &replica{open: map[openID]Record{}, closed: map[recordID]Record{}, held: map[netip.Addr]Lease{},
		ended: map[string]Lease{}, epochs: map[string]Epoch{}}
}

func leaseIDString(l Lease) string {
	return fmt.Sprintf("%s %d %x", l.Inside, l.Start.UnixNano(), l.MAC)
}

func (r *replica) apply(ev OutboxEvent) {
	switch ev.Kind {
	case OutboxOpen:
		id, _ := idOf(&ev.Record)
		r.open[id.open()] = ev.Record
	case OutboxClose:
		id, _ := idOf(&ev.Record)
		delete(r.open, id.open())
		r.closed[id] = ev.Record
	case OutboxLeaseHeld:
		r.held[ev.Lease.Inside] = ev.Lease
	case OutboxLeaseEnded:
		if h, ok := r.held[ev.Lease.Inside]; ok && h.Start.Equal(ev.Lease.Start) && string(h.MAC) == string(ev.Lease.MAC) {
			delete(r.held, ev.Lease.Inside)
		}
		r.ended[leaseIDString(ev.Lease)] = ev.Lease
	case OutboxEpoch:
		r.epochs[fmt.Sprintf("%d %d", ev.Epoch.Start.UnixNano(), ev.Epoch.ID)] = ev.Epoch
	}
}

func (r *replica) state() string {
	var closed, open, leases, epochs []string
	for _, rec := range r.closed {
		closed = append(closed, recString(rec))
	}
	for _, rec := range r.open {
		open = append(open, recString(rec))
	}
	for _, l := range r.held {
		leases = append(leases, leaseString(l))
	}
	for _, l := range r.ended {
		leases = append(leases, leaseString(l))
	}
	for _, e := range r.epochs {
		epochs = append(epochs, outboxEpochString(e))
	}
	return joinSorted(closed, open, leases, epochs)
}

func joinSorted(parts ...[]string) string {
	var b strings.Builder
	for _, p := range parts {
		slices.Sort(p)
		b.WriteString(strings.Join(p, "\n"))
		b.WriteString("\n--\n")
	}
	return b.String()
}

// fullState is everything a store holds that the outbox replicates, in
// the form of replica.state: the closed records (each once), the open
// records, the leases (current ones not ended, whatever the clock) and
// the epochs.
func fullState(t testing.TB, s *Store) string {
	t.Helper()
	var closed, open, leases, epochs []string
	for _, r := range exportAll(t, s) {
		if !r.Open() {
			closed = append(closed, recString(r))
		}
	}
	rs, err := s.OpenRecords()
	if err != nil {
		t.Fatalf("OpenRecords: %v", err)
	}
	open = recStrings(rs)
	err = s.read("test leases", func(v *view) error {
		seen := map[leaseID]bool{}
		err := v.scan([]byte{prefixLease}, []byte{prefixLease + 1}, func(k, val []byte) error {
			_, id, err := parseLeaseKey(k)
			if err != nil || seen[id] {
				return err
			}
			seen[id] = true
			l, err := decodeLease(val, id)
			leases = append(leases, leaseString(l))
			return err
		})
		if err != nil {
			return err
		}
		return v.scan([]byte{prefixLeaseHeld}, []byte{prefixLeaseHeld + 1}, func(k, val []byte) error {
			in, err := parseHeldKey(k)
			if err != nil {
				return err
			}
			h, err := decodeHeld(val)
			leases = append(leases, leaseString(h.lease(in, 0)))
			return err
		})
	})
	if err != nil {
		t.Fatalf("read leases: %v", err)
	}
	es, err := s.Epochs()
	if err != nil {
		t.Fatalf("Epochs: %v", err)
	}
	for _, e := range es {
		epochs = append(epochs, outboxEpochString(e))
	}
	return joinSorted(closed, open, leases, epochs)
}

// rawKeys returns every key of the store's Pebble with the prefix p.
func rawKeys(t testing.TB, s *Store, p []byte) [][]byte {
	t.Helper()
	var out [][]byte
	err := s.read("raw keys", func(v *view) error {
		return v.scan(p, keyAfter(p), func(k, _ []byte) error {
			out = append(out, append([]byte(nil), k...))
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func openOutboxStore(t testing.TB, dir string, fs vfs.FS, c *testutil.Clock) *Store {
	t.Helper()
	s, err := Open(dir, Options{FS: fs, Now: c.Now, Logger: quietLogger(), Outbox: true})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s
}

func testEpoch(id uint32, start time.Time) Epoch {
	e := Epoch{ID: id, Start: start, Prefixes: []netip.Prefix{netip.MustParsePrefix("100.64.0.0/22")},
		Pool:   []netip.Addr{netip.MustParseAddr("198.51.100.1"), netip.MustParseAddr("198.51.100.2")},
		PortLo: 1024, PortHi: 65535, BlockSize: 1008, Ratio: 64,
		Clock: &EpochClock{Synchronised: true, EstimatedError: 3 * time.Millisecond, MaxError: 40 * time.Millisecond, ReadAt: start}}
	e.Hash[0] = byte(id)
	return e
}

// TestOutboxEvents: every kind of change gives its event, in commit order,
// with the content the spec gives each kind; a canary and an unmatched
// release give none; seqs go on without a gap after a reopen.
func TestOutboxEvents(t *testing.T) {
	dir := t.TempDir()
	c := newClock(t0)
	s := openOutboxStore(t, dir, nil, c)
	defer func() { s.Close() }()
	if st := outboxState(t, s); st != (OutboxState{}) {
		t.Fatalf("a new store's outbox: %+v, want empty", st)
	}

	e := testEpoch(7, t0.Add(-time.Hour))
	e.Recorded = t0.Add(-time.Minute)
	if err := s.PutEpoch(e); err != nil {
		t.Fatal(err)
	}
	enq1 := c.Now()
	c.Advance(time.Second)
	// Nanosecond times: the events carry them as stored, rounded outward.
	a := activate(1, "100.64.0.1", "198.51.100.1", 1024, 2031, t0.Add(-30*time.Minute+123_456), 7)
	b := activate(2, "100.64.0.2", "198.51.100.1", 2032, 3039, t0.Add(-20*time.Minute+999_999), 7)
	a.Record.Router = "not stored"
	relA := release(1, "198.51.100.1", 1024, t0.Add(-10*time.Minute+1))
	relA.Record.Flags = FlagRecovered
	mustApply(t, s, a, b, relA)
	enq2 := c.Now()
	c.Advance(time.Second)
	mustApply(t, s,
		release(2, "198.51.100.1", 2032, t0.Add(-5*time.Minute)),
		release(9, "198.51.100.1", 9000, t0.Add(-5*time.Minute)), // matches nothing
		Op{Kind: OpCanary, Canary: Canary{Seq: 4, Time: t0, Epoch: 7}},
	)
	enq3 := c.Now()
	c.Advance(time.Second)
	hw1, hw2 := "02:00:00:00:00:01", "02:00:00:00:00:02"
	add := leaseEv(LeaseAdd, t0.Add(-time.Hour), "100.64.0.1", hw1, t0.Add(time.Hour))
	add.Hostname = "phone"
	mustApplyLeases(t, s,
		add,
		leaseEv(LeaseRenew, t0.Add(-30*time.Minute), "100.64.0.1", hw1, t0.Add(2*time.Hour)),
		leaseEv(LeaseAdd, t0, "100.64.0.1", hw2, t0.Add(3*time.Second)),
	)
	enq4 := c.Now()
	c.Advance(time.Minute)
	if n, err := s.EndExpiredLeases(); err != nil || n != 1 {
		t.Fatalf("EndExpiredLeases: %d, %v; want 1", n, err)
	}
	enq5 := c.Now()

	ts := func(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }
	wantEpoch := e
	wantEpoch.Start, wantEpoch.Recorded = e.Start.UTC(), e.Recorded.UTC()
	want := []string{
		fmt.Sprintf("1 %s epoch %s", ts(enq1), outboxEpochString(wantEpoch)),
		fmt.Sprintf("2 %s open sub=1 in=100.64.0.1 pub=198.51.100.1 ports=1024-2031 [2026-11-20T11:30:00Z, open] epoch=7 flags=0", ts(enq2)),
		fmt.Sprintf("3 %s open sub=2 in=100.64.0.2 pub=198.51.100.1 ports=2032-3039 [2026-11-20T11:40:00Z, open] epoch=7 flags=0", ts(enq2)),
		fmt.Sprintf("4 %s close sub=1 in=100.64.0.1 pub=198.51.100.1 ports=1024-2031 [2026-11-20T11:30:00Z, 2026-11-20T11:50:00.001Z] epoch=7 flags=1", ts(enq2)),
		fmt.Sprintf("5 %s close sub=2 in=100.64.0.2 pub=198.51.100.1 ports=2032-3039 [2026-11-20T11:40:00Z, 2026-11-20T11:55:00Z] epoch=7 flags=0", ts(enq3)),
		fmt.Sprintf("6 %s lease_held 100.64.0.1 %s cid= host=\"phone\" [2026-11-20T11:00:00Z, 2026-11-20T13:00:00Z] held src=dnsmasq", ts(enq4), hw1),
		fmt.Sprintf("7 %s lease_held 100.64.0.1 %s cid= host=\"phone\" [2026-11-20T11:00:00Z, 2026-11-20T14:00:00Z] held src=dnsmasq", ts(enq4), hw1),
		fmt.Sprintf("8 %s lease_ended 100.64.0.1 %s cid= host=\"phone\" [2026-11-20T11:00:00Z, 2026-11-20T12:00:00Z] ended src=dnsmasq", ts(enq4), hw1),
		fmt.Sprintf("9 %s lease_held 100.64.0.1 %s cid= host=\"\" [2026-11-20T12:00:00Z, 2026-11-20T12:00:03Z] held src=dnsmasq", ts(enq4), hw2),
		fmt.Sprintf("10 %s lease_ended 100.64.0.1 %s cid= host=\"\" [2026-11-20T12:00:00Z, 2026-11-20T12:00:03Z] ended src=dnsmasq", ts(enq5), hw2),
	}
	var got []string
	for _, ev := range allOutbox(t, s) {
		got = append(got, evString(ev))
	}
	if d := diffLists(got, want); d != "" {
		t.Fatalf("outbox:\n%s", d)
	}
	// The events replay into what the store holds.
	r := newReplica()
	for _, ev := range allOutbox(t, s) {
		r.apply(ev)
	}
	if got, want := r.state(), fullState(t, s); got != want {
		t.Fatalf("replayed outbox:\n%s\nstore:\n%s", got, want)
	}
	if st := outboxState(t, s); st.Last != 10 || st.Acked != 0 || st.Depth != 10 || !st.Oldest.Equal(enq1) {
		t.Fatalf("state %+v, want last 10, depth 10, oldest %s", st, enq1)
	}
	if evs, err := s.Outbox(8, 1); err != nil || len(evs) != 1 || evs[0].Seq != 9 {
		t.Fatalf("Outbox(8, 1): %v, %v; want event 9 alone", evs, err)
	}

	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openOutboxStore(t, dir, nil, c)
	if st := outboxState(t, s); st.Last != 10 || st.Depth != 10 {
		t.Fatalf("after reopen: %+v, want last 10", st)
	}
	if err := s.PutEpoch(testEpoch(8, t0)); err != nil {
		t.Fatal(err)
	}
	evs := allOutbox(t, s)
	if len(evs) != 11 || evs[10].Seq != 11 || evs[10].Kind != OutboxEpoch || evs[10].Epoch.ID != 8 {
		t.Fatalf("after reopen the next event is %v, want epoch 8 as seq 11", evs[len(evs)-1])
	}
}

// TestOutboxActivatedAndReleasedInOneBatch: both events, in order, and
// no open keys.
func TestOutboxActivatedAndReleasedInOneBatch(t *testing.T) {
	c := newClock(t0)
	s := openOutboxStore(t, t.TempDir(), nil, c)
	defer s.Close()
	mustApply(t, s,
		activate(1, "100.64.0.1", "198.51.100.1", 1024, 2031, t0.Add(-time.Hour), 1),
		release(1, "198.51.100.1", 1024, t0.Add(-time.Minute)),
		activate(1, "100.64.0.1", "198.51.100.1", 1024, 2031, t0.Add(-time.Second), 1),
	)
	var kinds []string
	for _, ev := range allOutbox(t, s) {
		kinds = append(kinds, fmt.Sprintf("%d:%s:%s", ev.Seq, ev.Kind, ev.Record.Start.Format(time.TimeOnly)))
	}
	if want := []string{"1:open:11:00:00", "2:close:11:00:00", "3:open:11:59:59"}; !slices.Equal(kinds, want) {
		t.Fatalf("events %v, want %v", kinds, want)
	}
	if n := len(rawKeys(t, s, []byte{prefixOpen})); n != 1 {
		t.Fatalf("%d open keys, want 1 (the second activation)", n)
	}
}

// TestOutboxAck: an acknowledgement deletes the events up to it with one
// range delete, persists across a reopen, and moves Oldest to the first
// event left.
func TestOutboxAck(t *testing.T) {
	dir := t.TempDir()
	c := newClock(t0)
	s := openOutboxStore(t, dir, nil, c)
	defer func() { s.Close() }()
	var enq []time.Time
	for i := range 5 {
		if err := s.PutEpoch(testEpoch(uint32(i+1), t0)); err != nil {
			t.Fatal(err)
		}
		enq = append(enq, c.Now())
		c.Advance(time.Second)
	}
	if err := s.AckOutbox(6); !errors.Is(err, ErrInvalid) {
		t.Fatalf("ack past the last event: %v, want ErrInvalid", err)
	}
	if err := s.AckOutbox(3); err != nil {
		t.Fatal(err)
	}
	if err := s.AckOutbox(2); err != nil {
		t.Fatalf("ack below the acknowledged seq: %v, want nil", err)
	}
	check := func(when string) {
		t.Helper()
		if st := outboxState(t, s); st.Last != 5 || st.Acked != 3 || st.Depth != 2 || !st.Oldest.Equal(enq[3]) {
			t.Fatalf("%s: state %+v, want last 5, acked 3, depth 2, oldest %s", when, st, enq[3])
		}
		evs := allOutbox(t, s)
		if len(evs) != 2 || evs[0].Seq != 4 || evs[1].Seq != 5 {
			t.Fatalf("%s: events %d, want 4 and 5", when, len(evs))
		}
		if keys := rawKeys(t, s, []byte{prefixOutbox}); len(keys) != 2 || string(keys[0]) != string(outboxKey(4)) {
			t.Fatalf("%s: outbox keys %x, want those of 4 and 5", when, keys)
		}
	}
	check("after ack")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openOutboxStore(t, dir, nil, c)
	check("after reopen")
	if err := s.AckOutbox(5); err != nil {
		t.Fatal(err)
	}
	if st := outboxState(t, s); st.Last != 5 || st.Acked != 5 || st.Depth != 0 || !st.Oldest.IsZero() {
		t.Fatalf("all acknowledged: %+v", st)
	}
	if err := s.PutEpoch(testEpoch(9, t0)); err != nil {
		t.Fatal(err)
	}
	if evs := allOutbox(t, s); len(evs) != 1 || evs[0].Seq != 6 {
		t.Fatalf("after acknowledging all, the next event is %v, want seq 6", evs)
	}
	if _, err := s.Outbox(0, 0); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Outbox limit 0: %v, want ErrInvalid", err)
	}
}

// outboxWorkload writes every kind of change the outbox carries.
func outboxWorkload(t testing.TB, s *Store, c *testutil.Clock, days int) {
	t.Helper()
	begin := c.Now().Add(-time.Duration(days) * 24 * time.Hour).Truncate(24 * time.Hour)
	rng := newRand(5)
	for d := range days {
		day := begin.Add(time.Duration(d) * 24 * time.Hour)
		if err := s.PutEpoch(testEpoch(uint32(d+1), day)); err != nil {
			t.Fatal(err)
		}
		// Records crossing midnight are copied into two partitions.
		ops := dayOps(rng, 20, 3, day.Add(12*time.Hour))
		applyChunks(t, s, ops, 17)
		applyLeaseChunks(t, s, dayLeases(rng, 10, 2, day.Add(6*time.Hour)), 9)
	}
	// Some records and leases still open.
	mustApply(t, s,
		activate(900, "100.64.9.1", "198.51.100.9", 1024, 2031, c.Now().Add(-time.Hour), 1),
		activate(901, "100.64.9.2", "198.51.100.9", 2032, 3039, c.Now().Add(-time.Minute), 1))
	mustApplyLeases(t, s,
		leaseEv(LeaseAdd, c.Now().Add(-time.Hour), "100.64.9.1", "02:00:00:00:09:01", time.Time{}),
		leaseEv(LeaseAdd, c.Now().Add(-time.Hour), "100.64.9.2", "02:00:00:00:09:02", c.Now().Add(time.Hour)))
}

// TestOutboxOffWritesNoOutbox: with Options.Outbox false no write touches
// the outbox keyspace or its meta.
func TestOutboxOffWritesNoOutbox(t *testing.T) {
	c := newClock(t0)
	s, _ := openMem(t, c)
	outboxWorkload(t, s, c, 3)
	if _, err := s.EndExpiredLeases(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Sweep(48 * time.Hour); err != nil {
		t.Fatal(err)
	}
	if keys := rawKeys(t, s, []byte{prefixOutbox}); len(keys) != 0 {
		t.Fatalf("%d outbox keys with the outbox off", len(keys))
	}
	if keys := rawKeys(t, s, []byte("m outbox")); len(keys) != 0 {
		t.Fatalf("outbox meta %q with the outbox off", keys)
	}
	if st := outboxState(t, s); st != (OutboxState{}) {
		t.Fatalf("state %+v with the outbox off", st)
	}
}

// TestSweepKeepsOutbox: Sweep deletes records, leases and epochs but no
// event; its lease endings are events; the acknowledged events'
// tombstones are compacted away.
func TestSweepKeepsOutbox(t *testing.T) {
	c := newClock(t0)
	s := openOutboxStore(t, t.TempDir(), nil, c)
	defer s.Close()
	outboxWorkload(t, s, c, 4)
	before := allOutbox(t, s)
	if err := s.AckOutbox(before[9].Seq); err != nil {
		t.Fatal(err)
	}
	before = before[10:]
	c.Advance(2 * time.Hour) // the lease of 100.64.9.2 expires
	st, err := s.Sweep(36 * time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if st.ExpiredRecords == 0 || st.ExpiredLeases == 0 || st.EndedLeases != 1 {
		t.Fatalf("sweep %+v: want expired records and leases and one lease ended", st)
	}
	after := allOutbox(t, s)
	if len(after) != len(before)+1 {
		t.Fatalf("%d events after the sweep, want the %d before and one lease ending", len(after), len(before))
	}
	for i := range before {
		if evString(after[i]) != evString(before[i]) {
			t.Fatalf("event %d changed by the sweep:\n%s\n%s", i, evString(before[i]), evString(after[i]))
		}
	}
	if last := after[len(after)-1]; last.Kind != OutboxLeaseEnded || last.Lease.Inside != netip.MustParseAddr("100.64.9.2") ||
		!last.Lease.End.Equal(t0.Add(time.Hour)) {
		t.Fatalf("last event %s, want the lease of 100.64.9.2 ended at its expiry", evString(last))
	}
	if keys := rawKeys(t, s, []byte{prefixOutbox}); len(keys) != len(after) {
		t.Fatalf("%d outbox keys, want %d", len(keys), len(after))
	}
}

// outboxWrites is a workload of every kind of change for the crash tests,
// deterministic from its seed: record batches, lease batches, epochs and
// lease expiries.
type outboxWrites struct {
	rec   *crashWorkload
	rng   interface{ IntN(int) int }
	clock *testutil.Clock
	step  int
}

func (w *outboxWrites) next(s *Store) error {
	w.step++
	now := w.rec.next
	switch w.step % 7 {
	case 3:
		return s.PutEpoch(testEpoch(uint32(w.step), now))
	case 5:
		var evs []LeaseEvent
		for range 1 + w.rng.IntN(8) {
			in := netip.AddrFrom4([4]byte{100, 64, 0, byte(w.rng.IntN(12))})
			hw := mac(fmt.Sprintf("02:00:00:00:00:%02x", w.rng.IntN(4)))
			at := now.Add(-time.Duration(w.rng.IntN(3600)) * time.Second)
			kind := LeaseEventKind(1 + w.rng.IntN(3))
			var exp time.Time
			if w.rng.IntN(3) > 0 {
				exp = at.Add(time.Duration(1+w.rng.IntN(7200)) * time.Second)
			}
			evs = append(evs, LeaseEvent{Kind: kind, Time: at, Inside: in, MAC: hw, Expires: exp, Hostname: "h", Source: "kea"})
		}
		return s.ApplyLeases(evs)
	case 6:
		_, err := s.EndExpiredLeases()
		return err
	}
	return s.Apply(w.rec.batch())
}

// TestOutboxCrash crashes, at random points while another goroutine
// writes and acknowledges, and checks each crash's store: its events are
// contiguous from the acknowledged seq, agree with those read before the
// crash, and replayed after the acknowledged ones read before give exactly
// what the store holds: no change without its event, no event without
// its change.
func TestOutboxCrash(t *testing.T) {
	// Far enough ahead of the workload's times for every write it can make.
	c := newClock(t0.Add(3 * 365 * 24 * time.Hour))
	fs := vfs.NewCrashableMem()
	s := openOutboxStore(t, "db", fs, c)
	defer s.Close()
	w := &outboxWrites{rec: newCrashWorkload(21, newClock(t0)), rng: newRand(22), clock: c}

	var mu syncLog
	errc := make(chan error, 1)
	stop := make(chan struct{})
	var writing atomic.Bool
	writing.Store(true)
	go func() {
		defer close(errc)
		defer writing.Store(false)
		pace := newRand(24)
		for i := range 20_000 {
			select {
			case <-stop:
				return
			default:
			}
			time.Sleep(time.Duration(pace.IntN(300)) * time.Microsecond)
			if err := w.next(s); err != nil {
				errc <- err
				return
			}
			evs, err := s.Outbox(mu.last(), 1<<20)
			if err != nil {
				errc <- err
				return
			}
			mu.add(evs)
			if i%5 == 4 {
				if err := s.AckOutbox(mu.last() - uint64(min(len(evs), 3))); err != nil {
					errc <- err
					return
				}
			}
		}
	}()
	rng := newRand(23)
	checked, midWrite := 0, 0
	for ; checked < 30; checked++ {
		time.Sleep(time.Duration(rng.IntN(3000)) * time.Microsecond)
		if writing.Load() {
			midWrite++
		}
		clone := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: rng.IntN(101), RNG: newRand(uint64(checked))})
		s2 := openOutboxStore(t, "db", clone, c)
		st := outboxState(t, s2)
		evs := allOutbox(t, s2)
		state := fullState(t, s2)
		if err := s2.Close(); err != nil {
			t.Fatal(err)
		}
		log := mu.snapshot()
		if uint64(len(evs)) != st.Depth {
			t.Fatalf("crash %d: %d events kept, state %+v", checked, len(evs), st)
		}
		for i, ev := range evs {
			if ev.Seq != st.Acked+uint64(i)+1 {
				t.Fatalf("crash %d: event %d has seq %d, want %d (acked %d)", checked, i, ev.Seq, st.Acked+uint64(i)+1, st.Acked)
			}
			if ev.Seq <= uint64(len(log)) && evString(ev) != evString(log[ev.Seq-1]) {
				t.Fatalf("crash %d: event %s, read before the crash as %s", checked, evString(ev), evString(log[ev.Seq-1]))
			}
		}
		if st.Acked > uint64(len(log)) {
			t.Fatalf("crash %d: acked %d, but only %d events were read", checked, st.Acked, len(log))
		}
		r := newReplica()
		for _, ev := range log[:st.Acked] {
			r.apply(ev)
		}
		for _, ev := range evs {
			r.apply(ev)
		}
		if got := r.state(); got != state {
			t.Fatalf("crash %d (acked %d, last %d): replay differs from the store:\n%s", checked, st.Acked, st.Last,
				diffLists(strings.Split(got, "\n"), strings.Split(state, "\n")))
		}
	}
	close(stop)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if midWrite < 20 {
		t.Fatalf("only %d of %d crashes taken while the writer ran", midWrite, checked)
	}
	t.Logf("%d crash clones checked, %d while writing; %d events", checked, midWrite, len(mu.snapshot()))
}

// TestOutboxBackfill: opening with the outbox a store that holds data
// enqueues it once, in order, as events that replay into what the store
// holds; a later Open enqueues nothing, and new changes follow without
// a gap.
func TestOutboxBackfill(t *testing.T) {
	dir := t.TempDir()
	c := newClock(t0)
	s, err := Open(dir, Options{Now: c.Now, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	outboxWorkload(t, s, c, 4)
	if _, err := s.Sweep(60 * time.Hour); err != nil {
		t.Fatal(err)
	}
	want := fullState(t, s)
	closedRecords := 0
	for _, r := range exportAll(t, s) {
		if !r.Open() {
			closedRecords++
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	logs := &testutil.Buffer{}
	old := outboxBackfillBatch
	outboxBackfillBatch = 50
	defer func() { outboxBackfillBatch = old }()
	s, err = Open(dir, Options{Now: c.Now, Logger: slogTo(logs), Outbox: true})
	if err != nil {
		t.Fatal(err)
	}
	evs := allOutbox(t, s)
	r := newReplica()
	rank := map[OutboxKind]int{OutboxEpoch: 0, OutboxClose: 1, OutboxOpen: 2, OutboxLeaseEnded: 3, OutboxLeaseHeld: 4}
	for i, ev := range evs {
		if ev.Seq != uint64(i+1) {
			t.Fatalf("event %d has seq %d", i, ev.Seq)
		}
		if i > 0 && rank[ev.Kind] < rank[evs[i-1].Kind] {
			t.Fatalf("event %d: %s after %s; want epochs, closed records, open records, closed leases, current leases", i, ev.Kind, evs[i-1].Kind)
		}
		if !ev.Enqueued.Equal(c.Now()) {
			t.Fatalf("event %d enqueued %s, want the store clock %s", i, ev.Enqueued, c.Now())
		}
		r.apply(ev)
	}
	if got := r.state(); got != want {
		t.Fatalf("backfill replays into:\n%s\nthe store holds:\n%s", diffLists(strings.Split(got, "\n"), strings.Split(want, "\n")), "")
	}
	// One event per closed record, not per day copy.
	if n, copies := countKind(evs, OutboxClose), len(rawKeys(t, s, []byte{prefixRecord})); n != closedRecords || n >= copies {
		t.Fatalf("%d close events for %d records in %d copies: want one per record", n, closedRecords, copies)
	}
	if !strings.Contains(logs.String(), "store outbox backfilled") || !strings.Contains(logs.String(), fmt.Sprintf("events=%d", len(evs))) {
		t.Fatalf("log lacks the backfill:\n%s", logs.String())
	}
	n := len(evs)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openOutboxStore(t, dir, nil, c)
	defer s.Close()
	if st := outboxState(t, s); st.Last != uint64(n) {
		t.Fatalf("second open: last %d, want %d (no second backfill)", st.Last, n)
	}
	if err := s.PutEpoch(testEpoch(99, t0)); err != nil {
		t.Fatal(err)
	}
	if evs := allOutbox(t, s); len(evs) != n+1 || evs[n].Seq != uint64(n+1) {
		t.Fatalf("the first change after the backfill: %d events, want %d", len(evs), n+1)
	}
}

func countKind(evs []OutboxEvent, k OutboxKind) int {
	n := 0
	for _, ev := range evs {
		if ev.Kind == k {
			n++
		}
	}
	return n
}

// TestOutboxBackfillResumesAfterCrash crashes the backfill before each of
// its batches (Options.Writable is asked before every one) and opens each
// crash's store again: the backfill restarts and ends with the events of
// an uninterrupted one, none twice.
func TestOutboxBackfillResumesAfterCrash(t *testing.T) {
	c := newClock(t0)
	fs := vfs.NewCrashableMem()
	s, err := Open("db", Options{FS: fs, Now: c.Now, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	outboxWorkload(t, s, c, 2)
	want := fullState(t, s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	old := outboxBackfillBatch
	outboxBackfillBatch = 7
	defer func() { outboxBackfillBatch = old }()

	var clones []*vfs.MemFS
	rng := newRand(31)
	s, err = Open("db", Options{FS: fs, Now: c.Now, Logger: quietLogger(), Outbox: true, Writable: func() error {
		clones = append(clones, fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: rng.IntN(101), RNG: newRand(uint64(len(clones)))}))
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	var clean []string
	for _, ev := range allOutbox(t, s) {
		clean = append(clean, evString(ev))
	}
	s.Close()
	if len(clones) < 10 {
		t.Fatalf("only %d backfill batches", len(clones))
	}
	for i, clone := range clones {
		// A second crash, in the restarted backfill, must not matter either.
		var again *vfs.MemFS
		calls := 0
		s2, err := Open("db", Options{FS: clone, Now: c.Now, Logger: quietLogger(), Outbox: true, Writable: func() error {
			calls++
			if calls == 1+i%5 {
				again = clone.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 100, RNG: newRand(uint64(i))})
				return errors.New("disk full")
			}
			return nil
		}})
		if err == nil {
			s2.Close()
		}
		if again == nil {
			t.Fatalf("crash %d: the restarted backfill asked Writable %d times", i, calls)
		}
		s3 := openOutboxStore(t, "db", again, c)
		var got []string
		r := newReplica()
		for _, ev := range allOutbox(t, s3) {
			got = append(got, evString(ev))
			r.apply(ev)
		}
		state := r.state()
		s3.Close()
		if d := diffLists(got, clean); d != "" {
			t.Fatalf("crash %d: backfill after the crash:\n%s", i, d)
		}
		if state != want {
			t.Fatalf("crash %d: replay differs from the store", i)
		}
	}
	t.Logf("%d backfill crashes", len(clones))
}

// TestOutboxOffThenOn: changes written with the outbox off are not lost
// when it is turned on again: that write forgets that the outbox held
// every change, so the next Open with it backfills, after the events
// already kept and without a gap.
func TestOutboxOffThenOn(t *testing.T) {
	dir := t.TempDir()
	c := newClock(t0)
	s := openOutboxStore(t, dir, nil, c)
	mustApply(t, s, activate(1, "100.64.0.1", "198.51.100.1", 1024, 2031, t0.Add(-time.Hour), 1))
	s.Close()

	s, err := Open(dir, Options{Now: c.Now, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	mustApply(t, s, release(1, "198.51.100.1", 1024, t0.Add(-time.Minute)))
	want := fullState(t, s)
	s.Close()

	s = openOutboxStore(t, dir, nil, c)
	defer s.Close()
	evs := allOutbox(t, s)
	var kinds []string
	for _, ev := range evs {
		kinds = append(kinds, fmt.Sprintf("%d:%s", ev.Seq, ev.Kind))
	}
	if want := []string{"1:open", "2:close"}; !slices.Equal(kinds, want) {
		t.Fatalf("events %v, want %v: the open kept, then the backfill of the closed record", kinds, want)
	}
	r := newReplica()
	for _, ev := range evs {
		r.apply(ev)
	}
	if r.state() != want {
		t.Fatalf("replay %s\nstore %s", r.state(), want)
	}
}

// syncLog is the events a consumer read, shared with the crash checker.
type syncLog struct {
	mu  sync.Mutex
	evs []OutboxEvent
}

func (l *syncLog) add(evs []OutboxEvent) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.evs = append(l.evs, evs...)
}

func (l *syncLog) last() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return uint64(len(l.evs))
}

func (l *syncLog) snapshot() []OutboxEvent {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.evs)
}

func newRand(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, 1)) }

func slogTo(b *testutil.Buffer) *slog.Logger { return slog.New(slog.NewTextHandler(b, nil)) }

// TestOutboxDecodeRejectsTruncated: every event value cut short is
// corrupt (an epoch's may also read as one without its clock, as values
// written before epochs carried one do), and never panics the reader.
func TestOutboxDecodeRejectsTruncated(t *testing.T) {
	c := newClock(t0)
	s := openOutboxStore(t, t.TempDir(), nil, c)
	defer s.Close()
	outboxWorkload(t, s, c, 1)
	kinds := map[OutboxKind]bool{}
	err := s.read("test", func(v *view) error {
		return v.scan([]byte{prefixOutbox}, []byte{prefixOutbox + 1}, func(k, val []byte) error {
			ev, err := decodeOutbox(k, val)
			if err != nil {
				return err
			}
			kinds[ev.Kind] = true
			for n := range len(val) {
				_, err := decodeOutbox(k, val[:n])
				if err == nil && ev.Kind != OutboxEpoch {
					t.Errorf("%s event %d cut to %d of %d bytes decodes", ev.Kind, ev.Seq, n, len(val))
				}
				if err != nil && !errors.Is(err, ErrCorrupt) {
					t.Errorf("%s event cut short: %v, want ErrCorrupt", ev.Kind, err)
				}
			}
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(kinds) != 5 {
		t.Fatalf("the workload gave the kinds %v, want all five", kinds)
	}
}
