package netns

import (
	"fmt"
	"net"

	"golang.org/x/sys/unix"
)

// PacketSocket captures and sends Ethernet frames on one interface of a
// namespace, below routing and every firewall: it sees a frame that
// arrived even when that namespace's kernel would drop it, and can put on
// the wire what no socket would send.
type PacketSocket struct {
	Ifindex int
	MAC     net.HardwareAddr

	fd   int
	stop chan struct{}
	done chan struct{}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// OpenPacketSocket opens a socket on iface in ns and calls onFrame, from
// one goroutine, with every frame the interface carries: outgoing says
// the namespace sent it itself. The frame's buffer is reused after
// onFrame returns.
func OpenPacketSocket(ns *NS, iface string, onFrame func(frame []byte, outgoing bool)) (*PacketSocket, error) {
	p := &PacketSocket{fd: -1, stop: make(chan struct{}), done: make(chan struct{})}
	err := ns.Do(func() error {
		ifc, err := net.InterfaceByName(iface)
		if err != nil {
			return err
		}
		p.Ifindex, p.MAC = ifc.Index, ifc.HardwareAddr
		if p.fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(htons(unix.ETH_P_ALL))); err != nil {
			return err
		}
		return unix.Bind(p.fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: p.Ifindex})
	})
	if err == nil {
		// A large receive buffer, so that a burst is not missed; and a
		// timeout, so that the reader sees Close.
		_ = unix.SetsockoptInt(p.fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 16<<20)
		err = unix.SetsockoptTimeval(p.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 50000})
	}
	if err != nil {
		if p.fd >= 0 {
			unix.Close(p.fd)
		}
		return nil, fmt.Errorf("packet socket on %s in %s: %w", iface, ns.Name, err)
	}
	go p.read(onFrame)
	return p, nil
}

func (p *PacketSocket) read(onFrame func([]byte, bool)) {
	defer close(p.done)
	buf := make([]byte, 65536)
	for {
		select {
		case <-p.stop:
			return
		default:
		}
		n, from, err := unix.Recvfrom(p.fd, buf, 0)
		if err != nil {
			continue
		}
		ll, ok := from.(*unix.SockaddrLinklayer)
		onFrame(buf[:n], ok && ll.Pkttype == unix.PACKET_OUTGOING)
	}
}

// SendIPv4 puts an Ethernet frame carrying IPv4 on the wire.
func (p *PacketSocket) SendIPv4(frame []byte) error {
	return unix.Sendto(p.fd, frame, 0, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_IP), Ifindex: p.Ifindex})
}

// Close stops the capture and closes the socket.
func (p *PacketSocket) Close() {
	close(p.stop)
	<-p.done
	unix.Close(p.fd)
}
