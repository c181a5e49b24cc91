package store

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// model is the naive reference: a list of every record, searched linearly.
type model struct {
	recs   []Record
	epochs []Epoch // at most one per (Start, ID)
}

func (m *model) openIndex(sub uint32, public netip.Addr, portLo uint16) int {
	for i, r := range m.recs {
		if r.Open() && r.Subscriber == sub && r.Public == public && r.PortLo == portLo {
			return i
		}
	}
	return -1
}

func (m *model) apply(op Op) {
	r := op.Record
	switch op.Kind {
	case OpActivate:
		// The store keeps times at timeStep, rounded outward.
		r.Start = r.Start.UTC().Truncate(time.Duration(timeStep))
		if i := m.openIndex(r.Subscriber, r.Public, r.PortLo); i >= 0 {
			if r.Start.Before(m.recs[i].Start) {
				m.recs[i] = r
			}
			return
		}
		m.recs = append(m.recs, r)
	case OpRelease:
		if i := m.openIndex(r.Subscriber, r.Public, r.PortLo); i >= 0 {
			m.recs[i].End = roundUp(r.End.UTC())
			m.recs[i].Flags |= r.Flags
		}
	}
}

// roundUp is t rounded up to timeStep, as the store keeps an End.
func roundUp(t time.Time) time.Time {
	if d := t.Truncate(time.Duration(timeStep)); !d.Equal(t) {
		return d.Add(time.Duration(timeStep))
	}
	return t
}

func (m *model) putEpoch(e Epoch) {
	e.Start, e.Recorded = e.Start.UTC(), e.Recorded.UTC()
	for i := range m.epochs {
		if m.epochs[i].ID == e.ID && m.epochs[i].Start.Equal(e.Start) {
			m.epochs[i] = e
			return
		}
	}
	m.epochs = append(m.epochs, e)
	slices.SortFunc(m.epochs, func(a, b Epoch) int {
		if c := a.Start.Compare(b.Start); c != 0 {
			return c
		}
		return int(a.ID) - int(b.ID)
	})
}

func (m *model) sweep(cutoff time.Time) {
	referenced := map[uint32]bool{}
	m.recs = slices.DeleteFunc(m.recs, func(r Record) bool { return !r.Open() && r.End.Before(cutoff) })
	for _, r := range m.recs {
		if r.Start.Before(cutoff) {
			referenced[r.Epoch] = true
		}
	}
	inForce := -1
	for i, e := range m.epochs {
		if !e.Start.After(cutoff) {
			inForce = i
		}
	}
	var kept []Epoch
	for i, e := range m.epochs {
		if i == inForce || e.Start.After(cutoff) || !e.Recorded.Before(cutoff) || referenced[e.ID] {
			kept = append(kept, e)
		}
	}
	m.epochs = kept
}

func (m *model) matching(now time.Time, keep func(r Record, end time.Time) bool) []Record {
	var out []Record
	for _, r := range m.recs {
		end := r.End
		if r.Open() {
			end = now
		}
		if keep(r, end) {
			out = append(out, r)
		}
	}
	slices.SortFunc(out, compareRecords)
	return out
}

func (m *model) lookup(ip netip.Addr, port uint16, at time.Time, tol time.Duration, now time.Time) []Record {
	lo, hi := at.Add(-tol), at.Add(tol)
	return m.matching(now, func(r Record, end time.Time) bool {
		return r.Public == ip && r.PortLo <= port && port <= r.PortHi && !r.Start.After(hi) && !end.Before(lo)
	})
}

func (m *model) history(inside netip.Addr, from, to, now time.Time) []Record {
	return m.matching(now, func(r Record, end time.Time) bool {
		return r.Inside == inside && !r.Start.After(to) && !end.Before(from)
	})
}

func (m *model) export(from, to, now time.Time) []Record {
	return m.matching(now, func(r Record, end time.Time) bool { return !r.Start.After(to) && !end.Before(from) })
}

func (m *model) epochAt(at time.Time) (Epoch, bool) {
	var e Epoch
	found := false
	for _, x := range m.epochs {
		if !x.Start.After(at) {
			e, found = x, true
		}
	}
	return e, found
}

// mapping is one epoch's deterministic assignment (RFC 7422): subscriber
// i sits at position perm[i] and gets pool[pos/C], ports lo+(pos%C)·B.
type mapping struct {
	pool  []netip.Addr
	ratio int
	block int
	perm  []int
}

