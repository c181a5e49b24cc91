package store

import (
	"context"
	"math/rand/v2"
	"testing"
	"time"
)

// TestBytesPerRecord measures what a closed record costs on disk once
// compacted (its r copy, its s index entry, Pebble's per-key overhead and
// block compression), and holds it under the design target of 100 bytes.
func TestBytesPerRecord(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 100k records to disk")
	}
	dir := t.TempDir()
	begin := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	const subs, perSub, days = 5000, 5, 4
	c := newClock(begin.Add(days * 24 * time.Hour))
	s, err := Open(dir, Options{Now: c.Now, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	rng := rand.New(rand.NewPCG(1, 2))
	for d := range days {
		applyChunks(t, s, dayOps(rng, subs, perSub, begin.Add(time.Duration(d)*24*time.Hour)), 10_000)
	}
	records := subs * perSub * days
	if err := s.db.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := s.db.Compact(context.Background(), []byte{0}, []byte{0xff}, true); err != nil {
		t.Fatal(err)
	}
	m := s.db.Metrics()
	var tables int64
	for _, l := range m.Levels {
		tables += l.TablesSize
	}
	st, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	perRecord := float64(tables) / float64(records)
	t.Logf("%d records: SSTables %d B = %.1f B/record (r %.1f, s %.1f); all files %d B = %.1f B/record",
		records, tables, perRecord, float64(st.RecordBytes)/float64(records), float64(st.IndexBytes)/float64(records),
		m.DiskSpaceUsage(), float64(m.DiskSpaceUsage())/float64(records))
	if perRecord >= 100 {
		t.Fatalf("%.1f bytes per record, want under 100", perRecord)
	}
}

// TestBytesPerLease measures what a closed DHCP lease costs on disk once
// compacted (its L copies, its M index entry, Pebble's per-key overhead
// and block compression), with a hostname on two in three and a client id
// on each, as dnsmasq reports them. It measures under 60 bytes; the bound
// leaves room for Pebble's and compression's variation, not for a layout
// change.
func TestBytesPerLease(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 100k leases to disk")
	}
	dir := t.TempDir()
	begin := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	const addrs, perDay, days = 5000, 5, 4
	c := newClock(begin.Add(days * 24 * time.Hour))
	s, err := Open(dir, Options{Now: c.Now, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	rng := rand.New(rand.NewPCG(1, 2))
	for d := range days {
		applyLeaseChunks(t, s, dayLeases(rng, addrs, perDay, begin.Add(time.Duration(d)*24*time.Hour)), 10_000)
	}
	leases := addrs * perDay * days
	if err := s.db.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := s.db.Compact(context.Background(), []byte{0}, []byte{0xff}, true); err != nil {
		t.Fatal(err)
	}
	m := s.db.Metrics()
	var tables int64
	for _, l := range m.Levels {
		tables += l.TablesSize
	}
	st, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.LeaseOpen != 0 {
		t.Fatalf("%d leases still current, want every one released", st.LeaseOpen)
	}
	perLease := float64(tables) / float64(leases)
	t.Logf("%d leases: SSTables %d B = %.1f B/lease (lease keyspaces estimated %.1f); all files %d B = %.1f B/lease",
		leases, tables, perLease, float64(st.LeaseBytes)/float64(leases), m.DiskSpaceUsage(), float64(m.DiskSpaceUsage())/float64(leases))
	if perLease >= 80 {
		t.Fatalf("%.1f bytes per lease, want under 80", perLease)
	}
}
