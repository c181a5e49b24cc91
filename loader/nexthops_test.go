package loader

import (
	"bytes"
	"net"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket/layers"
)

// TestNextHopCache: the fib's answer for a redirected packet is cached
// under the current generation, and an entry is trusted only while its
// generation is current, the agent's lease holds, and the packet is no
// longer than the fib checked. A planted MAC shows which one answered.
func TestNextHopCache(t *testing.T) {
	requirePrivileged(t)
	f := defaultFixture(t)
	planted := net.HardwareAddr{0x02, 0xee, 0, 0, 0, 0x99}
	p := udpOut(sub2+":40000", server+":7000")

	send := func(t *testing.T, frame []byte) net.HardwareAddr {
		t.Helper()
		act, out := f.outbound(frame)
		if act != xdpRedirect {
			t.Fatalf("verdict %s, want XDP_REDIRECT%s", actionNames[act], dump(out))
		}
		return decode(t, out).eth.DstMAC
	}
	entries := func() map[natNexthopKey]natNexthop {
		out := map[natNexthopKey]natNexthop{}
		var k natNexthopKey
		var v natNexthop
		it := f.nat.objs.Nexthops.Iterate()
		for it.Next(&k, &v) {
			out[k] = v
		}
		return out
	}
	plant := func(t *testing.T, edit func(*natNexthop)) {
		t.Helper()
		for k, v := range entries() {
			copy(v.Dmac[:], planted)
			edit(&v)
			if err := f.nat.objs.Nexthops.Update(&k, &v, ebpf.UpdateExist); err != nil {
				t.Fatal(err)
			}
		}
	}
	vouch := func(t *testing.T, gen uint64, until time.Duration) {
		t.Helper()
		if err := f.nat.VouchRoutes(gen, until); err != nil {
			t.Fatal(err)
		}
	}
	forever := MonotonicNow() + time.Hour

	t.Run("off: nothing cached", func(t *testing.T) {
		f.reset()
		vouch(t, 1, 0)
		send(t, p.build(t))
		if n := len(entries()); n != 0 {
			t.Fatalf("%d entries with the cache off, want 0", n)
		}
	})
	t.Run("filled by a redirect", func(t *testing.T) {
		f.reset()
		vouch(t, 5, forever)
		send(t, p.build(t))
		e := entries()
		if len(e) != 1 {
			t.Fatalf("%d entries, want 1", len(e))
		}
		for _, v := range e {
			if v.Gen != 5 || int(v.Ifindex) != f.ns.ifs["out0"] || !bytes.Equal(v.Dmac[:], macUpstream) ||
				!bytes.Equal(v.Smac[:], f.ns.macs["out0"]) {
				t.Errorf("entry %+v, want gen 5, out0 (%d), %s -> %s", v, f.ns.ifs["out0"], f.ns.macs["out0"], macUpstream)
			}
		}
	})
	t.Run("current entry answers", func(t *testing.T) {
		plant(t, func(*natNexthop) {})
		if got := send(t, p.build(t)); !bytes.Equal(got, planted) {
			t.Fatalf("dmac %s, want the cached %s", got, planted)
		}
	})
	t.Run("longer packet asks the fib", func(t *testing.T) {
		plant(t, func(v *natNexthop) { v.MaxLen = 20 })
		if got := send(t, p.build(t)); !bytes.Equal(got, macUpstream) {
			t.Fatalf("dmac %s, want the fib's %s", got, macUpstream)
		}
	})
	t.Run("stale generation asks the fib", func(t *testing.T) {
		plant(t, func(*natNexthop) {})
		vouch(t, 6, forever)
		if got := send(t, p.build(t)); !bytes.Equal(got, macUpstream) {
			t.Fatalf("dmac %s, want the fib's %s", got, macUpstream)
		}
		for _, v := range entries() {
			if v.Gen != 6 {
				t.Errorf("refilled under gen %d, want 6", v.Gen)
			}
		}
	})
	t.Run("expired lease asks the fib", func(t *testing.T) {
		plant(t, func(*natNexthop) {})
		vouch(t, 6, MonotonicNow()-time.Second)
		if got := send(t, p.build(t)); !bytes.Equal(got, macUpstream) {
			t.Fatalf("dmac %s, want the fib's %s", got, macUpstream)
		}
	})
	t.Run("inbound is cached by its translated destination", func(t *testing.T) {
		f.reset()
		vouch(t, 7, forever)
		mapped := mapOut(p)(f)
		in := reply(p)(f, mapped)
		act, out := f.inbound(in)
		if act != xdpRedirect || !bytes.Equal(decode(t, out).eth.DstMAC, macSub2) {
			t.Fatalf("inbound %s%s", actionNames[act], dump(out))
		}
		if n := len(entries()); n != 2 {
			t.Fatalf("%d entries, want 2 (one each way)", n)
		}
		plant(t, func(*natNexthop) {})
		if _, out := f.inbound(reply(p)(f, mapped)); !bytes.Equal(decode(t, out).eth.DstMAC, planted) {
			t.Fatalf("inbound dmac %s, want the cached %s", decode(t, out).eth.DstMAC, planted)
		}
	})
	t.Run("idle entries are pruned", func(t *testing.T) {
		f.reset()
		vouch(t, 9, forever)
		send(t, p.build(t))
		if n, err := f.nat.PruneNexthops(MonotonicNow() - time.Hour); err != nil || n != 0 {
			t.Fatalf("prune of entries idle an hour: %d, %v; want 0", n, err)
		}
		if n, err := f.nat.PruneNexthops(MonotonicNow() + time.Second); err != nil || n != 1 {
			t.Fatalf("prune of entries idle from now: %d, %v; want 1", n, err)
		}
		if n := len(entries()); n != 0 {
			t.Fatalf("%d entries after the prune, want 0", n)
		}
	})
	t.Run("cached route keeps TTL and DF handling", func(t *testing.T) {
		f.reset()
		vouch(t, 8, forever)
		send(t, p.build(t))
		big := p
		big.payload = make([]byte, 1600)
		big.flags = layers.IPv4DontFragment
		if act, _ := f.outbound(big.build(t)); act != xdpPass || f.stats()["pass_frag_needed"] != 1 {
			t.Errorf("DF over the MTU: %s, pass_frag_needed %d; want XDP_PASS, 1", actionNames[act], f.stats()["pass_frag_needed"])
		}
		last := p
		last.ttl = 1
		if act, _ := f.outbound(last.build(t)); act != xdpPass || f.stats()["pass_ttl"] != 1 {
			t.Errorf("TTL 1: %s, pass_ttl %d; want XDP_PASS, 1", actionNames[act], f.stats()["pass_ttl"])
		}
	})
}