const (
	propPortLo = 1024
	propPortHi = 65535
)

func (mp mapping) block4(sub int) (netip.Addr, uint16, uint16) {
	pos := mp.perm[sub]
	lo := propPortLo + (pos%mp.ratio)*mp.block
	return mp.pool[pos/mp.ratio], uint16(lo), uint16(lo + mp.block - 1)
}

func epochString(e Epoch) string {
	return fmt.Sprintf("id=%d start=%s recorded=%s ratio=%d block=%d pool=%v", e.ID,
		e.Start.Format(time.RFC3339Nano), e.Recorded.Format(time.RFC3339Nano), e.Ratio, e.BlockSize, e.Pool)
}

// TestPropertyAgainstModel drives the store and the model with the same
// random history (reassignments, epoch changes, sweeps, reopens, over weeks)
// and requires identical answers at every record boundary and at random
// points.
func TestPropertyAgainstModel(t *testing.T) {
	for _, seed := range []uint64{1, 2, 3, 4, 5, 6} {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) { runProperty(t, seed) })
	}
}

func runProperty(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	const subscribers = 24
	pool := []netip.Addr{
		netip.MustParseAddr("198.51.100.1"), netip.MustParseAddr("198.51.100.2"),
		netip.MustParseAddr("198.51.100.3"), netip.MustParseAddr("203.0.113.9"),
	}
	inside := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{100, 64, byte(i / 200), byte(i%200 + 1)}) }

	begin := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(rng.Int64N(int64(24 * time.Hour))))
	c := newClock(begin)
	fs := vfs.NewMem()
	open := func() *Store {
		s, err := Open("db", Options{FS: fs, Now: c.Now, Logger: quietLogger()})
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		return s
	}
	s := open()
	defer func() { s.Close() }()
	m := &model{}
	var everything []Record // every record ever created, also swept ones, for boundary queries
	var sweeps, reopens, epochChanges int

	var mp mapping
	epochID := uint32(0)
	newEpoch := func() {
		ratio := []int{8, 12, 16}[rng.IntN(3)]
		mp = mapping{pool: pool, ratio: ratio, block: (propPortHi - propPortLo + 1) / ratio, perm: rng.Perm(subscribers)}
		epochID++
		e := Epoch{ID: epochID, Start: c.Now(), Recorded: c.Now(), PortLo: propPortLo, PortHi: propPortHi,
			BlockSize: uint16(mp.block), Ratio: uint32(ratio), Pool: pool[:(subscribers+ratio-1)/ratio],
			Prefixes: []netip.Prefix{netip.MustParsePrefix("100.64.0.0/24")}}
		e.Hash[0] = byte(epochID)
		if err := s.PutEpoch(e); err != nil {
			t.Fatalf("PutEpoch: %v", err)
		}
		m.putEpoch(e)
		epochChanges++
	}
	newEpoch()

	lastTime := make([]time.Time, subscribers) // a subscriber's newest record time, so starts stay unique
	openBlock := make([]*Record, subscribers)  // the model's view of who is open, for generating ops
	lastDay := dayOf(c.Now().UnixNano())

	const steps = 1000
	var batch []Op
	flush := func() {
		if len(batch) == 0 {
			return
		}
		if err := s.Apply(batch); err != nil {
			t.Fatalf("Apply: %v", err)
		}
		for _, op := range batch {
			m.apply(op)
		}
		batch = batch[:0]
	}
	for step := 0; step < steps; step++ {
		// Time moves on by anything from a millisecond to a few days.
		var adv time.Duration
		switch r := rng.IntN(100); {
		case r < 60:
			adv = time.Duration(1+rng.IntN(60_000)) * time.Millisecond
		case r < 97:
			adv = time.Duration(rng.Int64N(int64(time.Hour)))
		default:
			adv = time.Duration(rng.Int64N(int64(36 * time.Hour)))
		}
		now := c.Advance(adv + time.Millisecond)
		if d := dayOf(now.UnixNano()); d != lastDay {
			// The daily re-write of the epoch in force.
			flush()
			lastDay = d
			e := m.epochs[len(m.epochs)-1]
			e.Recorded = now
			if err := s.PutEpoch(e); err != nil {
				t.Fatal(err)
			}
			m.putEpoch(e)
		}
		sub := rng.IntN(subscribers)
		switch r := rng.IntN(100); {
		case r < 45: // activation, possibly reported a little late
			if openBlock[sub] != nil {
				continue
			}
			pub, lo, hi := mp.block4(sub)
			start := now.Add(-time.Duration(rng.IntN(5000)) * time.Millisecond)
			if !start.After(lastTime[sub]) {
				start = lastTime[sub].Add(time.Millisecond)
			}
			lastTime[sub] = start
			rec := Record{Subscriber: uint32(sub), Inside: inside(sub), Public: pub, PortLo: lo, PortHi: hi,
				Start: start.UTC(), Epoch: epochID}
			if rng.IntN(5) == 0 {
				rec.Flags = FlagRecovered
			}
			batch = append(batch, Op{Kind: OpActivate, Record: rec})
			openBlock[sub] = &rec
			everything = append(everything, rec)
		case r < 80: // release
			rec := openBlock[sub]
			if rec == nil {
				continue
			}
			end := now.Add(-time.Duration(rng.IntN(2000)) * time.Millisecond)
			if end.Before(lastTime[sub]) {
				end = lastTime[sub]
			}
			lastTime[sub] = end
			batch = append(batch, Op{Kind: OpRelease, Record: Record{Subscriber: rec.Subscriber, Public: rec.Public, PortLo: rec.PortLo, End: end}})
			closed := *rec
			closed.End = end
			everything = append(everything, closed)
			openBlock[sub] = nil
		case r < 84: // a duplicate report of an open block, later than the first
			if rec := openBlock[sub]; rec != nil {
				dup := *rec
				dup.Start = now
				batch = append(batch, Op{Kind: OpActivate, Record: dup})
			}
		case r < 86: // a release nobody asked for
			pub, lo, _ := mp.block4(sub)
			if openBlock[sub] == nil {
				batch = append(batch, Op{Kind: OpRelease, Record: Record{Subscriber: uint32(sub), Public: pub, PortLo: lo, End: now}})
			}
		case r < 90: // epoch change: every block is released and reassigned
			for i, rec := range openBlock {
				if rec != nil {
					batch = append(batch, Op{Kind: OpRelease, Record: Record{Subscriber: rec.Subscriber, Public: rec.Public, PortLo: rec.PortLo, End: now}})
					closed := *rec
					closed.End = now
					everything = append(everything, closed)
					lastTime[i] = now
					openBlock[i] = nil
				}
			}
			flush()
			newEpoch()
		case r < 92 && now.Sub(begin) > 6*24*time.Hour:
			flush()
			retention := time.Duration(3+rng.IntN(3)) * 24 * time.Hour
			if _, err := s.Sweep(retention); err != nil {
				t.Fatalf("Sweep: %v", err)
			}
			m.sweep(now.Add(-retention))
			sweeps++
			checkAll(t, s, m, everything, rng, c.Now(), begin, inside, subscribers, pool)
		case r < 93:
			flush()
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			s = open()
			reopens++
		}
		if len(batch) > 0 && rng.IntN(4) == 0 {
			flush()
		}
	}
	flush()
	// The model's records may differ from the generated ones (a late earlier
	// report moves a start), so query their boundaries too.
	everything = append(everything, m.recs...)
	checkAll(t, s, m, everything, rng, c.Now(), begin, inside, subscribers, pool)
	t.Logf("seed %d: %d records kept, %d ever, %d epochs, %d epoch changes, %d sweeps, %d reopens, %s of history",
		seed, len(m.recs), len(everything), len(m.epochs), epochChanges, sweeps, reopens, c.Now().Sub(begin).Round(time.Hour))
	if sweeps == 0 || epochChanges < 3 {
		t.Fatalf("seed %d exercised too little: %d sweeps, %d epoch changes", seed, sweeps, epochChanges)
	}
}

