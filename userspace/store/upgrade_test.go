package store

import (
	"encoding/binary"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/blocknat/blocknat/test/testutil"
)

// The upgrade fixtures: testdata/layout1 is a store directory written by
// the code before the single-copy layout (commit 66d1c6a, layout 1: a
// closed record in r and again in s), by writeUpgradeWorkload below, and
// testdata/layout1.answers is what that code answered to upgradeQueries on
// it. Both were made with
//
//	BLOCKNAT_WRITE_UPGRADE_FIXTURE=$PWD/testdata go test -run TestWriteUpgradeFixture ./userspace/store/
//
// run on that commit with this file added to it. testdata/layout2 was
// written the same way by the last code of layout 2 (commit 938adcf,
// nanosecond times), into a directory named layout2; that code's answers
// were byte for byte layout1.answers, so that file serves both.
//
// Layout 3 keeps times in timeSteps, rounded outward, so its answers are
// not those of the older code: each is the older answer with every time
// rounded, plus the records that the rounding brings within a step of the
// question (wantRoundedAnswers). An upgraded store must answer exactly as
// the same workload written by this code does (freshUpgradeAnswers).

var upgradeBegin = time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)

// upgradeNow is the clock of the fixture once written, and of every read of it.
var upgradeNow = upgradeBegin.Add(12*24*time.Hour + 5*time.Hour)

