package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/blocknat/blocknat/test/netns"
)

// The hostile classes mirror test/e2e/hostile_test.go (forged RSTs and
// FINs, martians both ways) and add fragments and malformed headers,
// each sent while the long-lived connections talk. What must hold: the
// agent does not die, no connection breaks, no martian crosses, no inside
// address reaches the internet, and a fragmented datagram still goes
// through whole.

// strangerAddr is a random internet address that is no martian: one of
// 198.18.0.0/15, which the internet namespace does not route back.
func strangerAddr(r *rand.Rand) net.IP {
	return net.IPv4(198, 18+byte(r.IntN(2)), byte(r.IntN(256)), byte(1+r.IntN(254)))
}

type hostileEnv struct {
	up        *link // the internet side of the outside link
	sub       *link // subscriber 0's side of its link
	routerIn  net.HardwareAddr
	routerOut net.HardwareAddr
	subAddr   netip.Addr
	echo      netip.AddrPort
	public    netip.AddrPort // a live UDP mapping of subscriber 0
	tcpEnds   []netip.AddrPort
	r         *rand.Rand
	sent      int
}

func (h *hostileEnv) out(ip *layers.IPv4, rest ...gopacket.SerializableLayer) error {
	h.sent++
	return h.sub.send(h.routerIn, ip, rest...)
}

func (h *hostileEnv) in(ip *layers.IPv4, rest ...gopacket.SerializableLayer) error {
	h.sent++
	return h.up.send(h.routerOut, ip, rest...)
}

// forgedResets sends RSTs and FINs from random strangers to the public
// end of every live connection: endpoint-independent filtering lets
// strangers in, so only the state machine stands between them and the
// mapping.
func (h *hostileEnv) forgedResets(perConn int) error {
	for _, end := range h.tcpEnds {
		for i := 0; i < perConn; i++ {
			tcp := &layers.TCP{SrcPort: layers.TCPPort(1 + h.r.IntN(65535)), DstPort: layers.TCPPort(end.Port()),
				Seq: h.r.Uint32(), Ack: h.r.Uint32(), Window: 512}
			if i%2 == 0 {
				tcp.RST = true
			} else {
				tcp.FIN, tcp.ACK = true, true
			}
			ip := &layers.IPv4{Protocol: layers.IPProtocolTCP, SrcIP: strangerAddr(h.r), DstIP: end.Addr().AsSlice()}
			if err := h.in(ip, tcp); err != nil {
				return err
			}
		}
	}
	return nil
}

type martianClass struct{ name, addr string }

var (
	outboundMartians = []martianClass{
		{"0.0.0.0/8", "0.1.2.3"}, {"0.0.0.0", "0.0.0.0"}, {"loopback", "127.0.0.1"}, {"240/4", "240.0.0.1"},
		{"255.255.255.254", "255.255.255.254"}, {"limited broadcast", "255.255.255.255"},
		{"mdns group", "224.0.0.251"}, {"multicast group", "239.1.2.3"},
		{"inside address with no subscriber link", "100.64.0.9"},
	}
	inboundMartians = []martianClass{
		{"loopback", "127.0.0.1"}, {"0.0.0.0", "0.0.0.0"}, {"0.0.0.0/8", "0.9.9.9"}, {"multicast", "224.0.0.1"},
		{"broadcast", "255.255.255.255"}, {"240/4", "240.0.0.1"}, {"pool", "198.51.100.11"},
		{"inside", "100.64.0.3"},
	}
)

func martianMarker(dir, name string) string { return "bn-soak-martian " + dir + " " + name }

func udpTo(src, dst netip.AddrPort, payload string) (*layers.IPv4, *layers.UDP, gopacket.Payload) {
	ip := &layers.IPv4{Protocol: layers.IPProtocolUDP, SrcIP: src.Addr().AsSlice(), DstIP: dst.Addr().AsSlice()}
	return ip, &layers.UDP{SrcPort: layers.UDPPort(src.Port()), DstPort: layers.UDPPort(dst.Port())}, gopacket.Payload(payload)
}

