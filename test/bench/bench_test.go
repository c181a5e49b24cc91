package bench

import (
	"context"
	"encoding/hex"
	"net"
	"net/netip"
	"os"
	"strconv"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"golang.org/x/sys/unix"

	"github.com/blocknat/blocknat/test/netns"
)

var testCounter int

func newTestBed(t *testing.T) *Bed {
	t.Helper()
	netns.RequirePrivileged(t)
	netns.RequireTools(t, "ethtool")
	testCounter++
	bed, err := NewBed(t.Context(), Prefix("t"+strconv.Itoa(testCounter)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := bed.Close(); err != nil {
			t.Errorf("close bed: %v", err)
		}
	})
	return bed
}

// runOnce runs the generator on a copy of a zeroed frame without the live
// flag, so the frame it built comes back; a fresh zero frame each time
// proves it writes every field itself.
func runOnce(t *testing.T, g *Generator) []byte {
	t.Helper()
	in := make([]byte, frameLen)
	out := make([]byte, frameLen)
	ret, err := g.objs.XdpTrafficgen.Run(&ebpf.RunOptions{Data: in, DataOut: out,
		Context: xdpMD{DataEnd: frameLen}})
	if err != nil {
		t.Fatal(err)
	}
	if ret != 3 { // XDP_TX
		t.Fatalf("verdict %d, want XDP_TX", ret)
	}
	return out
}

// TestGeneratorFrames: every frame is a well-formed IPv4 frame of the flow
// its number names, with checksums a full recomputation agrees with, and
// the flows cycle.
func TestGeneratorFrames(t *testing.T) {
	bed := newTestBed(t)
	for _, proto := range []uint8{unix.IPPROTO_UDP, unix.IPPROTO_TCP} {
		w := Workload{Flows: 7, Subscribers: 3, Destinations: 2, Proto: proto}
		g, err := NewGenerator(bed, w)
		if err != nil {
			t.Fatal(err)
		}
		defer g.Close()
		w = g.Workload()
		for n := range 2 * w.Flows {
			frame := runOnce(t, g)
			p := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.Default)
			if el := p.ErrorLayer(); el != nil {
				t.Fatalf("frame %d: %v\n%s", n, el.Error(), hex.Dump(frame))
			}
			eth := p.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
			if eth.SrcMAC.String() != bed.GenMAC.String() || eth.DstMAC.String() != bed.RouterInMAC.String() {
				t.Errorf("frame %d: MACs %s > %s, want %s > %s", n, eth.SrcMAC, eth.DstMAC, bed.GenMAC, bed.RouterInMAC)
			}
			ip := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
			wantSrc, wantDst := w.Flow(n % w.Flows)
			var src, dst netip.AddrPort
			var l4 []byte
			switch proto {
			case unix.IPPROTO_UDP:
				u, ok := p.Layer(layers.LayerTypeUDP).(*layers.UDP)
				if !ok {
					t.Fatalf("frame %d: not UDP\n%s", n, hex.Dump(frame))
				}
				src, dst = addrPort(ip.SrcIP, uint16(u.SrcPort)), addrPort(ip.DstIP, uint16(u.DstPort))
				l4 = append(u.Contents, u.Payload...)
			case unix.IPPROTO_TCP:
				tc, ok := p.Layer(layers.LayerTypeTCP).(*layers.TCP)
				if !ok || !tc.SYN || tc.ACK {
					t.Fatalf("frame %d: not a TCP SYN\n%s", n, hex.Dump(frame))
				}
				src, dst = addrPort(ip.SrcIP, uint16(tc.SrcPort)), addrPort(ip.DstIP, uint16(tc.DstPort))
				l4 = append(tc.Contents, tc.Payload...)
			}
			if src != wantSrc || dst != wantDst {
				t.Errorf("frame %d: %s > %s, want flow %d: %s > %s", n, src, dst, n%w.Flows, wantSrc, wantDst)
			}
			if got := checksum(frame[14:34], nil); got != 0 {
				t.Errorf("frame %d: IP header does not sum to zero (%#04x)\n%s", n, got, hex.Dump(frame))
			}
			pseudo := append(append([]byte{}, frame[26:34]...), 0, proto, byte(len(l4)>>8), byte(len(l4)))
			if got := checksum(l4, pseudo); got != 0 {
				t.Errorf("frame %d: L4 does not sum to zero (%#04x)\n%s", n, got, hex.Dump(frame))
			}
		}
		if sent, err := g.Sent(); err != nil || sent != uint64(2*w.Flows) {
			t.Errorf("Sent() = %d, %v; want %d", sent, err, 2*w.Flows)
		}
	}
}