// writeUpgradeWorkload writes twelve days of records (one-day and
// multi-day, released in the batch of their activation and in later
// batches, recovered and confirmed, open at the end), three epochs, a few
// leases and a retention sweep that leaves day 3 the oldest retained.
func writeUpgradeWorkload(t testing.TB, dir string) {
	t.Helper()
	c := newClock(upgradeBegin)
	s, err := Open(dir, Options{Now: c.Now, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	day := 24 * time.Hour
	at := func(d int, off time.Duration) time.Time { return upgradeBegin.Add(time.Duration(d)*day + off) }
	pubs := []string{"198.51.100.7", "198.51.100.8"}
	for e := range 3 {
		c.Set(at(4*e, 0))
		if err := s.PutEpoch(Epoch{ID: uint32(e + 1), Start: at(4*e, 0), PortLo: 1024, PortHi: 65535, BlockSize: 1008, Ratio: 64}); err != nil {
			t.Fatal(err)
		}
	}
	for d := range 12 {
		var ops []Op
		for i := range 12 {
			pub := pubs[i%2]
			lo := uint16(1024 + (i/2)*1008)
			in := fmt.Sprintf("100.64.0.%d", i+1)
			sub := uint32(i + 1)
			epoch := uint32(d/4 + 1)
			for k := range 3 {
				start := at(d, time.Duration(k)*7*time.Hour+time.Duration(i)*time.Minute+time.Duration(d*1000+i*10+k)*time.Nanosecond+123456789)
				end := start.Add(time.Duration(k+1)*time.Hour + time.Duration(i)*time.Second + 987654321)
				ops = append(ops, activate(sub, in, pub, lo, lo+1007, start, epoch), release(sub, pub, lo, end))
			}
		}
		c.Set(at(d, 23*time.Hour))
		mustApply(t, s, ops...)
	}
	// Multi-day records, one released in a later batch, one still open,
	// one recovered by the reconciler and confirmed by the ring buffer.
	c.Set(at(2, 0))
	recovered := activate(20, "100.64.1.20", pubs[0], 50000, 51007, at(2, 3*time.Hour+17), 1)
	recovered.Record.Flags = FlagRecovered
	mustApply(t, s,
		activate(21, "100.64.1.21", pubs[1], 50000, 51007, at(2, 90*time.Minute+3), 1),
		recovered,
		activate(22, "100.64.1.22", pubs[0], 60000, 61007, at(1, 22*time.Hour+11), 1))
	c.Set(at(6, 0))
	mustApply(t, s,
		release(21, pubs[1], 50000, at(6, 5*time.Hour+999)),
		activate(20, "100.64.1.20", pubs[0], 50000, 51007, at(2, 3*time.Hour+17), 1))
	c.Set(at(9, 0))
	mustApply(t, s, release(20, pubs[0], 50000, at(8, 20*time.Hour+5)))
	c.Set(at(10, 0))
	mustApply(t, s, activate(23, "100.64.1.23", pubs[1], 60000, 61007, at(9, 10*time.Hour+7), 2))
	c.Set(at(11, 0))
	if err := s.ApplyLeases([]LeaseEvent{{
		Kind: LeaseAdd, Inside: netip.MustParseAddr("100.64.0.1"), MAC: []byte{2, 0, 0, 0, 0, 1},
		Time: at(10, time.Hour), Expires: at(10, 13*time.Hour), Source: "dnsmasq",
	}}); err != nil {
		t.Fatal(err)
	}
	c.Set(upgradeNow)
	if _, err := s.Sweep(9*day + 5*time.Hour + 30*time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}

// upgradeQueries asks s every kind of read a record answers: an export,
// the open records, histories, lookups with and without tolerance,
// nearest records, epochs and the counts of Stats that do not depend on
// the layout. One line per answer.
func upgradeQueries(t testing.TB, s *Store) []string {
	t.Helper()
	var out []string
	add := func(what string, rs []Record, err error) {
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		out = append(out, what+":")
		for _, r := range rs {
			out = append(out, "  "+recString(r))
		}
	}
	day := 24 * time.Hour
	at := func(d int, off time.Duration) time.Time { return upgradeBegin.Add(time.Duration(d)*day + off) }
	var all []Record
	err := s.Export(upgradeBegin, upgradeNow, func(r Record) error { all = append(all, r); return nil })
	add("export", all, err)
	var part []Record
	err = s.Export(at(5, 6*time.Hour), at(7, 2*time.Hour), func(r Record) error { part = append(part, r); return nil })
	add("export days 5-7", part, err)
	open, err := s.OpenRecords()
	add("open", open, err)
	for _, in := range []string{"100.64.0.1", "100.64.0.6", "100.64.0.12", "100.64.1.20", "100.64.1.21", "100.64.1.22", "100.64.1.23"} {
		h, err := s.History(netip.MustParseAddr(in), upgradeBegin, upgradeNow)
		add("history "+in, h, err)
		h, err = s.History(netip.MustParseAddr(in), at(7, 7*time.Hour), at(8, 8*time.Hour))
		add("history days 7-8 "+in, h, err)
	}
	for _, pub := range []string{"198.51.100.7", "198.51.100.8"} {
		for _, port := range []uint16{1024, 2031, 3000, 50500, 60000} {
			for d := 0; d < 13; d += 2 {
				for _, off := range []time.Duration{0, 7*time.Hour + 5*time.Minute + 123456789, 15 * time.Hour} {
					q := at(d, off)
					got, err := s.Lookup(netip.MustParseAddr(pub), port, q, 0)
					add(fmt.Sprintf("lookup %s:%d at %s", pub, port, q.Format(time.RFC3339Nano)), got, err)
					got, err = s.Lookup(netip.MustParseAddr(pub), port, q, 90*time.Minute)
					add(fmt.Sprintf("lookup %s:%d at %s ±90m", pub, port, q.Format(time.RFC3339Nano)), got, err)
				}
			}
			got, err := s.LookupInterval(netip.MustParseAddr(pub), port, at(6, 0), at(8, 0))
			add(fmt.Sprintf("lookup interval %s:%d days 6-8", pub, port), got, err)
		}
	}
	for _, q := range []struct {
		sub  uint32
		pub  string
		lo   uint16
		d    int
		span time.Duration
	}{{1, "198.51.100.7", 1024, 5, time.Hour}, {2, "198.51.100.8", 1024, 8, 10 * time.Hour}, {12, "198.51.100.8", 6064, 3, time.Minute},
		{21, "198.51.100.8", 50000, 4, time.Hour}, {21, "198.51.100.8", 50000, 7, time.Hour}, {22, "198.51.100.7", 60000, 2, time.Hour},
		{23, "198.51.100.8", 60000, 8, time.Hour}, {20, "198.51.100.7", 50000, 10, time.Hour}} {
		before, after, err := s.NearestRecords(q.sub, netip.MustParseAddr(q.pub), q.lo, at(q.d, 12*time.Hour), at(q.d, 12*time.Hour+q.span))
		var rs []Record
		for _, r := range []*Record{before, after} {
			if r == nil {
				rs = append(rs, Record{})
			} else {
				rs = append(rs, *r)
			}
		}
		add(fmt.Sprintf("nearest %d %s:%d day %d", q.sub, q.pub, q.lo, q.d), rs, err)
	}
	eps, err := s.Epochs()
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range eps {
		out = append(out, fmt.Sprintf("epoch %d from %s", e.ID, e.Start.Format(time.RFC3339Nano)))
	}
	st, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	out = append(out, fmt.Sprintf("stats open=%d epochs=%d partitions=%d oldest-partition=%s oldest-retained=%s lease-open=%d",
		st.OpenRecords, st.Epochs, st.Partitions, st.OldestPartition.Format(time.RFC3339), st.OldestRetained.Format(time.RFC3339), st.LeaseOpen))
	return out
}

// TestWriteUpgradeFixture writes the fixture into the directory the
// environment names; see the top of this file.
func TestWriteUpgradeFixture(t *testing.T) {
	dst := os.Getenv("BLOCKNAT_WRITE_UPGRADE_FIXTURE")
	if dst == "" {
		t.Skip("BLOCKNAT_WRITE_UPGRADE_FIXTURE not set")
	}
	dir := filepath.Join(dst, "layout1")
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	writeUpgradeWorkload(t, dir)
	s, err := Open(dir, Options{Now: func() time.Time { return upgradeNow }, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	answers := upgradeQueries(t, s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dst, "layout1.answers"), []byte(strings.Join(answers, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

// openUpgradeCopy copies the fixture of a layout ("layout1", "layout2")
// to a fresh directory, so that the upgrade never writes to testdata.
func openUpgradeCopy(t *testing.T, layout string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.CopyFS(dir, os.DirFS(filepath.Join("testdata", layout))); err != nil {
		t.Fatal(err)
	}
	return dir
}

// olderUpgradeAnswers are the answers of the layout 1 and 2 code to
// upgradeQueries on the fixture, with nanosecond times.
func olderUpgradeAnswers(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "layout1.answers"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
}

// freshUpgradeAnswers writes the fixture's workload with this code and
// returns its answers.
func freshUpgradeAnswers(t *testing.T) []string {
	t.Helper()
	dir := t.TempDir()
	writeUpgradeWorkload(t, dir)
	s, err := Open(dir, Options{Now: func() time.Time { return upgradeNow }, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	return upgradeQueries(t, s)
}

// answerGroup is one answer of upgradeQueries: its heading and record lines.
type answerGroup struct {
	heading string
	lines   []string
}

func answerGroups(lines []string) []answerGroup {
	var out []answerGroup
	for _, l := range lines {
		if strings.HasPrefix(l, "  ") && len(out) > 0 {
			out[len(out)-1].lines = append(out[len(out)-1].lines, l)
			continue
		}
		out = append(out, answerGroup{heading: l})
	}
	return out
}

// answerInterval returns the interval of a record line, and where it is.
func answerInterval(t *testing.T, line string) (start, end time.Time, open bool, i, j int) {
	t.Helper()
	i, j = strings.Index(line, " ["), strings.Index(line, "] ")
	if i < 0 || j < i {
		t.Fatalf("no interval in %q", line)
	}
	a, b, ok := strings.Cut(line[i+2:j], ", ")
	if !ok {
		t.Fatalf("bad interval in %q", line)
	}
	start, err := time.Parse(time.RFC3339Nano, a)
	if err != nil {
		t.Fatalf("%q: %v", line, err)
	}
	if b == "open" {
		return start, time.Time{}, true, i, j
	}
	if end, err = time.Parse(time.RFC3339Nano, b); err != nil {
		t.Fatalf("%q: %v", line, err)
	}
	return start, end, false, i, j
}

// roundedLine is a record line of the older code with its interval
// rounded outward to timeStep, as layout 3 stores it.
func roundedLine(t *testing.T, line string) string {
	t.Helper()
	start, end, open, i, j := answerInterval(t, line)
	e := "open"
	if !open {
		e = roundUp(end).Format(time.RFC3339Nano)
	}
	return line[:i+2] + start.Truncate(time.Duration(timeStep)).Format(time.RFC3339Nano) + ", " + e + line[j:]
}

// wantRoundedAnswers checks got, this code's answers on the fixture's
// workload, against the older code's: each answer holds every record of
// the older one, rounded outward, in the same order, and nothing else
// but records of lookups whose exact interval missed the question by
// less than a step. Those are returned, as lines.
func wantRoundedAnswers(t *testing.T, got []string) (gained []string) {
	t.Helper()
	old := answerGroups(olderUpgradeAnswers(t))
	now := answerGroups(got)
	if len(old) != len(now) {
		t.Fatalf("%d answers, the older code gave %d", len(now), len(old))
	}
	// The exact intervals, by the record line without them.
	exact := make(map[string]string)
	for _, l := range old[0].lines { // the export of everything
		exact[roundedLine(t, l)] = l
	}
	for k, g := range now {
		o := old[k]
		if g.heading != o.heading {
			t.Fatalf("answer %d is %q, the older code's %q", k, g.heading, o.heading)
		}
		want := make([]string, len(o.lines))
		for i, l := range o.lines {
			if strings.Contains(l, "invalid IP") { // no record
				want[i] = l
			} else {
				want[i] = roundedLine(t, l)
			}
		}
		if !strings.HasPrefix(g.heading, "lookup ") || strings.HasPrefix(g.heading, "lookup interval ") {
			if d := diffLists(g.lines, want); d != "" {
				t.Fatalf("%s\n%s", g.heading, d)
			}
			continue
		}
		// "lookup <ip:port> at <T>" with an optional " ±90m".
		at := strings.TrimSuffix(strings.TrimSuffix(g.heading, ":"), " ±90m")
		q, err := time.Parse(time.RFC3339Nano, at[strings.LastIndex(at, " ")+1:])
		if err != nil {
			t.Fatalf("%q: %v", g.heading, err)
		}
		tol := time.Duration(0)
		if strings.HasSuffix(g.heading, " ±90m:") {
			tol = 90 * time.Minute
		}
		lo, hi := q.Add(-tol), q.Add(tol)
		rest := g.lines
		for _, w := range want {
			i := slices.Index(rest, w)
			if i < 0 {
				t.Fatalf("%s lost %s:\n%s", g.heading, w, diffLists(g.lines, want))
			}
			for _, extra := range rest[:i] {
				gained = append(gained, checkGained(t, g.heading, extra, exact, lo, hi))
			}
			rest = rest[i+1:]
		}
		for _, extra := range rest {
			gained = append(gained, checkGained(t, g.heading, extra, exact, lo, hi))
		}
	}
	return gained
}

// checkGained checks that a record a lookup of [lo, hi] gained by rounding
// missed that window by less than a step in its exact interval.
func checkGained(t *testing.T, heading, line string, exact map[string]string, lo, hi time.Time) string {
	t.Helper()
	x, ok := exact[line]
	if !ok {
		t.Fatalf("%s gained %s, which the older code never stored", heading, line)
	}
	start, end, open, _, _ := answerInterval(t, x)
	step := time.Duration(timeStep)
	switch {
	case !start.After(hi) && (open || !end.Before(lo)):
		t.Fatalf("%s gained %s, which the older code should have answered", heading, x)
	case start.After(hi) && start.Sub(hi) >= step, !open && end.Before(lo) && lo.Sub(end) >= step:
		t.Fatalf("%s gained %s, more than a step from the question", heading, x)
	}
	return heading + " " + x
}

// TestUpgradeWorkloadRoundsOutward writes the fixture's workload with this
// code: every answer is the older code's, rounded outward, and what it
// gains was within a step of the question.
func TestUpgradeWorkloadRoundsOutward(t *testing.T) {
	gained := wantRoundedAnswers(t, freshUpgradeAnswers(t))
	if len(gained) == 0 {
		t.Fatal("no lookup gained a record: the fixture no longer asks within a step of a record's ends")
	}
	t.Logf("%d lookups gained a record within a step:\n%s", len(gained), strings.Join(gained, "\n"))
}

// TestUpgrade opens stores written by the layout 1 and layout 2 code:
// Open upgrades each, every answer is the one this code gives to the same
// workload, and a second Open finds nothing to upgrade.
func TestUpgrade(t *testing.T) {
	want := freshUpgradeAnswers(t)
	for _, layout := range []string{"layout1", "layout2"} {
		t.Run(layout, func(t *testing.T) {
			dir := openUpgradeCopy(t, layout)
			var logs testutil.Buffer
			log := slog.New(slog.NewTextHandler(&logs, nil))
			for round := 1; round <= 2; round++ {
				s, err := Open(dir, Options{Now: func() time.Time { return upgradeNow }, Logger: log})
				if err != nil {
					t.Fatal(err)
				}
				if d := diffLists(upgradeQueries(t, s), want); d != "" {
					t.Fatalf("open %d: answers differ from this code's:\n%s", round, d)
				}
				if err := s.Close(); err != nil {
					t.Fatal(err)
				}
				if n := strings.Count(logs.String(), "msg=\"store layout upgraded\""); n != 1 {
					t.Fatalf("open %d: %d upgrades logged, want 1:\n%s", round, n, logs.String())
				}
			}
			from := map[string]string{"layout1": "from_layout=1", "layout2": "from_layout=2"}[layout]
			if !strings.Contains(logs.String(), from) {
				t.Fatalf("upgrade log does not say %s:\n%s", from, logs.String())
			}
		})
	}
}

// TestUpgradeResumesAfterCrash upgrades one day partition of each older
// fixture, as an upgrade interrupted after its first batch would leave it,
// and opens the store: the rest is upgraded and every answer is this
// code's.
func TestUpgradeResumesAfterCrash(t *testing.T) {
	want := freshUpgradeAnswers(t)
	for _, layout := range []string{"layout1", "layout2"} {
		t.Run(layout, func(t *testing.T) {
			dir := openUpgradeCopy(t, layout)
			db, err := pebble.Open(dir, &pebble.Options{Logger: pebbleLogger{log: quietLogger()}})
			if err != nil {
				t.Fatal(err)
			}
			half := &Store{db: db, log: quietLogger()}
			days, err := half.upgradeDays()
			if err != nil || len(days) < 2 {
				t.Fatalf("partitions to upgrade %v, %v: want at least 2", days, err)
			}
			if _, err := half.upgradeDay(days[1]); err != nil {
				t.Fatal(err)
			}
			if left, err := half.upgradeDays(); err != nil || len(left) != len(days)-1 {
				t.Fatalf("after upgrading day %d: partitions to upgrade %v, %v", days[1], left, err)
			}
			if err := db.Close(); err != nil {
				t.Fatal(err)
			}
			s, err := Open(dir, Options{Now: func() time.Time { return upgradeNow }, Logger: quietLogger()})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if d := diffLists(upgradeQueries(t, s), want); d != "" {
				t.Fatalf("answers differ from this code's:\n%s", d)
			}
		})
	}
}

// TestUpgradeMergesRecordsRoundedTogether writes, as layout 1 and layout 2
// did, two records of one subscriber and block that began within one
// millisecond, and a record of another subscriber of the same block that
// began in the same millisecond. The upgrade keeps one record for the
// first subscriber, holding both of its intervals and both records' flags,
// and the other subscriber's record apart.
func TestUpgradeMergesRecordsRoundedTogether(t *testing.T) {
	day := upgradeBegin
	at := func(off time.Duration) time.Time { return day.Add(10*time.Hour + off) }
	pub, lo, hi := [4]byte{198, 51, 100, 7}, uint16(1024), uint16(2031)
	type rec struct {
		sub        uint32
		inside     [4]byte
		start, end time.Time
		flags      Flags
	}
	recs := []rec{
		{7, [4]byte{100, 64, 0, 7}, at(100), at(300 * time.Microsecond), FlagRecovered},
		{8, [4]byte{100, 64, 0, 8}, at(200), at(time.Minute), 0},
		{7, [4]byte{100, 64, 0, 7}, at(600*time.Microsecond + 1), at(5*time.Second + 1), 0},
	}
	for _, layout := range []uint32{1, 2} {
		t.Run(fmt.Sprintf("layout%d", layout), func(t *testing.T) {
			dir := t.TempDir()
			db, err := pebble.Open(dir, &pebble.Options{Logger: pebbleLogger{log: quietLogger()}})
			if err != nil {
				t.Fatal(err)
			}
			d := dayOf(day.UnixNano())
			for _, r := range recs {
				k := append(dayPrefix(prefixRecord, d), pub[:]...)
				k = binary.BigEndian.AppendUint16(k, lo)
				v := []byte{byte(layout)}
				v = append(v, r.inside[:]...)
				v = binary.BigEndian.AppendUint16(v, hi)
				dur := uint64(r.end.Sub(r.start))
				if layout == 1 { // <start> <subscriber>; End-Start, epoch, flags
					k = binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint64(k, uint64(r.start.UnixNano())), r.sub)
					v = binary.AppendUvarint(binary.AppendUvarint(binary.AppendUvarint(v, dur), 1), uint64(r.flags))
				} else { // <subscriber> <start>; epoch, flags, End-Start
					k = binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint32(k, r.sub), uint64(r.start.UnixNano()))
					v = binary.AppendUvarint(binary.AppendUvarint(binary.AppendUvarint(v, 1), uint64(r.flags)), dur)
				}
				if err := db.Set(k, v, nil); err != nil {
					t.Fatal(err)
				}
				if layout == 1 {
					s := append(dayPrefix(prefixInside, d), r.inside[:]...)
					s = binary.BigEndian.AppendUint64(s, uint64(r.start.UnixNano()))
					s = append(s, pub[:]...)
					s = binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint16(s, lo), r.sub)
					if err := db.Set(s, nil, nil); err != nil {
						t.Fatal(err)
					}
				} else {
					if err := db.Set(insideKey(d, r.inside, insideEntry{public: pub, portLo: lo, sub: r.sub}), nil, nil); err != nil {
						t.Fatal(err)
					}
				}
			}
			if err := db.Set(metaWidth, binary.BigEndian.AppendUint32(nil, 1008), nil); err != nil {
				t.Fatal(err)
			}
			if layout == 2 {
				if err := db.Set(metaLayout, binary.BigEndian.AppendUint32(nil, 2), nil); err != nil {
					t.Fatal(err)
				}
			}
			if err := db.Close(); err != nil {
				t.Fatal(err)
			}
			s, err := Open(dir, Options{Now: func() time.Time { return day.Add(48 * time.Hour) }, Logger: quietLogger()})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			got := recStrings(exportAll(t, s))
			ms := time.Millisecond
			want := []string{
				recString(Record{Subscriber: 7, Inside: netip.MustParseAddr("100.64.0.7"), Public: netip.AddrFrom4(pub), PortLo: lo, PortHi: hi,
					Start: at(0), End: at(5*time.Second + ms), Epoch: 1, Flags: FlagRecovered}),
				recString(Record{Subscriber: 8, Inside: netip.MustParseAddr("100.64.0.8"), Public: netip.AddrFrom4(pub), PortLo: lo, PortHi: hi,
					Start: at(0), End: at(time.Minute), Epoch: 1}),
			}
			if d := diffLists(got, want); d != "" {
				t.Fatalf("after the upgrade:\n%s", d)
			}
			h, err := s.History(netip.MustParseAddr("100.64.0.7"), at(time.Second), at(time.Second))
			if err != nil || len(h) != 1 || h[0].Subscriber != 7 {
				t.Fatalf("History of subscriber 7 inside its second interval = %v, %v", recStrings(h), err)
			}
		})
	}
}
