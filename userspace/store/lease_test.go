package store

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

func mac(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

func leaseEv(kind LeaseEventKind, at time.Time, inside, hw string, expires time.Time) LeaseEvent {
	return LeaseEvent{Kind: kind, Time: at, Inside: netip.MustParseAddr(inside), MAC: mac(hw), Expires: expires, Source: "dnsmasq"}
}

func mustApplyLeases(t testing.TB, s *Store, evs ...LeaseEvent) {
	t.Helper()
	if err := s.ApplyLeases(evs); err != nil {
		t.Fatalf("ApplyLeases: %v", err)
	}
}

// leaseString is a canonical form of a lease for comparisons and messages.
func leaseString(l Lease) string {
	end := "-"
	if !l.End.IsZero() {
		end = l.End.UTC().Format(time.RFC3339Nano)
	}
	state := "held"
	if l.Ended {
		state = "ended"
	}
	return fmt.Sprintf("%s %s cid=%x host=%q [%s, %s] %s src=%s",
		l.Inside, l.MAC, l.ClientID, l.Hostname, l.Start.UTC().Format(time.RFC3339Nano), end, state, l.Source)
}

func leaseStrings(ls []Lease) []string {
	out := make([]string, len(ls))
	for i, l := range ls {
		out[i] = leaseString(l)
	}
	return out
}

func leasesOf(t testing.TB, s *Store, inside string, from, to time.Time) []string {
	t.Helper()
	got, err := s.LeasesOf(netip.MustParseAddr(inside), from, to)
	if err != nil {
		t.Fatalf("LeasesOf(%s, %s, %s): %v", inside, from, to, err)
	}
	return leaseStrings(got)
}

func leasesByMAC(t testing.TB, s *Store, hw string, from, to time.Time) []string {
	t.Helper()
	got, err := s.LeasesByMAC(mac(hw), from, to)
	if err != nil {
		t.Fatalf("LeasesByMAC(%s, %s, %s): %v", hw, from, to, err)
	}
	return leaseStrings(got)
}

func exportLeases(t testing.TB, s *Store) []string {
	t.Helper()
	var out []Lease
	err := s.ExportLeases(time.Unix(0, 0), time.Date(2200, 1, 1, 0, 0, 0, 0, time.UTC), func(l Lease) error {
		out = append(out, l)
		return nil
	})
	if err != nil {
		t.Fatalf("ExportLeases: %v", err)
	}
	return leaseStrings(out)
}

// want builds the expected leaseString of a dnsmasq lease without client
// id or hostname.
func wantLease(inside, hw string, start, end time.Time, ended bool) string {
	return leaseString(Lease{Inside: netip.MustParseAddr(inside), MAC: mac(hw), Start: start, End: end, Ended: ended, Source: "dnsmasq"})
}

const (
	macA = "aa:bb:cc:00:00:0a"
	macB = "aa:bb:cc:00:00:0b"
	macC = "aa:bb:cc:00:00:0c"
	ipA  = "100.64.7.1"
)

// TestLeaseSemantics: each case feeds events (one ApplyLeases each, so that
// they are ordered like a hook's deliveries) with the clock at now, and
// checks every lease of the address, then what each window names.
func TestLeaseSemantics(t *testing.T) {
	m := func(d time.Duration) time.Time { return t0.Add(d) }
	h := time.Hour
	none := time.Time{}
	type window struct {
		from, to time.Time
		want     []string
	}
	for _, tc := range []struct {
		name    string
		now     time.Time
		evs     []LeaseEvent
		want    []string // every lease of ipA, by Start
		windows []window
		ignored uint64 // Stats.UnmatchedLeaseReleases
	}{
		{
			name: "another device takes the address",
			now:  m(3 * h),
			evs: []LeaseEvent{
				leaseEv(LeaseAdd, m(0), ipA, macA, m(h)),
				leaseEv(LeaseAdd, m(30*time.Minute), ipA, macB, m(90*time.Minute)),
			},
			want: []string{
				wantLease(ipA, macA, m(0), m(30*time.Minute), true),
				wantLease(ipA, macB, m(30*time.Minute), m(90*time.Minute), true),
			},
			windows: []window{
				{m(0), m(29 * time.Minute), []string{wantLease(ipA, macA, m(0), m(30*time.Minute), true)}},
				{m(31 * time.Minute), m(89 * time.Minute), []string{wantLease(ipA, macB, m(30*time.Minute), m(90*time.Minute), true)}},
				{m(91 * time.Minute), m(2 * h), nil},
				{m(-h), m(-time.Second), nil},
			},
		},
		{
			name: "renew keeps start and moves expiry",
			now:  m(h),
			evs: []LeaseEvent{
				leaseEv(LeaseAdd, m(0), ipA, macA, m(h)),
				leaseEv(LeaseRenew, m(50*time.Minute), ipA, macA, m(2*h)),
			},
			want:    []string{wantLease(ipA, macA, m(0), m(2*h), false)},
			windows: []window{{m(90 * time.Minute), m(90 * time.Minute), []string{wantLease(ipA, macA, m(0), m(2*h), false)}}},
		},
		{
			name: "renew without a current lease opens one",
			now:  m(h),
			evs:  []LeaseEvent{leaseEv(LeaseRenew, m(10*time.Minute), ipA, macA, m(2*h))},
			want: []string{wantLease(ipA, macA, m(10*time.Minute), m(2*h), false)},
		},
		{
			name: "release ends",
			now:  m(h),
			evs: []LeaseEvent{
				leaseEv(LeaseAdd, m(0), ipA, macA, m(h)),
				leaseEv(LeaseRelease, m(20*time.Minute), ipA, macA, none),
			},
			want:    []string{wantLease(ipA, macA, m(0), m(20*time.Minute), true)},
			windows: []window{{m(21 * time.Minute), m(h), nil}},
		},
		{
			name: "release by another device is ignored",
			now:  m(10 * time.Minute),
			evs: []LeaseEvent{
				leaseEv(LeaseAdd, m(0), ipA, macA, m(h)),
				leaseEv(LeaseRelease, m(5*time.Minute), ipA, macB, none),
				leaseEv(LeaseRelease, m(6*time.Minute), "100.64.7.2", macA, none),
			},
			want:    []string{wantLease(ipA, macA, m(0), m(h), false)},
			ignored: 2,
		},
		{
			name: "expiry without renewal ends at expiry",
			now:  m(3 * h),
			evs:  []LeaseEvent{leaseEv(LeaseAdd, m(0), ipA, macA, m(h))},
			want: []string{wantLease(ipA, macA, m(0), m(h), true)},
			windows: []window{
				{m(h + time.Nanosecond), m(3 * h), nil},
				{m(h), m(h), []string{wantLease(ipA, macA, m(0), m(h), true)}},
			},
		},
		{
			name: "a grant after expiry ends the old lease at its expiry",
			now:  m(3 * h),
			evs: []LeaseEvent{
				leaseEv(LeaseAdd, m(0), ipA, macA, m(h)),
				leaseEv(LeaseAdd, m(2*h), ipA, macB, m(4*h)),
			},
			want: []string{
				wantLease(ipA, macA, m(0), m(h), true),
				wantLease(ipA, macB, m(2*h), m(4*h), false),
			},
		},
		{
			name: "renew after expiry opens a new lease",
			now:  m(3 * h),
			evs: []LeaseEvent{
				leaseEv(LeaseAdd, m(0), ipA, macA, m(h)),
				leaseEv(LeaseRenew, m(2*h), ipA, macA, m(4*h)),
			},
			want: []string{
				wantLease(ipA, macA, m(0), m(h), true),
				wantLease(ipA, macA, m(2*h), m(4*h), false),
			},
		},
		{
			name: "infinite lease",
			now:  m(24 * h),
			evs:  []LeaseEvent{leaseEv(LeaseAdd, m(0), ipA, macA, none)},
			want: []string{wantLease(ipA, macA, m(0), none, false)},
			windows: []window{
				{m(23 * h), m(23 * h), []string{wantLease(ipA, macA, m(0), none, false)}},
			},
		},
		{
			name: "the same MAC with another client id is another device",
			now:  m(h),
			evs: []LeaseEvent{
				func() LeaseEvent { e := leaseEv(LeaseAdd, m(0), ipA, macA, m(h)); e.ClientID = []byte{1, 2}; return e }(),
				func() LeaseEvent {
					e := leaseEv(LeaseAdd, m(time.Minute), ipA, macA, m(h))
					e.ClientID = []byte{1, 3}
					return e
				}(),
			},
			want: []string{
				strings.Replace(wantLease(ipA, macA, m(0), m(time.Minute), true), "cid=", "cid=0102", 1),
				strings.Replace(wantLease(ipA, macA, m(time.Minute), m(h), false), "cid=", "cid=0103", 1),
			},
		},
		{
			name: "late grant of another device is recorded up to the next grant",
			now:  m(3 * h),
			evs: []LeaseEvent{
				leaseEv(LeaseAdd, m(0), ipA, macA, m(4*h)),
				leaseEv(LeaseAdd, m(h), ipA, macB, m(5*h)),
				// queued by the hook and delivered after the grant to B
				leaseEv(LeaseAdd, m(30*time.Minute), ipA, macC, m(4*h)),
			},
			want: []string{
				wantLease(ipA, macA, m(0), m(h), true),
				wantLease(ipA, macC, m(30*time.Minute), m(h), true),
				wantLease(ipA, macB, m(h), m(5*h), false),
			},
			windows: []window{
				// both candidates over the overlap, one each outside it
				{m(45 * time.Minute), m(45 * time.Minute), []string{
					wantLease(ipA, macA, m(0), m(h), true),
					wantLease(ipA, macC, m(30*time.Minute), m(h), true),
				}},
				{m(10 * time.Minute), m(10 * time.Minute), []string{wantLease(ipA, macA, m(0), m(h), true)}},
				{m(2 * h), m(2 * h), []string{wantLease(ipA, macB, m(h), m(5*h), false)}},
			},
		},
		{
			name: "late grant of the holding device moves start back",
			now:  m(2 * h),
			evs: []LeaseEvent{
				leaseEv(LeaseRenew, m(h), ipA, macA, m(3*h)), // dnsmasq restarted and announced it
				leaseEv(LeaseAdd, m(10*time.Minute), ipA, macA, m(70*time.Minute)),
			},
			want: []string{wantLease(ipA, macA, m(10*time.Minute), m(3*h), false)},
		},
		{
			name: "late renew does not lower the expiry",
			now:  m(h),
			evs: []LeaseEvent{
				leaseEv(LeaseAdd, m(0), ipA, macA, m(h)),
				leaseEv(LeaseRenew, m(40*time.Minute), ipA, macA, m(2*h)),
				leaseEv(LeaseRenew, m(30*time.Minute), ipA, macA, m(90*time.Minute)),
			},
			want: []string{wantLease(ipA, macA, m(0), m(2*h), false)},
		},
		{
			name: "late release is ignored",
			now:  m(h),
			evs: []LeaseEvent{
				leaseEv(LeaseAdd, m(10*time.Minute), ipA, macA, m(2*h)),
				leaseEv(LeaseRelease, m(5*time.Minute), ipA, macA, none), // before the lease began
				leaseEv(LeaseRenew, m(40*time.Minute), ipA, macA, m(2*h)),
				leaseEv(LeaseRelease, m(30*time.Minute), ipA, macA, none), // before the renewal
			},
			want:    []string{wantLease(ipA, macA, m(10*time.Minute), m(2*h), false)},
			ignored: 2,
		},
		{
			name: "a lease over several days",
			now:  m(100 * h),
			evs: []LeaseEvent{
				leaseEv(LeaseAdd, m(0), ipA, macA, m(200*h)),
				leaseEv(LeaseRelease, m(80*h), ipA, macA, none),
			},
			want: []string{wantLease(ipA, macA, m(0), m(80*h), true)},
			windows: []window{
				{m(50 * h), m(51 * h), []string{wantLease(ipA, macA, m(0), m(80*h), true)}},
				{m(80 * h), m(90 * h), []string{wantLease(ipA, macA, m(0), m(80*h), true)}},
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newClock(tc.now)
			s, _ := openMem(t, c)
			for _, ev := range tc.evs {
				mustApplyLeases(t, s, ev)
			}
			check := func(when string) {
				t.Helper()
				if d := diffLists(leasesOf(t, s, ipA, m(-24*h), m(300*h)), tc.want); d != "" {
					t.Fatalf("%s: LeasesOf:\n%s", when, d)
				}
				if d := diffLists(exportLeases(t, s), tc.want); d != "" {
					t.Fatalf("%s: ExportLeases:\n%s", when, d)
				}
				for _, w := range tc.windows {
					if d := diffLists(leasesOf(t, s, ipA, w.from, w.to), w.want); d != "" {
						t.Fatalf("%s: LeasesOf [%s, %s]:\n%s", when, w.from, w.to, d)
					}
				}
				// The MAC index names the same leases as the address.
				for _, hw := range []string{macA, macB, macC} {
					var want []string
					for _, l := range tc.want {
						if strings.Contains(l, " "+hw+" ") {
							want = append(want, l)
						}
					}
					if d := diffLists(leasesByMAC(t, s, hw, m(-24*h), m(300*h)), want); d != "" {
						t.Fatalf("%s: LeasesByMAC(%s):\n%s", when, hw, d)
					}
				}
			}
			check("applied")
			if st, _ := s.Stats(); st.UnmatchedLeaseReleases != tc.ignored {
				t.Fatalf("UnmatchedLeaseReleases = %d, want %d", st.UnmatchedLeaseReleases, tc.ignored)
			}
			// Ending expired leases changes where they are stored, not
			// what a read answers.
			if _, err := s.EndExpiredLeases(); err != nil {
				t.Fatal(err)
			}
			check("after EndExpiredLeases")
		})
	}
}

// TestLeaseHostnameAndClientIDKept: a renewal that omits the hostname or
// client id keeps the ones already known, one that gives them replaces them.
func TestLeaseHostnameAndClientIDKept(t *testing.T) {
	c := newClock(t0.Add(time.Hour))
	s, _ := openMem(t, c)
	add := leaseEv(LeaseAdd, t0, ipA, macA, t0.Add(time.Hour))
	add.Hostname, add.ClientID = "laptop", []byte{1, 0xaa}
	mustApplyLeases(t, s, add)
	mustApplyLeases(t, s, leaseEv(LeaseRenew, t0.Add(time.Minute), ipA, macA, t0.Add(2*time.Hour)))
	got, err := s.LeasesOf(netip.MustParseAddr(ipA), t0, t0)
	if err != nil || len(got) != 1 || got[0].Hostname != "laptop" || string(got[0].ClientID) != "\x01\xaa" {
		t.Fatalf("after renew without hostname: %v, %v", leaseStrings(got), err)
	}
	renew := leaseEv(LeaseRenew, t0.Add(2*time.Minute), ipA, macA, t0.Add(2*time.Hour))
	renew.Hostname = "laptop-2"
	mustApplyLeases(t, s, renew)
	got, _ = s.LeasesOf(netip.MustParseAddr(ipA), t0, t0)
	if len(got) != 1 || got[0].Hostname != "laptop-2" || !got[0].Start.Equal(t0) {
		t.Fatalf("after renew with hostname: %v", leaseStrings(got))
	}
}

// TestLeasesByMACAcrossAddresses: a device that moves between addresses is
// found on each, and an address used by others is not attributed to it.
func TestLeasesByMACAcrossAddresses(t *testing.T) {
	day := 24 * time.Hour
	c := newClock(t0.Add(5 * day))
	s, _ := openMem(t, c)
	mustApplyLeases(t, s,
		leaseEv(LeaseAdd, t0, "100.64.0.1", macA, t0.Add(day)),
		leaseEv(LeaseAdd, t0.Add(time.Hour), "100.64.0.2", macB, t0.Add(3*day)),
		leaseEv(LeaseRelease, t0.Add(2*time.Hour), "100.64.0.1", macA, time.Time{}),
		leaseEv(LeaseAdd, t0.Add(3*time.Hour), "100.64.0.1", macB, t0.Add(day)),
		leaseEv(LeaseAdd, t0.Add(2*day), "100.64.0.3", macA, time.Time{}),
	)
	all := leasesByMAC(t, s, macA, t0.Add(-day), t0.Add(10*day))
	want := []string{
		wantLease("100.64.0.1", macA, t0, t0.Add(2*time.Hour), true),
		wantLease("100.64.0.3", macA, t0.Add(2*day), time.Time{}, false),
	}
	if d := diffLists(all, want); d != "" {
		t.Fatal(d)
	}
	if d := diffLists(leasesByMAC(t, s, macA, t0.Add(3*time.Hour), t0.Add(day)), nil); d != "" {
		t.Fatalf("window between the leases:\n%s", d)
	}
	if got := leasesByMAC(t, s, macB, t0, t0.Add(10*day)); len(got) != 2 {
		t.Fatalf("macB holds two addresses at once: %v", got)
	}
	// A longer hardware address whose first bytes are macA is another device.
	if got, err := s.LeasesByMAC(append(mac(macA), 0, 0), t0, t0.Add(10*day)); err != nil || len(got) != 0 {
		t.Fatalf("8-byte address with macA's prefix: %v, %v", leaseStrings(got), err)
	}
}

func TestApplyLeasesRejectsInvalid(t *testing.T) {
	c := newClock(t0)
	s, _ := openMem(t, c)
	good := leaseEv(LeaseAdd, t0, ipA, macA, t0.Add(time.Hour))
	for _, tc := range []struct {
		field string
		edit  func(e *LeaseEvent)
	}{
		{"kind", func(e *LeaseEvent) { e.Kind = 0 }},
		{"kind", func(e *LeaseEvent) { e.Kind = 4 }},
		{"time", func(e *LeaseEvent) { e.Time = time.Time{} }},
		{"time", func(e *LeaseEvent) { e.Time = t0.Add(25 * time.Hour); e.Expires = time.Time{} }},
		{"inside", func(e *LeaseEvent) { e.Inside = netip.MustParseAddr("2001:db8::1") }},
		{"inside", func(e *LeaseEvent) { e.Inside = netip.Addr{} }},
		{"mac", func(e *LeaseEvent) { e.MAC = nil }},
		{"mac", func(e *LeaseEvent) { e.MAC = make(net.HardwareAddr, 21) }},
		{"client_id", func(e *LeaseEvent) { e.ClientID = make([]byte, 256) }},
		{"hostname", func(e *LeaseEvent) { e.Hostname = strings.Repeat("h", 256) }},
		{"source", func(e *LeaseEvent) { e.Source = strings.Repeat("s", 33) }},
		{"expires", func(e *LeaseEvent) { e.Expires = t0.Add(-time.Second) }},
		{"expires", func(e *LeaseEvent) { e.Expires = time.Date(2300, 1, 1, 0, 0, 0, 0, time.UTC) }},
	} {
		bad := good
		tc.edit(&bad)
		err := s.ApplyLeases([]LeaseEvent{good, bad})
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "event 1") || !strings.Contains(err.Error(), tc.field+":") {
			t.Errorf("%s: ApplyLeases = %v, want ErrInvalid naming event 1 and %q", tc.field, err, tc.field)
		}
	}
	if got := exportLeases(t, s); len(got) != 0 {
		t.Fatalf("an invalid batch wrote %v", got)
	}
	// A release's expiry is not read, and limits are inclusive.
	rel := leaseEv(LeaseRelease, t0, ipA, macA, t0.Add(-time.Hour))
	full := good
	full.MAC, full.ClientID, full.Hostname, full.Source = make(net.HardwareAddr, 20), make([]byte, 255), strings.Repeat("h", 255), strings.Repeat("s", 32)
	full.Inside = netip.MustParseAddr("::ffff:100.64.7.9")
	mustApplyLeases(t, s, rel, full)
	if got := leasesOf(t, s, "100.64.7.9", t0, t0); len(got) != 1 {
		t.Fatalf("lease at the limits: %v", got)
	}
	for _, err := range []error{
		func() error { _, err := s.LeasesOf(netip.MustParseAddr(ipA), t0, t0.Add(-1)); return err }(),
		func() error { _, err := s.LeasesOf(netip.MustParseAddr("2001:db8::1"), t0, t0); return err }(),
		func() error { _, err := s.LeasesByMAC(nil, t0, t0); return err }(),
		func() error { _, err := s.LeasesByMAC(mac(macA), time.Time{}, t0); return err }(),
		s.ExportLeases(t0, t0.Add(-1), func(Lease) error { return nil }),
	} {
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("read with bad arguments = %v, want ErrInvalid", err)
		}
	}
}