func checkAll(t *testing.T, s *Store, m *model, everything []Record, rng *rand.Rand, now, begin time.Time,
	inside func(int) netip.Addr, subscribers int, pool []netip.Addr) {
	t.Helper()
	queries := 0
	q := func(ip netip.Addr, port uint16, at time.Time, tol time.Duration) {
		t.Helper()
		queries++
		got, err := s.Lookup(ip, port, at, tol)
		if err != nil {
			t.Fatalf("Lookup: %v", err)
		}
		if d := diffLists(recStrings(got), recStrings(m.lookup(ip, port, at, tol, now))); d != "" {
			t.Fatalf("Lookup(%s:%d at %s ±%s), now %s:\n%s", ip, port, at.Format(time.RFC3339Nano), tol, now.Format(time.RFC3339Nano), d)
		}
	}
	for _, r := range everything {
		times := []time.Time{r.Start, r.Start.Add(-time.Millisecond)}
		if !r.Open() {
			times = append(times, r.End, r.End.Add(time.Millisecond))
		}
		ports := []uint16{r.PortLo, r.PortHi, r.PortLo + (r.PortHi-r.PortLo)/2}
		for _, at := range times {
			q(r.Public, ports[rng.IntN(len(ports))], at, 0)
		}
		q(r.Public, ports[rng.IntN(len(ports))], times[rng.IntN(len(times))], time.Duration(rng.Int64N(int64(2*time.Hour))))
	}
	span := now.Sub(begin) + 48*time.Hour
	for range 300 {
		ip := pool[rng.IntN(len(pool))]
		if rng.IntN(10) == 0 {
			ip = netip.MustParseAddr("192.0.2.1")
		}
		at := begin.Add(-24 * time.Hour).Add(time.Duration(rng.Int64N(int64(span))))
		tol := []time.Duration{0, 0, time.Second, time.Minute, time.Hour, 36 * time.Hour}[rng.IntN(6)]
		q(ip, uint16(rng.IntN(65536)), at, tol)
	}
	for i := range subscribers {
		for range 3 {
			from := begin.Add(-24 * time.Hour).Add(time.Duration(rng.Int64N(int64(span))))
			to := from.Add(time.Duration(rng.Int64N(int64(5 * 24 * time.Hour))))
			if rng.IntN(4) == 0 {
				from, to = begin.Add(-24*time.Hour), now.Add(24*time.Hour)
			}
			got, err := s.History(inside(i), from, to)
			if err != nil {
				t.Fatal(err)
			}
			if d := diffLists(recStrings(got), recStrings(m.history(inside(i), from, to, now))); d != "" {
				t.Fatalf("History(%s, %s, %s):\n%s", inside(i), from, to, d)
			}
		}
	}
	for range 10 {
		from := begin.Add(-24 * time.Hour).Add(time.Duration(rng.Int64N(int64(span))))
		to := from.Add(time.Duration(rng.Int64N(int64(10 * 24 * time.Hour))))
		var got []Record
		if err := s.Export(from, to, func(r Record) error { got = append(got, r); return nil }); err != nil {
			t.Fatal(err)
		}
		if d := diffLists(recStrings(got), recStrings(m.export(from, to, now))); d != "" {
			t.Fatalf("Export(%s, %s):\n%s", from, to, d)
		}
	}
	if d := diffLists(recStrings(exportAll(t, s)), recStrings(m.export(time.Unix(0, 0), now.Add(time.Hour), now))); d != "" {
		t.Fatalf("Export(all):\n%s", d)
	}
	gotOpen, err := s.OpenRecords()
	if err != nil {
		t.Fatal(err)
	}
	if d := diffLists(sortedStrings(gotOpen), sortedStrings(m.matching(now, func(r Record, _ time.Time) bool { return r.Open() }))); d != "" {
		t.Fatalf("Open():\n%s", d)
	}
	epochs, err := s.Epochs()
	if err != nil {
		t.Fatal(err)
	}
	var ge, we []string
	for _, e := range epochs {
		ge = append(ge, epochString(e))
	}
	for _, e := range m.epochs {
		we = append(we, epochString(e))
	}
	if d := diffLists(ge, we); d != "" {
		t.Fatalf("Epochs():\n%s", d)
	}
	probe := []time.Time{begin.Add(-time.Hour), now}
	for _, e := range m.epochs {
		probe = append(probe, e.Start, e.Start.Add(-1), e.Start.Add(time.Hour))
	}
	for range 50 {
		probe = append(probe, begin.Add(time.Duration(rng.Int64N(int64(span)))))
	}
	for _, at := range probe {
		got, err := s.EpochAt(at)
		want, ok := m.epochAt(at)
		switch {
		case !ok && !errors.Is(err, ErrNotFound):
			t.Fatalf("EpochAt(%s) = %s, %v; want ErrNotFound", at, epochString(got), err)
		case ok && (err != nil || epochString(got) != epochString(want)):
			t.Fatalf("EpochAt(%s) = %s, %v; want %s", at, epochString(got), err, epochString(want))
		}
	}
	if queries < 300 {
		t.Fatalf("only %d lookups", queries)
	}
}