func addrPort(ip net.IP, port uint16) netip.AddrPort {
	a, _ := netip.AddrFromSlice(ip.To4())
	return netip.AddrPortFrom(a, port)
}

// checksum is the Internet checksum of pseudo || data; a packet whose
// checksum field is right sums to zero.
func checksum(data, pseudo []byte) uint16 {
	var sum uint32
	for _, b := range [][]byte{pseudo, data} {
		for i := 0; i < len(b); i += 2 {
			w := uint32(b[i]) << 8
			if i+1 < len(b) {
				w |= uint32(b[i+1])
			}
			sum += w
		}
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// TestLiveFramesReachSink: frames generated live through each router reach
// the sink as every distinct flow, translated by the NATs and untouched by
// the forwarders.
func TestLiveFramesReachSink(t *testing.T) {
	netns.RequireTools(t, "nft", "conntrack")
	bed := newTestBed(t)
	ctx := t.Context()
	w := Workload{Flows: 300, Subscribers: 100, Destinations: 10}
	g, err := NewGenerator(bed, w)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	for _, name := range RouterNames {
		t.Run(name, func(t *testing.T) {
			r, err := NewRouter(name)
			if err != nil {
				t.Fatal(err)
			}
			sink, err := NewSink(bed, true)
			if err != nil {
				t.Fatal(err)
			}
			defer sink.Close()
			if err := r.Start(ctx, bed); err != nil {
				t.Fatal(err)
			}
			defer func() {
				if err := r.Stop(context.WithoutCancel(ctx), bed); err != nil {
					t.Error(err)
				}
			}()
			if err := g.Send(uint64(3 * w.Flows)); err != nil {
				t.Fatal(err)
			}
			if err := r.Check(ctx, bed, g.Workload()); err != nil {
				t.Fatal(err)
			}
			c, err := sink.Counts()
			if err != nil {
				t.Fatal(err)
			}
			if c.Frames < uint64(3*w.Flows) {
				t.Errorf("sink counted %d frames of %d sent", c.Frames, 3*w.Flows)
			}
			if r.Translates() != (c.FromInside == 0) {
				t.Errorf("%d of %d frames untranslated; the router translates: %v", c.FromInside, c.Frames, r.Translates())
			}
			flows, err := sink.Flows()
			if err != nil {
				t.Fatal(err)
			}
			// Linux NAT (masquerade and port-range SNAT alike) may
			// reuse one source port towards different destinations,
			// since the 5-tuple stays unique; blocknat's mapping is
			// endpoint-independent and the XDP routers do not
			// translate, so those keep every flow apart.
			natByLinux := name == RouterNftMasquerade || name == RouterNftPortBlock
			if !natByLinux && flows != w.Flows {
				t.Errorf("sink saw %d distinct sources, want %d", flows, w.Flows)
			}
		})
	}
}

// TestRemoveStale: a namespace named for a process that is gone is
// removed, and one of a live process is not.
func TestRemoveStale(t *testing.T) {
	netns.RequirePrivileged(t)
	// Pid 2^22+1 is above pid_max's ceiling on 64-bit kernels, so no
	// process can have it.
	dead := nsPrefix + "2hwch-stale"
	live := Prefix("live")
	for _, name := range []string{dead, live} {
		ns, err := netns.Create(name)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ns.Delete() })
	}
	if err := RemoveStale(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat("/var/run/netns/" + dead); !os.IsNotExist(err) {
		t.Errorf("stale namespace %s still exists (%v)", dead, err)
	}
	if _, err := os.Stat("/var/run/netns/" + live); err != nil {
		t.Errorf("live namespace %s was removed: %v", live, err)
	}
}