// TestLeasesInOneBatch: the rules hold between events of one batch as
// between batches, and a batch ends and opens the same address's lease.
func TestLeasesInOneBatch(t *testing.T) {
	c := newClock(t0.Add(time.Hour))
	s, _ := openMem(t, c)
	mustApplyLeases(t, s,
		leaseEv(LeaseAdd, t0, ipA, macA, t0.Add(time.Hour)),
		leaseEv(LeaseRenew, t0.Add(time.Minute), ipA, macA, t0.Add(2*time.Hour)),
		leaseEv(LeaseAdd, t0.Add(2*time.Minute), ipA, macB, t0.Add(2*time.Hour)),
		leaseEv(LeaseRelease, t0.Add(3*time.Minute), ipA, macB, time.Time{}),
		leaseEv(LeaseAdd, t0.Add(4*time.Minute), ipA, macA, t0.Add(2*time.Hour)),
	)
	want := []string{
		wantLease(ipA, macA, t0, t0.Add(2*time.Minute), true),
		wantLease(ipA, macB, t0.Add(2*time.Minute), t0.Add(3*time.Minute), true),
		wantLease(ipA, macA, t0.Add(4*time.Minute), t0.Add(2*time.Hour), false),
	}
	if d := diffLists(exportLeases(t, s), want); d != "" {
		t.Fatal(d)
	}
	if st, _ := s.Stats(); st.LeaseOpen != 1 || st.LeaseBytes == 0 && st.DiskBytes == 0 {
		t.Fatalf("stats %+v: want one current lease", st)
	}
}

