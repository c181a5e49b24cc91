package loader

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"

	"github.com/blocknat/blocknat/userspace/mapping"
)

const overflowAddr = "198.51.100.20"

// overflowFixture: three subscribers (100.64.0.1-3) of 4-port blocks on
// 198.51.100.10 (ports 1024-1039), and an overflow pool of one address cut
// into 4-port blocks over the same range: blocks ids 0-3, ports 1024-1027,
// 1028-1031, ...; a subscriber may hold maxBlocks of them.
func overflowFixture(t testing.TB, maxBlocks uint32) *natFixture {
	t.Helper()
	ns := newTestNS(t)
	m, err := mapping.New(prefixesOf(t, []string{"100.64.0.0/30"}), prefixesOf(t, []string{"198.51.100.10"}), 1024, 1039, 0)
	if err != nil {
		t.Fatal(err)
	}
	if m.BlockSize != 4 {
		t.Fatalf("block size %d, want 4", m.BlockSize)
	}
	o, err := mapping.NewOverflow(prefixesOf(t, []string{overflowAddr}), 1024, 1039, 4, maxBlocks)
	if err != nil {
		t.Fatal(err)
	}
	nat, err := Load(Params{Mapping: m, Epoch: 7, Overflow: o}, "")
	if err != nil {
		t.Fatalf("load with overflow: %v", err)
	}
	t.Cleanup(func() { nat.Close() })
	return fixtureOn(t, ns, nat, m)
}

// TestOverflowSlotsMatchTheConfiguration: the data plane's slots per
// subscriber are the most max_blocks the configuration allows.
func TestOverflowSlotsMatchTheConfiguration(t *testing.T) {
	if OverflowSlots != mapping.MaxOverflowPerSubscriber {
		t.Fatalf("the data plane has %d overflow slots a subscriber, the configuration allows %d", OverflowSlots, mapping.MaxOverflowPerSubscriber)
	}
}

func readEvents(t testing.TB, rd *ringbuf.Reader) []BlockEvent {
	t.Helper()
	var out []BlockEvent
	rd.SetDeadline(time.Now().Add(200 * time.Millisecond))
	for {
		rec, err := rd.Read()
		if err != nil {
			return out
		}
		var e BlockEvent
		if _, err := binary.Decode(rec.RawSample, binary.NativeEndian, &e); err != nil {
			t.Fatal(err)
		}
		out = append(out, e)
	}
}

// open makes n new UDP flows from inside, from source port first on, and
// returns where each left from; a flow refused for a full block (answered
// with a host unreachable, or dropped within its rate limit) is the zero
// AddrPort.
func (f *natFixture) open(inside string, first uint16, n int) []netip.AddrPort {
	f.t.Helper()
	var out []netip.AddrPort
	for i := range n {
		refused := f.stats()["drop_block_full"]
		act, frame := f.outbound(udpOut(netip.AddrPortFrom(netip.MustParseAddr(inside), first+uint16(i)).String(), server+":7000").build(f.t))
		if act == xdpDrop && f.stats()["drop_block_full"] == refused+1 {
			out = append(out, netip.AddrPort{})
			continue
		}
		if act != xdpRedirect {
			f.t.Fatalf("flow %d from %s: %s", i, inside, actionNames[act])
		}
		d := decode(f.t, frame)
		if d.icmp != nil { // the block-full host unreachable
			out = append(out, netip.AddrPort{})
			continue
		}
		out = append(out, d.src())
	}
	return out
}