// martians sends every class both ways, with a control packet each way
// so that the captures can judge.
func (h *hostileEnv) martians(perClass int) error {
	for _, c := range outboundMartians {
		h.up.watch(martianMarker("out", c.name))
	}
	for _, c := range inboundMartians {
		h.sub.watch(martianMarker("in", c.name))
	}
	h.up.watch(martianMarker("out", "control"))
	h.sub.watch(martianMarker("in", "control"))
	for i := 0; i < perClass; i++ {
		for _, c := range outboundMartians {
			ip, udp, p := udpTo(netip.AddrPortFrom(h.subAddr, 48001), netip.MustParseAddrPort(c.addr+":9"), martianMarker("out", c.name))
			if err := h.out(ip, udp, p); err != nil {
				return err
			}
		}
		ip, udp, p := udpTo(netip.AddrPortFrom(h.subAddr, 48000), h.echo, martianMarker("out", "control"))
		if err := h.out(ip, udp, p); err != nil {
			return err
		}
		for _, c := range append(inboundMartians, martianClass{"own pool address", h.public.Addr().String()}) {
			ip, udp, p := udpTo(netip.MustParseAddrPort(c.addr+":9000"), h.public, martianMarker("in", c.name))
			if err := h.in(ip, udp, p); err != nil {
				return err
			}
		}
		ip, udp, p = udpTo(h.echo, h.public, martianMarker("in", "control"))
		if err := h.in(ip, udp, p); err != nil {
			return err
		}
	}
	return nil
}

// fragments sends what a fragment parser must survive, both ways: lone
// first and later fragments of datagrams that never complete, a first
// fragment too short to hold the UDP header, and overlapping pieces.
func (h *hostileEnv) fragments(rounds int) error {
	for i := 0; i < rounds; i++ {
		id := uint16(h.r.IntN(65536))
		src := netip.AddrPortFrom(h.subAddr, uint16(48100+i%50))
		payload := bytes.Repeat([]byte("bn-soak-frag "), 8)
		udp := make([]byte, 8+len(payload))
		binary.BigEndian.PutUint16(udp[0:], src.Port())
		binary.BigEndian.PutUint16(udp[2:], h.echo.Port())
		binary.BigEndian.PutUint16(udp[4:], uint16(len(udp)+800)) // the datagram the pieces promise
		copy(udp[8:], payload)
		frag := func(offset8 uint16, more bool) *layers.IPv4 {
			flags := layers.IPv4Flag(0)
			if more {
				flags = layers.IPv4MoreFragments
			}
			return &layers.IPv4{Id: id, Flags: flags, FragOffset: offset8, Protocol: layers.IPProtocolUDP,
				SrcIP: src.Addr().AsSlice(), DstIP: h.echo.Addr().AsSlice()}
		}
		pieces := []struct {
			offset8 uint16
			more    bool
			body    []byte
		}{
			{0, true, udp},             // a first fragment whose rest never comes
			{100, false, payload},      // a last fragment with no first
			{37, true, payload[:48]},   // a middle one
			{0, true, udp[:4]},         // too short for the UDP header
			{1, true, payload[:64]},    // overlapping the first
			{8191, false, payload[:8]}, // at the largest offset: past 64 KiB
		}
		for _, p := range pieces {
			if err := h.out(frag(p.offset8, p.more), gopacket.Payload(p.body)); err != nil {
				return err
			}
		}
		// Inbound, to the live public mapping.
		for _, p := range pieces {
			ip := &layers.IPv4{Id: id, FragOffset: p.offset8, Protocol: layers.IPProtocolUDP,
				SrcIP: h.echo.Addr().AsSlice(), DstIP: h.public.Addr().AsSlice()}
			if p.more {
				ip.Flags = layers.IPv4MoreFragments
			}
			body := append([]byte(nil), p.body...)
			if len(body) >= 4 && p.offset8 == 0 {
				binary.BigEndian.PutUint16(body[0:], h.echo.Port())
				binary.BigEndian.PutUint16(body[2:], h.public.Port())
			}
			if err := h.in(ip, gopacket.Payload(body)); err != nil {
				return err
			}
		}
	}
	return nil
}

