package store

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

// findInDir returns "file@offset" for every occurrence of any needle in any
// file under dir.
func findInDir(t *testing.T, dir string, needles map[string][]byte) []string {
	t.Helper()
	var hits []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(path)
		if errors.Is(err, fs.ErrNotExist) {
			return nil // Pebble deleted an obsolete file while we walked: it holds nothing now
		}
		if err != nil {
			return err
		}
		for name, n := range needles {
			for off := 0; ; {
				i := bytes.Index(data[off:], n)
				if i < 0 {
					break
				}
				rel, _ := filepath.Rel(dir, path)
				hits = append(hits, fmt.Sprintf("%s in %s@%d", name, rel, off+i))
				off += i + 1
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("scan %s: %v", dir, err)
	}
	sort.Strings(hits)
	return hits
}

func listDir(t *testing.T, dir string) string {
	t.Helper()
	var names []string
	filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			info, _ := d.Info()
			rel, _ := filepath.Rel(dir, path)
			names = append(names, fmt.Sprintf("%s (%d B)", rel, info.Size()))
		}
		return nil
	})
	return strings.Join(names, ", ")
}

// TestRetentionOnDiskLeavesNoTrace runs a year and a bit of records on a
// real directory, sweeps with a 365-day retention and then requires that the
// expired subscribers' inside addresses, in binary and dotted form, are in
// no file of the store: SSTables, WAL, MANIFEST, OPTIONS, anything. The same
// scan before the sweep must find them, so the scan can see what it looks
// for. With the outbox, every event acknowledged before the sweep must be
// gone from the disk too.
func TestRetentionOnDiskLeavesNoTrace(t *testing.T) {
	for _, outbox := range []bool{false, true} {
		t.Run(fmt.Sprintf("outbox=%t", outbox), func(t *testing.T) { retentionLeavesNoTrace(t, outbox) })
	}
}

