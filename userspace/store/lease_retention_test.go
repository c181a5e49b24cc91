package store

import (
	"fmt"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestLeaseRetentionOnDiskLeavesNoTrace is TestRetentionOnDiskLeavesNoTrace
// for DHCP leases: after a sweep with a 365-day retention, no file of the
// store holds an expired lease's inside address (binary or dotted), MAC
// (binary or text) or hostname, including a lease that was never released
// and ended at its expiry; leases still in retention keep answering.
func TestLeaseRetentionOnDiskLeavesNoTrace(t *testing.T) {
	dir := t.TempDir()
	day := 24 * time.Hour
	begin := time.Date(2025, 1, 1, 6, 0, 0, 0, time.UTC)
	c := newClock(begin)
	s, err := Open(dir, Options{Now: c.Now, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { s.Close() }()

	type device struct{ inside, mac, host string }
	var (
		released = device{"10.203.55.99", "de:ad:be:ef:55:99", "expired-host-5599"}  // days 0 to 2
		lapsed   = device{"10.204.66.11", "de:ad:be:ef:66:11", "lapsed-host-6611"}   // day 3, never released
		boundary = device{"10.205.77.22", "de:ad:be:ef:77:22", "boundary-host-7722"} // ends on the cutoff day, before the cutoff
		held     = device{"100.64.2.3", "02:00:00:00:02:03", "held-host"}            // infinite since day 0
		span     = device{"100.64.2.4", "02:00:00:00:02:04", "span-host"}            // day 30 to day 380
	)
	at := func(d int, h time.Duration) time.Time { return begin.Add(time.Duration(d)*day + h) }
	ev := func(kind LeaseEventKind, when time.Time, dev device, expires time.Time) LeaseEvent {
		return LeaseEvent{Kind: kind, Time: when, Inside: netip.MustParseAddr(dev.inside), MAC: mac(dev.mac),
			ClientID: append([]byte{1}, mac(dev.mac)...), Hostname: dev.host, Expires: expires, Source: "dnsmasq"}
	}
	step := func(now time.Time, evs ...LeaseEvent) {
		t.Helper()
		c.Set(now)
		mustApplyLeases(t, s, evs...)
	}
	// Other devices' leases around the expired ones, so that expired and
	// retained leases share SSTables.
	filler := func(d int) {
		t.Helper()
		var evs []LeaseEvent
		for i := range 40 {
			dev := device{fmt.Sprintf("100.64.3.%d", i+1), fmt.Sprintf("02:00:00:00:03:%02x", i+1), fmt.Sprintf("filler-%d", i)}
			start := at(d, time.Duration(i)*time.Minute)
			evs = append(evs, ev(LeaseAdd, start, dev, start.Add(4*time.Hour)), ev(LeaseRelease, start.Add(2*time.Hour), dev, time.Time{}))
		}
		step(at(d, 4*time.Hour), evs...)
	}

	step(at(0, 0), ev(LeaseAdd, at(0, 0), released, at(1, time.Hour)), ev(LeaseAdd, at(0, 0), held, time.Time{}))
	filler(0)
	step(at(1, 0), ev(LeaseRenew, at(1, 0), released, at(3, 0)))
	filler(1)
	step(at(2, 0), ev(LeaseRelease, at(2, 0), released, time.Time{}))
	step(at(3, 0), ev(LeaseAdd, at(3, 0), lapsed, at(3, time.Hour)))
	filler(3)
	filler(30)
	step(at(30, 0), ev(LeaseAdd, at(30, 0), span, at(31, 0)))
	for d := 31; d <= 380; d += 1 {
		// Renewed daily: the lease outlives the cutoff whole.
		step(at(d, -time.Hour), ev(LeaseRenew, at(d, -time.Hour), span, at(d+1, 0)))
	}
	filler(34)
	step(at(35, -5*time.Hour), ev(LeaseAdd, at(35, -5*time.Hour), boundary, at(35, 0)))
	step(at(35, -3*time.Hour), ev(LeaseRelease, at(35, -3*time.Hour), boundary, time.Time{})) // cutoff is at(35, 0)
	filler(35)
	filler(380)
	step(at(380, 0), ev(LeaseRelease, at(380, 0), span, time.Time{}))
	filler(399)

	needles := map[string][]byte{}
	for _, dev := range []device{released, lapsed, boundary} {
		a := netip.MustParseAddr(dev.inside).As4()
		needles[dev.inside+" (binary)"] = a[:]
		needles[dev.inside+" (text)"] = []byte(dev.inside)
		needles[dev.mac+" (binary)"] = mac(dev.mac)
		needles[dev.mac+" (text)"] = []byte(dev.mac)
		needles[dev.host] = []byte(dev.host)
	}
	if err := s.db.Flush(); err != nil {
		t.Fatal(err)
	}
	// Positive control: every binary needle is in some file, and each
	// device's address in an SSTable. The text forms are never written;
	// they are looked for in case a log or an error message carried them.
	before := strings.Join(findInDir(t, dir, needles), "\n")
	for name := range needles {
		if !strings.Contains(name, "(text)") && !strings.Contains(before, name+" in ") {
			t.Fatalf("positive control: %s in no file before the sweep; files %s", name, listDir(t, dir))
		}
	}
	for _, dev := range []device{released, lapsed, boundary} {
		if !regexp.MustCompile(regexp.QuoteMeta(dev.inside+" (binary) in ") + `\d+\.sst@`).MatchString(before) {
			t.Fatalf("positive control: %s in no SSTable before the sweep; files %s", dev.inside, listDir(t, dir))
		}
	}

	c.Set(at(400, 0))
	st, err := s.Sweep(365 * day)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("sweep: %+v", st)
	if !st.Cutoff.Equal(at(35, 0)) || st.EndedLeases != 1 || st.ExpiredLeases != 3+5*40 {
		t.Fatalf("sweep stats %+v: want cutoff %s, 1 lease ended at its expiry, %d expired leases", st, at(35, 0), 3+5*40)
	}

	check := func(when string) {
		t.Helper()
		if hits := findInDir(t, dir, needles); len(hits) > 0 {
			t.Fatalf("%s: expired leases still on disk: %v\nfiles: %s", when, hits, listDir(t, dir))
		}
		for _, dev := range []device{released, lapsed, boundary} {
			if got := leasesOf(t, s, dev.inside, begin, at(400, 0)); len(got) != 0 {
				t.Fatalf("%s: leases of %s: %v", when, dev.inside, got)
			}
			if got := leasesByMAC(t, s, dev.mac, begin, at(400, 0)); len(got) != 0 {
				t.Fatalf("%s: leases of %s: %v", when, dev.mac, got)
			}
		}
		for _, q := range []struct {
			dev        device
			at         time.Time
			start, end time.Time
			ended      bool
		}{
			{held, at(0, time.Hour), at(0, 0), time.Time{}, false},
			{held, at(399, 0), at(0, 0), time.Time{}, false},
			{span, at(31, 0), at(30, 0), at(380, 0), true}, // before the cutoff, answered from the oldest partition
			{span, at(200, 0), at(30, 0), at(380, 0), true},
		} {
			want := []string{leaseString(Lease{Inside: netip.MustParseAddr(q.dev.inside), MAC: mac(q.dev.mac),
				ClientID: append([]byte{1}, mac(q.dev.mac)...), Hostname: q.dev.host, Start: q.start, End: q.end, Ended: q.ended, Source: "dnsmasq"})}
			if d := diffLists(leasesOf(t, s, q.dev.inside, q.at, q.at), want); d != "" {
				t.Fatalf("%s: leases of %s at %s:\n%s", when, q.dev.inside, q.at, d)
			}
			if d := diffLists(leasesByMAC(t, s, q.dev.mac, q.at, q.at), want); d != "" {
				t.Fatalf("%s: leases of %s at %s:\n%s", when, q.dev.mac, q.at, d)
			}
		}
		if got := leasesOf(t, s, "100.64.3.1", at(35, 0), at(35, 3*time.Hour)); len(got) != 1 {
			t.Fatalf("%s: the filler lease ending after the cutoff: %v", when, got)
		}
	}
	check("after sweep")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = Open(dir, Options{Now: c.Now, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	check("after reopen")
	if st, _ := s.Stats(); st.LeaseOpen != 1 {
		t.Fatalf("LeaseOpen after the sweep = %d, want the infinite lease only", st.LeaseOpen)
	}
}