func TestLeaseReopenKeepsState(t *testing.T) {
	c := newClock(t0.Add(2 * 24 * time.Hour))
	fs := vfs.NewMem()
	s, err := Open("db", Options{FS: fs, Now: c.Now, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	mustApplyLeases(t, s,
		leaseEv(LeaseAdd, t0, ipA, macA, t0.Add(72*time.Hour)),
		leaseEv(LeaseAdd, t0, "100.64.7.2", macB, t0.Add(time.Hour)),
		leaseEv(LeaseRelease, t0.Add(time.Minute), "100.64.7.2", macB, time.Time{}),
	)
	before := exportLeases(t, s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.ApplyLeases([]LeaseEvent{leaseEv(LeaseRelease, t0, ipA, macA, time.Time{})}); !errors.Is(err, ErrClosed) {
		t.Fatalf("ApplyLeases after Close = %v", err)
	}
	s, err = Open("db", Options{FS: fs, Now: c.Now, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if d := diffLists(exportLeases(t, s), before); d != "" {
		t.Fatal(d)
	}
	if st, _ := s.Stats(); st.LeaseOpen != 1 {
		t.Fatalf("LeaseOpen after reopen = %d", st.LeaseOpen)
	}
	// The reloaded current lease is the one a renewal extends.
	mustApplyLeases(t, s, leaseEv(LeaseRenew, t0.Add(time.Hour), ipA, macA, t0.Add(96*time.Hour)))
	if d := diffLists(leasesOf(t, s, ipA, t0, t0), []string{wantLease(ipA, macA, t0, t0.Add(96*time.Hour), false)}); d != "" {
		t.Fatal(d)
	}
}

// TestLeaseCrashKeepsAcknowledgedBatches crashes an in-memory file system
// after acknowledged batches, dropping a random share of unsynced data: the
// clone must hold exactly what the store acknowledged.
func TestLeaseCrashKeepsAcknowledgedBatches(t *testing.T) {
	c := newClock(t0.Add(30 * 24 * time.Hour))
	fs := vfs.NewCrashableMem()
	s, err := Open("db", Options{FS: fs, Now: c.Now, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	g := newLeaseGen(7, t0)
	for i := range 40 {
		mustApplyLeases(t, s, g.events(20)...)
		if i%5 != 4 {
			continue
		}
		rng := rand.New(rand.NewPCG(7, uint64(i)))
		clone := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: rng.IntN(101), RNG: rng})
		s2, err := Open("db", Options{FS: clone, Now: c.Now, Logger: quietLogger()})
		if err != nil {
			t.Fatalf("reopen after crash: %v", err)
		}
		got := exportLeases(t, s2)
		s2.Close()
		if d := diffLists(got, exportLeases(t, s)); d != "" {
			t.Fatalf("after crash at batch %d:\n%s", i, d)
		}
	}
}

// leaseGen makes in-order lease traffic for a few addresses shared by a
// few devices over several days: grants, renewals, releases and lapses.
type leaseGen struct {
	rng   *rand.Rand
	clock time.Time
}

func newLeaseGen(seed uint64, begin time.Time) *leaseGen {
	return &leaseGen{rng: rand.New(rand.NewPCG(seed, 0x1ea5e)), clock: begin}
}

func (g *leaseGen) event() LeaseEvent {
	g.clock = g.clock.Add(time.Duration(g.rng.Int64N(int64(40 * time.Minute))))
	ev := LeaseEvent{
		Kind:   LeaseEventKind(1 + g.rng.IntN(3)),
		Time:   g.clock,
		Inside: netip.AddrFrom4([4]byte{100, 64, 9, byte(1 + g.rng.IntN(4))}),
		MAC:    net.HardwareAddr{0x02, 0, 0, 0, 0, byte(1 + g.rng.IntN(5))},
		Source: "kea",
	}
	if ev.Kind != LeaseRelease && g.rng.IntN(8) != 0 {
		ev.Expires = g.clock.Add(time.Duration(1+g.rng.IntN(12)) * 30 * time.Minute)
	}
	if g.rng.IntN(3) == 0 {
		ev.Hostname = fmt.Sprintf("dev-%d", ev.MAC[5])
	}
	return ev
}

func (g *leaseGen) events(n int) []LeaseEvent {
	out := make([]LeaseEvent, n)
	for i := range out {
		out[i] = g.event()
	}
	return out
}

// leaseModel is the naive reference for in-order events: a list of every
// lease and the index of each address's current one.
type leaseModel struct {
	leases  []Lease
	current map[netip.Addr]int
	expires map[netip.Addr]time.Time
}

func (m *leaseModel) apply(ev LeaseEvent) {
	if m.current == nil {
		m.current, m.expires = map[netip.Addr]int{}, map[netip.Addr]time.Time{}
	}
	in := ev.Inside
	i, held := m.current[in]
	end := func(at time.Time) {
		m.leases[i].End, m.leases[i].Ended = at, true
		delete(m.current, in)
		held = false
	}
	if held && !m.expires[in].IsZero() && m.expires[in].Before(ev.Time) {
		end(m.expires[in])
	}
	same := held && string(m.leases[i].MAC) == string(ev.MAC)
	switch {
	case ev.Kind == LeaseRelease:
		if same {
			end(ev.Time)
		}
		return
	case same:
		m.leases[i].End, m.expires[in] = ev.Expires, ev.Expires
		if ev.Hostname != "" {
			m.leases[i].Hostname = ev.Hostname
		}
		return
	case held:
		end(ev.Time)
	}
	m.leases = append(m.leases, Lease{Inside: in, MAC: ev.MAC, Hostname: ev.Hostname, Start: ev.Time, End: ev.Expires, Source: ev.Source})
	m.current[in], m.expires[in] = len(m.leases)-1, ev.Expires
}

// at returns the leases as a read at now sees them.
func (m *leaseModel) at(now time.Time) []Lease {
	out := slices.Clone(m.leases)
	for i := range out {
		if !out[i].Ended && !out[i].End.IsZero() && out[i].End.Before(now) {
			out[i].Ended = true
		}
	}
	slices.SortFunc(out, compareLeases)
	return out
}

func meetsWindow(l Lease, from, to time.Time) bool {
	return !l.Start.After(to) && (l.End.IsZero() || !l.End.Before(from))
}

// TestLeasePropertyAgainstModel drives random in-order traffic through the
// store in random batches with reopens and checks LeasesOf, LeasesByMAC and
// ExportLeases over random windows against the model.
func TestLeasePropertyAgainstModel(t *testing.T) {
	for _, seed := range []uint64{1, 2, 3, 4} {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			begin := time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC)
			g := newLeaseGen(seed, begin)
			c := newClock(begin)
			fs := vfs.NewMem()
			open := func() *Store {
				s, err := Open("db", Options{FS: fs, Now: c.Now, Logger: quietLogger()})
				if err != nil {
					t.Fatal(err)
				}
				return s
			}
			s := open()
			defer func() { s.Close() }()
			var m leaseModel
			rng := rand.New(rand.NewPCG(seed, 99))
			for round := range 60 {
				evs := g.events(1 + rng.IntN(8))
				c.Set(g.clock)
				mustApplyLeases(t, s, evs...)
				for _, ev := range evs {
					m.apply(ev)
				}
				// Events stay in order with the store's clock: the model
				// knows nothing of late events.
				g.clock = c.Advance(time.Duration(rng.Int64N(int64(2 * time.Hour))))
				switch rng.IntN(10) {
				case 0:
					s.Close()
					s = open()
				case 1:
					if _, err := s.EndExpiredLeases(); err != nil {
						t.Fatal(err)
					}
				}
				all := m.at(c.Now())
				if d := diffLists(exportLeases(t, s), leaseStrings(all)); d != "" {
					t.Fatalf("round %d: ExportLeases:\n%s", round, d)
				}
				for range 5 {
					from := begin.Add(time.Duration(rng.Int64N(int64(c.Now().Sub(begin)) + 1)))
					to := from.Add(time.Duration(rng.Int64N(int64(6 * time.Hour))))
					in := netip.AddrFrom4([4]byte{100, 64, 9, byte(1 + rng.IntN(4))})
					hw := net.HardwareAddr{0x02, 0, 0, 0, 0, byte(1 + rng.IntN(5))}
					var wantIn, wantMAC []Lease
					for _, l := range all {
						if meetsWindow(l, from, to) && l.Inside == in {
							wantIn = append(wantIn, l)
						}
						if meetsWindow(l, from, to) && string(l.MAC) == string(hw) {
							wantMAC = append(wantMAC, l)
						}
					}
					if d := diffLists(leasesOf(t, s, in.String(), from, to), leaseStrings(wantIn)); d != "" {
						t.Fatalf("round %d: LeasesOf(%s, [%s, %s]):\n%s", round, in, from, to, d)
					}
					if d := diffLists(leasesByMAC(t, s, hw.String(), from, to), leaseStrings(wantMAC)); d != "" {
						t.Fatalf("round %d: LeasesByMAC(%s, [%s, %s]):\n%s", round, hw, from, to, d)
					}
				}
			}
			if len(m.leases) < 30 {
				t.Fatalf("only %d leases generated", len(m.leases))
			}
		})
	}
}