func retentionLeavesNoTrace(t *testing.T, outbox bool) {
	dir := t.TempDir()
	day := 24 * time.Hour
	begin := time.Date(2025, 1, 1, 6, 0, 0, 0, time.UTC)
	c := newClock(begin)
	s, err := Open(dir, Options{Now: c.Now, Logger: quietLogger(), Outbox: outbox})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { s.Close() }()

	const (
		expiredIn  = "10.201.33.77" // records on days 0-3, a multi-day one among them
		boundaryIn = "10.202.44.88" // one record ending on the cutoff day, before the cutoff
		openIn     = "100.64.0.3"   // open since day 0
		spanIn     = "100.64.0.4"   // day 30 to day 380: outlives the cutoff
		pub        = "198.51.100.7"
	)
	at := func(d int, h time.Duration) time.Time { return begin.Add(time.Duration(d)*day + h) }
	step := func(now time.Time, ops ...Op) {
		t.Helper()
		c.Set(now)
		mustApply(t, s, ops...)
	}
	// Other subscribers' records around the expired ones, so that expired
	// and retained data share SSTables.
	filler := func(d int) {
		t.Helper()
		var ops []Op
		for i := range 40 {
			lo := uint16(1024 + (i+8)*1008)
			in := fmt.Sprintf("100.64.1.%d", i+1)
			ops = append(ops,
				activate(uint32(100+i), in, pub, lo, lo+1007, at(d, time.Duration(i)*time.Minute), 1),
				release(uint32(100+i), pub, lo, at(d, time.Duration(i)*time.Minute+2*time.Hour)))
		}
		step(at(d, 4*time.Hour), ops...)
	}

	step(at(0, 0),
		activate(1, expiredIn, pub, 1024, 2031, at(0, 0), 1),
		activate(3, openIn, pub, 3040, 4047, at(0, 0), 1))
	step(at(0, time.Hour), release(1, pub, 1024, at(0, time.Hour)))
	filler(0)
	step(at(1, 0), activate(1, expiredIn, pub, 1024, 2031, at(1, 0), 1))
	filler(1)
	step(at(3, 0), release(1, pub, 1024, at(3, 0))) // covers days 1, 2 and 3
	filler(3)
	filler(30)
	step(at(30, 0), activate(4, spanIn, pub, 4048, 5055, at(30, 0), 1))
	filler(34)
	step(at(35, -5*time.Hour), activate(2, boundaryIn, pub, 2032, 3039, at(35, -5*time.Hour), 1))
	step(at(35, -3*time.Hour), release(2, pub, 2032, at(35, -3*time.Hour))) // cutoff is at(35, 0)
	filler(35)
	filler(380)
	step(at(380, 0), release(4, pub, 4048, at(380, 0)))
	filler(399)

	needles := map[string][]byte{}
	for _, in := range []string{expiredIn, boundaryIn} {
		a := netip.MustParseAddr(in).As4()
		needles[in+" (binary)"] = a[:]
		needles[in+" (text)"] = []byte(in)
	}
	// Positive control: once flushed, the addresses are in the SSTables.
	if err := s.db.Flush(); err != nil {
		t.Fatal(err)
	}
	before := findInDir(t, dir, needles)
	for _, in := range []string{expiredIn, boundaryIn} {
		found := false
		for _, h := range before {
			if strings.HasPrefix(h, in+" (binary) in ") && strings.Contains(h, ".sst@") {
				found = true
			}
		}
		if !found {
			t.Fatalf("positive control: %s not found in any SSTable before the sweep; hits %v; files %s", in, before, listDir(t, dir))
		}
	}

	if outbox {
		st, err := s.OutboxState()
		if err == nil {
			err = s.AckOutbox(st.Last)
		}
		if err != nil || st.Last < 200 {
			t.Fatalf("acknowledge the outbox (%+v): %v", st, err)
		}
	}
	c.Set(at(400, 0))
	st, err := s.Sweep(365 * day)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("sweep: %+v", st)
	if !st.Cutoff.Equal(at(35, 0)) || st.ExpiredRecords != 2+1+5*40 {
		t.Fatalf("sweep stats %+v: want cutoff %s and %d expired records", st, at(35, 0), 2+1+5*40)
	}

	check := func(when string) {
		t.Helper()
		if hits := findInDir(t, dir, needles); len(hits) > 0 {
			t.Fatalf("%s: expired addresses still on disk: %v\nfiles: %s", when, hits, listDir(t, dir))
		}
		for _, q := range []struct {
			port uint16
			at   time.Time
			want uint32 // 0: nothing
		}{
			{1500, at(0, 30*time.Minute), 0},
			{1500, at(2, 0), 0},
			{2500, at(35, -4*time.Hour), 0},
			{3500, at(0, 30*time.Minute), 3},
			{3500, at(400, 0), 3},
			{4500, at(31, 0), 4}, // before the cutoff, answered from the oldest partition
			{4500, at(380, 0), 4},
		} {
			got := lookup(t, s, pub, q.port, q.at, 0)
			if (q.want == 0 && len(got) != 0) || (q.want != 0 && (len(got) != 1 || got[0].Subscriber != q.want)) {
				t.Fatalf("%s: lookup port %d at %s: got %v, want subscriber %d", when, q.port, q.at, recStrings(got), q.want)
			}
		}
		for _, in := range []string{expiredIn, boundaryIn} {
			if h, err := s.History(netip.MustParseAddr(in), begin, at(400, 0)); err != nil || len(h) != 0 {
				t.Fatalf("%s: history of %s = %v, %v", when, in, recStrings(h), err)
			}
		}
		if h, _ := s.History(netip.MustParseAddr(openIn), begin, begin); len(h) != 1 {
			t.Fatalf("%s: history of the open record = %v", when, recStrings(h))
		}
	}
	check("after sweep")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = Open(dir, Options{Now: c.Now, Logger: quietLogger(), Outbox: outbox})
	if err != nil {
		t.Fatal(err)
	}
	check("after reopen")
	t.Logf("files after sweep: %s", listDir(t, dir))
}
