package main

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"sync"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"golang.org/x/sys/unix"

	"github.com/blocknat/blocknat/test/netns"
)

// link captures and sends Ethernet frames on one interface of a
// namespace, below routing and every firewall, so that it sees a frame
// that arrived even when that namespace's kernel would drop it, and can
// put on the wire what no socket would send.
type link struct {
	fd      int
	ifindex int
	mac     net.HardwareAddr
	inside  netip.Prefix

	mu      sync.Mutex
	frames  uint64
	leaks   uint64
	samples []string
	markers map[string]int

	stop chan struct{}
	done chan struct{}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// openLink captures every frame that arrives on iface in ns, counting
// those that carry an inside address (see leak).
func openLink(ns *netns.NS, iface string, inside netip.Prefix) (*link, error) {
	l := &link{fd: -1, inside: inside, markers: map[string]int{}, stop: make(chan struct{}), done: make(chan struct{})}
	err := ns.Do(func() error {
		ifc, err := net.InterfaceByName(iface)
		if err != nil {
			return err
		}
		l.ifindex, l.mac = ifc.Index, ifc.HardwareAddr
		if l.fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(htons(unix.ETH_P_ALL))); err != nil {
			return err
		}
		return unix.Bind(l.fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: l.ifindex})
	})
	if err != nil {
		if l.fd >= 0 {
			unix.Close(l.fd)
		}
		return nil, fmt.Errorf("packet socket on %s in %s: %w", iface, ns.Name, err)
	}
	// A large receive buffer: the capture must not miss a leak in a burst.
	_ = unix.SetsockoptInt(l.fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 16<<20)
	tv := unix.Timeval{Usec: 100000}
	if err := unix.SetsockoptTimeval(l.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(l.fd)
		return nil, err
	}
	go l.read()
	return l, nil
}

func (l *link) read() {
	defer close(l.done)
	buf := make([]byte, 65536)
	for {
		select {
		case <-l.stop:
			return
		default:
		}
		n, from, err := unix.Recvfrom(l.fd, buf, 0)
		if err != nil {
			continue
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
			continue // what this namespace sent itself
		}
		frame := buf[:n]
		what := leak(frame, l.inside)
		l.mu.Lock()
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
		l.mu.Unlock()
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
	eth := &layers.Ethernet{SrcMAC: l.mac, DstMAC: dstMAC, EthernetType: layers.EthernetTypeIPv4}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, opts, append([]gopacket.SerializableLayer{eth, ip}, rest...)...); err != nil {
		return fmt.Errorf("serialize: %w", err)
	}
	return l.sendRaw(buf.Bytes())
}

func (l *link) sendRaw(frame []byte) error {
	return unix.Sendto(l.fd, frame, 0, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_IP), Ifindex: l.ifindex})
}

func (l *link) close() {
	close(l.stop)
	<-l.done
	unix.Close(l.fd)
}

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
