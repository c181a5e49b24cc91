package store

import (
	"net"
	"net/netip"
	"testing"
	"time"
)

func TestCurrentLeases(t *testing.T) {
	now := time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC)
	clock := newClock(now)
	st, _ := openMem(t, clock)
	a, b, c := netip.MustParseAddr("100.64.0.10"), netip.MustParseAddr("100.64.0.11"), netip.MustParseAddr("100.64.0.12")
	macA, macB, macC := net.HardwareAddr{2, 0, 0, 0, 0, 0xa}, net.HardwareAddr{2, 0, 0, 0, 0, 0xb}, net.HardwareAddr{2, 0, 0, 0, 0, 0xc}
	if err := st.ApplyLeases([]LeaseEvent{
		{Kind: LeaseAdd, Time: now.Add(-time.Hour), Inside: a, MAC: macA, Expires: now.Add(time.Hour), Source: "dnsmasq"},
		{Kind: LeaseAdd, Time: now.Add(-time.Hour), Inside: b, MAC: macB, Expires: now.Add(-time.Minute), Source: "dnsmasq"},
		{Kind: LeaseAdd, Time: now.Add(-time.Hour), Inside: c, MAC: macC, Source: "kea"},
		{Kind: LeaseRelease, Time: now.Add(-time.Second), Inside: c, MAC: macC, Source: "kea"},
	}); err != nil {
		t.Fatal(err)
	}
	got, err := st.CurrentLeases()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Inside != a || got[0].MAC.String() != macA.String() {
		t.Fatalf("current leases %+v, want only %s (the lapsed and the released one are not held)", got, a)
	}
	clock.Set(now.Add(2 * time.Hour))
	if got, err := st.CurrentLeases(); err != nil || len(got) != 0 {
		t.Errorf("after every expiry: %+v %v", got, err)
	}
}
