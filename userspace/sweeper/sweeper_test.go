package sweeper

import (
	"context"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/blocknat/blocknat/loader"
	"github.com/blocknat/blocknat/test/testutil"
	"github.com/blocknat/blocknat/userspace/mapping"
	"github.com/blocknat/blocknat/userspace/store"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("BLOCKNAT_REQUIRE_PRIVILEGED") == "1" {
			t.Fatal("needs root for kernel maps")
		}
		t.Skip("needs root for kernel maps")
	}
}

type recordedOps struct {
	mu  sync.Mutex
	ops []store.Op
}

func (r *recordedOps) Submit(_ context.Context, ops []store.Op) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ops = append(r.ops, ops...)
	return nil
}

// fixture loads the real maps (nothing attached) for 100.64.0.0/24.
func fixture(t *testing.T) (*Sweeper, *loader.NAT, *testutil.Clock, *recordedOps) {
	t.Helper()
	requireRoot(t)
	m, err := mapping.New([]netip.Prefix{netip.MustParsePrefix("100.64.0.0/24")}, []netip.Prefix{netip.MustParsePrefix("198.51.100.10/31")}, 1024, 65535, 0)
	if err != nil {
		t.Fatal(err)
	}
	nat, err := loader.Load(loader.Params{Mapping: m, Epoch: 1}, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nat.Close() })
	clock := testutil.NewClock(time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC), time.Hour)
	rec := &recordedOps{}
	s := &Sweeper{Plane: planeOf(nat, m), Clock: clock, Records: rec}
	return s, nat, clock, rec
}

// planeOf is the data plane as the agent hands it to the sweeper, with
// the RFC timeouts.
func planeOf(nat *loader.NAT, m *mapping.Mapping) func() Plane {
	return func() Plane {
		return Plane{Tables: nat, Mapping: m,
			Timeouts: Timeouts{UDP: 300 * time.Second, TCPEstablished: 7440 * time.Second, TCPTransitory: 240 * time.Second,
				ICMP: 60 * time.Second, BlockIdle: 300 * time.Second}}
	}
}

func be32(a string) uint32 {
	b := netip.MustParseAddr(a).As4()
	return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
}

func be16(p uint16) uint16 { return p>>8 | p<<8 }

// addFlow installs both sides of a mapping as the data plane would.
func addFlow(t *testing.T, nat *loader.NAT, sub uint32, inside string, port uint16, proto uint8, state uint8, natPort uint16, lastSeen uint64) loader.FlowKey {
	t.Helper()
	key := loader.FlowKey{Addr: be32(inside), Port: be16(port), Proto: proto}
	fwd := loader.FlowFwd{LastSeen: loader.LastSeenUnit(lastSeen), NatAddr: be32("198.51.100.10"), NatPort: be16(natPort), State: state, Subscriber: sub}
	if err := nat.AddMapping(key, fwd); err != nil {
		t.Fatal(err)
	}
	return key
}

func hasForward(nat *loader.NAT, key loader.FlowKey) bool {
	_, ok, _ := nat.LookupFlow(key)
	return ok
}

func hasReverse(nat *loader.NAT, key loader.FlowKey) bool {
	_, ok, _ := nat.LookupReverse(key)
	return ok
}