// TestOverflowBlocks: a subscriber whose block is full claims an overflow
// block (one event naming it), its next flows leave from it and replies
// come back; at max_blocks, or with the pool empty, the flow is refused as
// before; another subscriber's block is never touched; a block being
// released takes no new mapping, and once free another subscriber claims
// it.
func TestOverflowBlocks(t *testing.T) {
	f := overflowFixture(t, 2)
	rd, err := ringbuf.NewReader(f.nat.objs.BlockEvents)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	const a, b, c = "100.64.0.2", "100.64.0.3", "100.64.0.1"
	own, _ := f.m.Forward(netip.MustParseAddr(a))
	inBlock := func(ap netip.AddrPort, public string, lo, hi uint16) bool {
		return ap.Addr().String() == public && ap.Port() >= lo && ap.Port() <= hi
	}

	got := f.open(a, 50000, 4)
	for _, ap := range got {
		if !inBlock(ap, own.Public.String(), own.PortLo, own.PortHi) {
			t.Fatalf("own block's flows left from %v, want %s:%d-%d", got, own.Public, own.PortLo, own.PortHi)
		}
	}
	readEvents(t, rd) // the own block's activation
	over := f.open(a, 50004, 8)
	blocks := map[uint32][]netip.AddrPort{}
	for _, ap := range over {
		id, ok := f.nat.OverflowOf(ap.Addr(), ap.Port())
		if !ok {
			t.Fatalf("flow left from %s, no overflow block (all: %v)", ap, over)
		}
		blocks[id] = append(blocks[id], ap)
	}
	if len(blocks) != 2 {
		t.Fatalf("8 flows past the own block used overflow blocks %v, want 2 of 4 ports each", blocks)
	}
	events := readEvents(t, rd)
	if len(events) != 2 {
		t.Fatalf("%d events for 2 overflow claims: %+v", len(events), events)
	}
	for _, e := range events {
		id, ok := f.nat.OverflowOf(AddrFromBE32(e.PublicAddr), e.PortLo)
		if !ok || len(blocks[id]) != 4 || e.Subscriber != own.Subscriber || AddrFromBE32(e.InsideAddr).String() != a ||
			e.PortHi != e.PortLo+3 || e.Kind != BlockEventActivate || e.Epoch != 7 {
			t.Errorf("event %+v does not name one of the claimed blocks %v", e, blocks)
		}
	}
	// At max_blocks the next flow is refused, with the host unreachable.
	if r := f.open(a, 50012, 1); r[0].IsValid() {
		t.Fatalf("a flow past max_blocks left from %s", r[0])
	}
	st := f.stats()
	if st["overflow_claims"] != 2 || st["overflow_refused_max"] != 1 || st["drop_block_full"] != 1 {
		t.Errorf("stats %v: want 2 claims, 1 refused at max_blocks", st)
	}
	// A reply to an overflow port reaches the subscriber.
	mapped := over[0]
	in := reply(udpOut(netip.AddrPortFrom(netip.MustParseAddr(a), 50004).String(), server+":7000"))(f, mapped)
	if act, out := f.inbound(in); act != xdpRedirect || decode(t, out).dst().String() != a+":50004" {
		t.Fatalf("reply to %s: %s to %s", mapped, actionNames[act], decode(t, out).dst())
	}

	// b takes the two blocks left; c finds the pool empty.
	f.open(b, 50000, 4)
	for _, ap := range f.open(b, 50004, 8) {
		id, ok := f.nat.OverflowOf(ap.Addr(), ap.Port())
		if !ok || blocks[id] != nil {
			t.Fatalf("b's flow left from %s, in a's block or none", ap)
		}
	}
	f.open(c, 50000, 4)
	if r := f.open(c, 50004, 1); r[0].IsValid() {
		t.Fatalf("with the pool empty a flow left from %s", r[0])
	}
	if st := f.stats(); st["overflow_refused_pool"] != 1 || st["overflow_claims"] != 4 {
		t.Errorf("stats %v: want 4 claims, 1 refused for an empty pool", st)
	}
	held, err := f.nat.OverflowBlocks()
	if err != nil || len(held) != 4 {
		t.Fatalf("held blocks %+v, %v", held, err)
	}

	// Release one of a's blocks: while releasing, no new mapping goes
	// there; once free, c claims it.
	var victim uint32
	for id := range blocks {
		victim = id
		break
	}
	if err := f.nat.MarkOverflowReleasing(victim, own.Subscriber); err != nil {
		t.Fatal(err)
	}
	var inVictim []FlowKey
	if err := f.nat.Flows(func(key FlowKey, v FlowFwd) error {
		if id, ok := f.nat.OverflowOf(AddrFromBE32(v.NatAddr), PortFromBE16(v.NatPort)); ok && id == victim {
			inVictim = append(inVictim, key)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, key := range inVictim {
		if _, _, err := f.nat.ExpireFlow(key, func(FlowFwd) bool { return true }); err != nil {
			t.Fatal(err)
		}
	}
	if r := f.open(a, 50020, 1); r[0].IsValid() {
		if id, _ := f.nat.OverflowOf(r[0].Addr(), r[0].Port()); id == victim {
			t.Fatalf("a new mapping went into block %d while it was released", victim)
		}
	}
	if err := f.nat.FreeOverflow(victim, own.Subscriber); err != nil {
		t.Fatal(err)
	}
	if slots, _ := f.nat.OverflowSlotsOf(own.Subscriber); slices.Contains(slots, victim) {
		t.Errorf("a's slots %v still name the freed block %d", slots, victim)
	}
	r := f.open(c, 50005, 1)
	if id, ok := f.nat.OverflowOf(r[0].Addr(), r[0].Port()); !ok || id != victim {
		t.Fatalf("c's flow left from %s, want the freed block %d", r[0], victim)
	}
	held, _ = f.nat.OverflowBlocks()
	for _, h := range held {
		if h.ID == victim && h.Subscriber != 1 {
			t.Errorf("block %d held by %d, want c (1)", victim, h.Subscriber)
		}
	}
}

// TestOverflowClaimsRaceOnTwoCPUs: two threads pinned to two CPUs make new
// flows for all three subscribers at once until the pool is empty: every
// block has one owner, that owner's slots name it exactly once, nobody
// holds more than max_blocks, every claim sent one event, and every
// mapping lies in its subscriber's own block or in a block it holds.
func TestOverflowClaimsRaceOnTwoCPUs(t *testing.T) {
	if runtime.NumCPU() < 2 {
		t.Skip("needs two CPUs to race")
	}
	f := overflowFixture(t, 4)
	rd, err := ringbuf.NewReader(f.nat.objs.BlockEvents)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	subs := []string{"100.64.0.1", "100.64.0.2", "100.64.0.3"}
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for cpu := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f.ns.do(t, func() {
				var set unix.CPUSet
				set.Set(cpu)
				if err := unix.SchedSetaffinity(0, &set); err != nil {
					errs <- err
					return
				}
				for round := range 40 {
					for _, s := range subs {
						frame := udpOut(fmt.Sprintf("%s:%d", s, 10000+cpu*1000+round), server+":7000").build(t)
						opts := &ebpf.RunOptions{Data: frame, DataOut: make([]byte, len(frame)+256),
							Context: xdpMD{DataEnd: uint32(len(frame)), IngressIfindex: uint32(f.ns.ifs["in0"])}}
						if _, err := f.nat.objs.XdpInside.Run(opts); err != nil {
							errs <- err
							return
						}
					}
				}
			})
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	held, err := f.nat.OverflowBlocks()
	if err != nil {
		t.Fatal(err)
	}
	if len(held) != 4 {
		t.Fatalf("%d blocks held after 240 flows for 12 ports of own blocks: %+v", len(held), held)
	}
	owner := map[uint32]uint32{}
	for _, h := range held {
		owner[h.ID] = h.Subscriber
	}
	per := map[uint32]int{}
	for sub := range f.m.Subscribers {
		slots, err := f.nat.OverflowSlotsOf(sub)
		if err != nil {
			t.Fatal(err)
		}
		for _, id := range slots {
			if owner[id] != sub {
				t.Errorf("subscriber %d's slot names block %d, held by %d", sub, id, owner[id])
			}
			per[sub]++
		}
		if sorted := slices.Sorted(slices.Values(slots)); len(slices.Compact(sorted)) != len(slots) {
			t.Errorf("subscriber %d's slots %v name a block twice", sub, slots)
		}
	}
	if n := per[0] + per[1] + per[2] + per[3]; n != len(held) {
		t.Errorf("%d slots name a held block, %d blocks are held: a claim lost its slot", n, len(held))
	}
	if st := f.stats(); st["overflow_claims"] != uint64(len(held)) {
		t.Errorf("%d claims counted, %d blocks held", st["overflow_claims"], len(held))
	}
	events := 0
	for _, e := range readEvents(t, rd) {
		if _, ok := f.nat.OverflowOf(AddrFromBE32(e.PublicAddr), e.PortLo); ok {
			events++
		}
	}
	if events != len(held) {
		t.Errorf("%d overflow events for %d claims", events, len(held))
	}
	err = f.nat.Flows(func(key FlowKey, v FlowFwd) error {
		own, _ := f.m.Block(v.Subscriber)
		pub, port := AddrFromBE32(v.NatAddr), PortFromBE16(v.NatPort)
		if pub == own.Public && port >= own.PortLo && port <= own.PortHi {
			return nil
		}
		if id, ok := f.nat.OverflowOf(pub, port); !ok || owner[id] != v.Subscriber {
			return fmt.Errorf("subscriber %d's mapping on %s:%d is in no block it holds", v.Subscriber, pub, port)
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
}
