package main

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"sync"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/blocknat/blocknat/test/netns"
)

// link captures and sends Ethernet frames on one interface of a
// namespace, below routing and every firewall, so that it sees a frame
// that arrived even when that namespace's kernel would drop it, and can
// put on the wire what no socket would send.
type link struct {
	*netns.PacketSocket
	inside netip.Prefix

	mu      sync.Mutex
	frames  uint64
	leaks   uint64
	samples []string
	markers map[string]int
}

// openLink captures every frame that arrives on iface in ns, counting
// those that carry an inside address (see leak).
func openLink(ns *netns.NS, iface string, inside netip.Prefix) (*link, error) {
	l := &link{inside: inside, markers: map[string]int{}}
	var err error
	if l.PacketSocket, err = netns.OpenPacketSocket(ns, iface, l.count); err != nil {
		return nil, err
	}
	return l, nil
}

func (l *link) count(frame []byte, outgoing bool) {
	if outgoing {
		return // what this namespace sent itself
	}
	what := leak(frame, l.inside)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.frames++
	if what != "" {
		l.leaks++
		if len(l.samples) < 10 {
			l.samples = append(l.samples, what)
		}
	}
	for m := range l.markers {
		if bytes.Contains(frame, []byte(m)) {
			l.markers[m]++
		}
	}
}

// watch starts counting the frames that carry marker.
func (l *link) watch(marker string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.markers[marker]; !ok {
		l.markers[marker] = 0
	}
}

func (l *link) seen(marker string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.markers[marker]
}

// counts are the frames seen and those that leaked an inside address,
// with a few of the latter described.
func (l *link) counts() (frames, leaks uint64, samples []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.frames, l.leaks, append([]string(nil), l.samples...)
}

// send puts a frame made of layers on the wire, Ethernet header first.
func (l *link) send(dstMAC net.HardwareAddr, ip *layers.IPv4, rest ...gopacket.SerializableLayer) error {
	return l.sendOpts(dstMAC, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ip, rest...)
}

// sendOpts is send with the caller's choice of what gopacket fixes, so
// that a malformed header stays malformed.
func (l *link) sendOpts(dstMAC net.HardwareAddr, opts gopacket.SerializeOptions, ip *layers.IPv4, rest ...gopacket.SerializableLayer) error {
	if ip.Version == 0 {
		ip.Version = 4
	}
	if ip.IHL == 0 && !opts.FixLengths {
		ip.IHL = 5
	}
	if ip.TTL == 0 {
		ip.TTL = 64
	}
	for _, r := range rest {
		switch r := r.(type) {
		case *layers.TCP:
			r.SetNetworkLayerForChecksum(ip)
		case *layers.UDP:
			r.SetNetworkLayerForChecksum(ip)
		}
	}
	eth := &layers.Ethernet{SrcMAC: l.MAC, DstMAC: dstMAC, EthernetType: layers.EthernetTypeIPv4}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, opts, append([]gopacket.SerializableLayer{eth, ip}, rest...)...); err != nil {
		return fmt.Errorf("serialize: %w", err)
	}
	return l.sendRaw(buf.Bytes())
}

func (l *link) sendRaw(frame []byte) error { return l.SendIPv4(frame) }

func (l *link) close() { l.Close() }

func ifaceMAC(ns *netns.NS, iface string) (net.HardwareAddr, error) {
	var mac net.HardwareAddr
	err := ns.Do(func() error {
		ifc, err := net.InterfaceByName(iface)
		if err == nil {
			mac = ifc.HardwareAddr
		}
		return err
	})
	return mac, err
}