// TestTimeoutsByKind: after 250 s idle, TCP transitory and ICMP mappings
// expire (both sides), UDP and established TCP do not.
func TestTimeoutsByKind(t *testing.T) {
	s, nat, clock, _ := fixture(t)
	now := clock.MonoNow()
	udp := addFlow(t, nat, 2, "100.64.0.2", 40000, loader.ProtoUDP, loader.FlowStateOther, 2100, now)
	est := addFlow(t, nat, 2, "100.64.0.2", 40001, loader.ProtoTCP, loader.FlowStateTCPEst, 2101, now)
	syn := addFlow(t, nat, 2, "100.64.0.2", 40002, loader.ProtoTCP, loader.FlowStateTCPTrans, 2102, now)
	ping := addFlow(t, nat, 2, "100.64.0.2", 7, loader.ProtoICMP, loader.FlowStateOther, 2103, now)
	clock.Advance(250 * time.Second)
	res, err := s.Sweep(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if res.Expired != 2 || res.Flows != 2 {
		t.Errorf("result %+v, want 2 expired and 2 live", res)
	}
	for name, c := range map[string]struct {
		key  loader.FlowKey
		port uint16
		want bool
	}{"udp": {udp, 2100, true}, "tcp established": {est, 2101, true}, "tcp transitory": {syn, 2102, false}, "icmp": {ping, 2103, false}} {
		rkey := loader.FlowKey{Addr: be32("198.51.100.10"), Port: be16(c.port), Proto: c.key.Proto}
		if hasForward(nat, c.key) != c.want || hasReverse(nat, rkey) != c.want {
			t.Errorf("%s: forward %v reverse %v, want both %v", name, hasForward(nat, c.key), hasReverse(nat, rkey), c.want)
		}
	}
	// UDP's 300 s and the established 7440 s pass later.
	clock.Advance(60 * time.Second)
	if res, _ := s.Sweep(context.Background()); res.Expired != 1 || res.Flows != 1 {
		t.Errorf("after 310 s: %+v, want UDP expired", res)
	}
	clock.Advance(7200 * time.Second)
	if res, _ := s.Sweep(context.Background()); res.Expired != 1 || res.Flows != 0 {
		t.Errorf("after 7510 s: %+v, want the established mapping expired", res)
	}
}

// TestReleaseIdleBlock: a block with no mapping for block_idle is marked
// idle in the kernel and its record released; a busy block stays.
func TestReleaseIdleBlock(t *testing.T) {
	s, nat, clock, rec := fixture(t)
	now := clock.MonoNow()
	for _, sub := range []uint32{2, 3} {
		st := loader.SubscriberState{Active: 1, LastActiveNs: now, ActiveSinceNs: now}
		if err := nat.SetSubscriber(sub, st); err != nil {
			t.Fatal(err)
		}
	}
	clock.Advance(200 * time.Second)
	addFlow(t, nat, 3, "100.64.0.3", 40000, loader.ProtoUDP, loader.FlowStateOther, 2600, clock.MonoNow())
	if res, _ := s.Sweep(context.Background()); res.Released != 0 {
		t.Fatalf("released %d blocks before block_idle", res.Released)
	}
	clock.Advance(150 * time.Second)
	res, err := s.Sweep(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if res.Released != 1 || res.ActiveBlocks != 1 {
		t.Fatalf("result %+v, want subscriber 2 released and 3 still active", res)
	}
	if len(rec.ops) != 1 || rec.ops[0].Kind != store.OpRelease || rec.ops[0].Record.Subscriber != 2 ||
		rec.ops[0].Record.Public != netip.MustParseAddr("198.51.100.10") || rec.ops[0].Record.PortLo != 2032 ||
		!rec.ops[0].Record.End.Equal(clock.Now()) {
		t.Errorf("ops %+v, want one release of subscriber 2's block at %v", rec.ops, clock.Now())
	}
	for sub, want := range map[uint32]uint32{2: 0, 3: 1} {
		st, err := nat.Subscriber(sub)
		if err != nil {
			t.Fatal(err)
		}
		if st.Active != want {
			t.Errorf("subscriber %d active=%d, want %d", sub, st.Active, want)
		}
	}
}

// TestFiltersGoWithTheirMapping: with address-and-port-dependent
// filtering, the remote endpoints an expired mapping sent to are deleted
// with it; a live mapping's stay, a new mapping on the expired one's port
// keeps the endpoint it noted since, and an endpoint left with no mapping
// at all (an earlier agent's) goes too.
func TestFiltersGoWithTheirMapping(t *testing.T) {
	requireRoot(t)
	m, err := mapping.New([]netip.Prefix{netip.MustParsePrefix("100.64.0.0/24")}, []netip.Prefix{netip.MustParsePrefix("198.51.100.10/31")}, 1024, 65535, 0)
	if err != nil {
		t.Fatal(err)
	}
	nat, err := loader.Load(loader.Params{Mapping: m, Epoch: 1, FilterAPDF: true}, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nat.Close() })
	clock := testutil.NewClock(time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC), time.Hour)
	s := &Sweeper{Plane: planeOf(nat, m), Clock: clock, Records: &recordedOps{}}
	note := func(natPort uint16, remote string, seen uint64) loader.FilterKey {
		k := loader.FilterKey{NatAddr: be32("198.51.100.10"), RemoteAddr: be32(remote), NatPort: be16(natPort), RemotePort: be16(53), Proto: loader.ProtoUDP}
		if err := nat.NoteRemote(k, seen); err != nil {
			t.Fatal(err)
		}
		return k
	}
	start := clock.MonoNow()
	addFlow(t, nat, 2, "100.64.0.2", 40000, loader.ProtoUDP, loader.FlowStateOther, 2100, start)
	expiring := note(2100, "192.0.2.1", start)
	clock.Advance(200 * time.Second)
	addFlow(t, nat, 2, "100.64.0.2", 40001, loader.ProtoUDP, loader.FlowStateOther, 2101, clock.MonoNow())
	live := note(2101, "192.0.2.2", clock.MonoNow())
	orphan := note(2102, "192.0.2.3", start) // no mapping holds 2102
	clock.Advance(150 * time.Second)
	res, err := s.Sweep(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if res.Expired != 1 || res.Forgotten != 2 {
		t.Errorf("result %+v, want 1 mapping expired and 2 remote endpoints forgotten", res)
	}
	for name, c := range map[string]struct {
		key  loader.FilterKey
		want bool
	}{"expired mapping's": {expiring, false}, "live mapping's": {live, true}, "orphan": {orphan, false}} {
		if got, _ := nat.RemoteNoted(c.key); got != c.want {
			t.Errorf("%s endpoint present %v, want %v", name, got, c.want)
		}
	}

	// A mapping made on port 2100 since, sending to a new remote, between
	// the sweep's scan and its pruning: its endpoint is newer than the
	// expired mapping's last use and stays.
	gone := map[loader.MappingEnd]uint64{{Addr: be32("198.51.100.10"), Port: be16(2100), Proto: loader.ProtoUDP}: start}
	addFlow(t, nat, 2, "100.64.0.2", 40002, loader.ProtoUDP, loader.FlowStateOther, 2100, clock.MonoNow())
	fresh := note(2100, "192.0.2.4", clock.MonoNow())
	if _, err := nat.PruneFilters(gone); err != nil {
		t.Fatal(err)
	}
	if noted, _ := nat.RemoteNoted(fresh); !noted {
		t.Error("the new mapping's endpoint was pruned with the old mapping's")
	}
}

// TestPCPHeldMappingsStay: a mapping a PCP lifetime holds stays however
// idle, and keeps its block active; once the lifetime has ended it is an
// idle mapping like any other.
func TestPCPHeldMappingsStay(t *testing.T) {
	s, nat, clock, rec := fixture(t)
	now := clock.MonoNow()
	st := loader.SubscriberState{Active: 1, LastActiveNs: now, ActiveSinceNs: now}
	if err := nat.SetSubscriber(2, st); err != nil {
		t.Fatal(err)
	}
	held := addFlow(t, nat, 2, "100.64.0.2", 8080, loader.ProtoUDP, loader.FlowStateOther, 2100, now)
	loose := addFlow(t, nat, 2, "100.64.0.2", 8081, loader.ProtoUDP, loader.FlowStateOther, 2101, now)
	until := now + uint64(2*time.Hour)
	if err := nat.PutPCPEntry(held, loader.PCPEntry{ExpiresNs: until, Subscriber: 2}); err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Hour)
	res, err := s.Sweep(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if res.Expired != 1 || res.Flows != 1 || res.Released != 0 || !hasForward(nat, held) || hasForward(nat, loose) {
		t.Errorf("an hour idle: %+v, held kept %v, loose kept %v; want only the held one kept, the block active",
			res, hasForward(nat, held), hasForward(nat, loose))
	}
	clock.Advance(90 * time.Minute) // the lifetime ended 30 min ago
	res, err = s.Sweep(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	// Its block has been idle longer than block_idle, so it goes too.
	if res.Expired != 1 || hasForward(nat, held) || res.Released != 1 || len(rec.ops) != 1 {
		t.Errorf("after the lifetime: %+v, held kept %v, %d record ops; want it expired and the block released",
			res, hasForward(nat, held), len(rec.ops))
	}
}