// malformed sends headers that lie: about their own length, their
// checksum, their options, their transport header's length, and a
// protocol the NAT does not translate. A frame is built whole and then
// broken, so that each lie is the only one.
func (h *hostileEnv) malformed(rounds int) error {
	type breakage struct {
		name  string
		mend  bool // recompute the IPv4 checksum after breaking
		apply func(ip []byte)
	}
	breaks := []breakage{
		{"ihl below 5", true, func(ip []byte) { ip[0] = 0x44 }},
		{"ihl past the packet", true, func(ip []byte) { ip[0] = 0x4f }},
		{"total length past the frame", true, func(ip []byte) { binary.BigEndian.PutUint16(ip[2:], 1400) }},
		{"total length below the header", true, func(ip []byte) { binary.BigEndian.PutUint16(ip[2:], 12) }},
		{"bad header checksum", false, func(ip []byte) { ip[10] ^= 0xff }},
		{"version 5", true, func(ip []byte) { ip[0] = 0x55 }},
		{"udp length past the packet", true, func(ip []byte) { binary.BigEndian.PutUint16(ip[24:], 900) }},
		{"udp length below its header", true, func(ip []byte) { binary.BigEndian.PutUint16(ip[24:], 3) }},
		{"ttl 1", true, func(ip []byte) { ip[8] = 1 }},
		{"ttl 0", true, func(ip []byte) { ip[8] = 0 }},
		{"unknown protocol", true, func(ip []byte) { ip[9] = 253 }},
		{"tcp with data offset 2", true, func(ip []byte) {
			ip[9] = byte(layers.IPProtocolTCP)
			ip[20+12] = 2 << 4
		}},
		{"truncated tcp", true, func(ip []byte) { ip[9] = byte(layers.IPProtocolTCP) }},
		{"icmp error quoting nothing", true, func(ip []byte) {
			ip[9] = byte(layers.IPProtocolICMPv4)
			ip[20], ip[21] = layers.ICMPv4TypeDestinationUnreachable, 3
		}},
	}
	build := func(src, dst netip.AddrPort, mac net.HardwareAddr, l *link) ([]byte, error) {
		ip, udp, p := udpTo(src, dst, "bn-soak-malformed")
		ip.Version, ip.IHL, ip.TTL = 4, 5, 64
		udp.SetNetworkLayerForChecksum(ip)
		buf := gopacket.NewSerializeBuffer()
		eth := &layers.Ethernet{SrcMAC: l.MAC, DstMAC: mac, EthernetType: layers.EthernetTypeIPv4}
		err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip, udp, p)
		return buf.Bytes(), err
	}
	for i := 0; i < rounds; i++ {
		for _, b := range breaks {
			for _, dir := range []string{"out", "in"} {
				l, mac, src, dst := h.sub, h.routerIn, netip.AddrPortFrom(h.subAddr, uint16(48200+i%50)), h.echo
				if dir == "in" {
					l, mac, src, dst = h.up, h.routerOut, h.echo, h.public
				}
				frame, err := build(src, dst, mac, l)
				if err != nil {
					return err
				}
				ip := frame[14:]
				b.apply(ip)
				if b.mend {
					binary.BigEndian.PutUint16(ip[10:], 0)
					binary.BigEndian.PutUint16(ip[10:], ipChecksum(ip[:20]))
				}
				h.sent++
				if err := l.sendRaw(frame); err != nil {
					return fmt.Errorf("%s %s: %w", dir, b.name, err)
				}
			}
		}
	}
	return nil
}

func ipChecksum(hdr []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(hdr); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(hdr[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// fragmentedEcho is the control of the fragment classes: a datagram
// larger than the MTU, both ways, arrives whole (RFC 4787 REQ-14).
func fragmentedEcho(ns *netns.NS, echo netip.AddrPort) error {
	for _, size := range []int{4000, 8000} {
		payload := bytes.Repeat([]byte("0123456789abcdef"), size/16)
		got, err := netns.UDPRoundTrip(ns, 0, echo, payload, 3*time.Second)
		if err != nil {
			return fmt.Errorf("%d bytes: %w", size, err)
		}
		if !bytes.Equal(got, payload) {
			return fmt.Errorf("%d bytes: the echo of %d bytes differs", size, len(got))
		}
	}
	return nil
}

// waitMarkers waits until the controls have been seen perClass times.
func (h *hostileEnv) waitControls(ctx context.Context, perClass int, within time.Duration) bool {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if h.up.seen(martianMarker("out", "control")) >= perClass && h.sub.seen(martianMarker("in", "control")) >= perClass {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(50 * time.Millisecond):
		}
	}
	return false
}
