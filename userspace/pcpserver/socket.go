package pcpserver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"syscall"

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"

	"github.com/blocknat/blocknat/userspace/logattr"
)

// readBuffer holds more than pcp.MaxMessageSize, so that an oversized
// request reaches Decode long enough to be refused as such.
const readBuffer = 2048

// inside is one inside interface's pair of sockets.
type inside struct {
	name    string
	index   int
	main    *ipv4.PacketConn // Port: requests, answers and announcements
	suspect *ipv4.PacketConn // SuspectPort: diverted requests, read only
}

func (in *inside) close() {
	if in.main != nil {
		in.main.Close()
	}
	if in.suspect != nil {
		in.suspect.Close()
	}
}

// listen opens both sockets on every inside interface, or none.
func (s *Server) listen(ctx context.Context) ([]*inside, error) {
	var ifaces []*inside
	fail := func(err error) ([]*inside, error) {
		for _, in := range ifaces {
			in.close()
		}
		return nil, err
	}
	for i, name := range s.cfg.Interfaces {
		ifi, err := net.InterfaceByName(name)
		if err != nil {
			return fail(fmt.Errorf("pcp.interfaces[%d]: %s: %w", i, name, err))
		}
		in := &inside{name: name, index: ifi.Index}
		ifaces = append(ifaces, in)
		if in.main, err = listenOn(ctx, name, s.cfg.Port); err != nil {
			return fail(err)
		}
		// Announcements to the group leave by this interface, not by
		// the route to 224.0.0.0/4.
		if err := in.main.SetMulticastInterface(ifi); err != nil {
			return fail(fmt.Errorf("pcp: set the multicast interface of %s: %w", name, err))
		}
		if err := in.main.SetMulticastTTL(1); err != nil {
			return fail(fmt.Errorf("pcp: set the multicast TTL on %s: %w", name, err))
		}
		if in.suspect, err = listenOn(ctx, name, s.cfg.SuspectPort); err != nil {
			return fail(err)
		}
	}
	return ifaces, nil
}

// listenOn binds 0.0.0.0:port to one device. SO_BINDTODEVICE keeps a
// request from the outside (or another inside interface) from reaching
// this socket, and it is also what lets one socket per device share the
// port: Linux does not count two sockets bound to different devices as a
// conflict. SO_REUSEADDR is deliberately not set. It is not needed for
// that (TestSocketsShareThePortByDevice), and on UDP it would let a
// second agent, or a stale one, bind the same device and port without an
// error and take a share of the requests. IP_PKTINFO gives each request's
// destination, which becomes the answer's source, so that a client that
// sent to its gateway hears from its gateway.
func listenOn(ctx context.Context, device string, port uint16) (*ipv4.PacketConn, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var opErr error
		err := c.Control(func(fd uintptr) {
			if opErr = unix.BindToDevice(int(fd), device); opErr != nil {
				opErr = fmt.Errorf("SO_BINDTODEVICE: %w", opErr)
			}
		})
		if err != nil {
			return err
		}
		return opErr
	}}
	conn, err := lc.ListenPacket(ctx, "udp4", net.JoinHostPort("0.0.0.0", strconv.Itoa(int(port))))
	if err != nil {
		return nil, fmt.Errorf("pcp: listen on %s port %d: %w", device, port, err)
	}
	p := ipv4.NewPacketConn(conn)
	if err := p.SetControlMessage(ipv4.FlagDst|ipv4.FlagInterface, true); err != nil {
		p.Close()
		return nil, fmt.Errorf("pcp: IP_PKTINFO on %s port %d: %w", device, port, err)
	}
	return p, nil
}

// serve reads one socket until it is closed. Answers to suspect requests
// go out through the main socket: the client sent to Port, and an answer
// from SuspectPort would not be taken for the server's.
func (s *Server) serve(in *inside, conn *ipv4.PacketConn, suspect bool) error {
	buf := make([]byte, readBuffer)
	for {
		n, cm, src, err := conn.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("pcp: read on %s: %w", in.name, err)
		}
		ua, ok := src.(*net.UDPAddr)
		if !ok {
			continue
		}
		from := ua.AddrPort()
		out := s.handle(buf[:n], from.Addr().Unmap(), suspect)
		if out == nil {
			continue
		}
		s.reply(in, out, cm, from)
	}
}

// reply sends from the address the request was sent to. One sent to a
// broadcast address cannot be answered from it, and the kernel says so;
// then the answer goes from the interface's own address.
func (s *Server) reply(in *inside, out []byte, cm *ipv4.ControlMessage, to netip.AddrPort) {
	dst := net.UDPAddrFromAddrPort(to)
	if cm != nil && cm.Dst != nil && !cm.Dst.IsMulticast() && !cm.Dst.Equal(net.IPv4bcast) {
		if _, err := in.main.WriteTo(out, &ipv4.ControlMessage{Src: cm.Dst}, dst); err == nil {
			return
		}
	}
	if _, err := in.main.WriteTo(out, nil, dst); err != nil {
		s.mu.Lock()
		s.stats.dropped[DropSendFailed]++
		s.mu.Unlock()
		s.log.Warn("pcp answer not sent", logattr.Interface, in.name, logattr.Err, withoutAddresses(err))
	}
}

// sendTo sends an unsolicited message (an announcement) through in's
// main socket.
func sendTo(in *inside, b []byte, to netip.AddrPort) error {
	_, err := in.main.WriteTo(b, nil, net.UDPAddrFromAddrPort(to))
	return err
}

// withoutAddresses is a socket error without the addresses a *net.OpError
// names, so that a log line does not carry the client's address.
func withoutAddresses(err error) error {
	var op *net.OpError
	if errors.As(err, &op) {
		return op.Err
	}
	return err
}
