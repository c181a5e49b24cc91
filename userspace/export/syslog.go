package export

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"time"
)

// RFC 5424 fields that never change.
const (
	// syslogPRI is facility local0 (16) * 8 + severity informational (6).
	syslogPRI = 16*8 + 6
	// SyslogSDID names the structured data element; 32473 is RFC 5612's
	// example enterprise number, as blocknat has none.
	SyslogSDID = "blocknat@32473"
	// syslogWriteTimeout bounds one TCP write, so that a stuck receiver
	// delays the export queue, never the agent.
	syslogWriteTimeout = 2 * time.Second
)

// MSGIDs of the two events.
const (
	MsgIDAllocation   = "BLOCK-ALLOC"
	MsgIDDeallocation = "BLOCK-RELEASE"
)

type syslogSender struct {
	opts     SyslogOptions
	hostname string
	pid      int
	udp      *net.UDPConn
	tcp      net.Conn // dialled on first use and after a failure
}

func newSyslog(opts SyslogOptions) (*syslogSender, error) {
	if opts.Network == "" {
		opts.Network = "udp"
	}
	if opts.AppName == "" {
		opts.AppName = "blocknat"
	}
	host := opts.Hostname
	if host == "" {
		host, _ = os.Hostname()
	}
	s := &syslogSender{opts: opts, hostname: printableOrNil(host, 255), pid: os.Getpid()}
	switch opts.Network {
	case "udp":
		network := "udp4"
		if !opts.Address.Addr().Unmap().Is4() {
			network = "udp6"
		}
		conn, err := net.ListenUDP(network, nil)
		if err != nil {
			return nil, fmt.Errorf("open UDP socket: %w", err)
		}
		s.udp = conn
	case "tcp":
	default:
		return nil, fmt.Errorf("network %q is not udp or tcp", opts.Network)
	}
	return s, nil
}

// Format renders one event as an RFC 5424 message (without transport
// framing).
func (s *syslogSender) format(ev Event) []byte {
	msgID := MsgIDAllocation
	if ev.Kind == Deallocation {
		msgID = MsgIDDeallocation
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "<%d>1 %s %s %s %d %s ", syslogPRI, ev.Time.UTC().Format("2006-01-02T15:04:05.000000Z07:00"),
		s.hostname, s.opts.AppName, s.pid, msgID)
	// Every value is a number or an address, so none needs the escapes
	// of RFC 5424 §6.3.3.
	fmt.Fprintf(&b, `[%s natEvent="%d" sourceIPv4Address="%s" postNATSourceIPv4Address="%s" portRangeStart="%d" portRangeEnd="%d"]`,
		SyslogSDID, uint8(ev.Kind), ev.Inside, ev.Public, ev.PortLo, ev.PortHi)
	fmt.Fprintf(&b, " port block %s %s -> %s ports %d-%d", ev.Kind, ev.Inside, ev.Public, ev.PortLo, ev.PortHi)
	return b.Bytes()
}

func (s *syslogSender) send(events []Event) error {
	if s.udp != nil {
		to := netip.AddrPortFrom(s.opts.Address.Addr().Unmap(), s.opts.Address.Port())
		for _, ev := range events {
			if _, err := s.udp.WriteToUDPAddrPort(s.format(ev), to); err != nil {
				return fmt.Errorf("send to %s: %w", s.opts.Address, err)
			}
		}
		return nil
	}
	var frames bytes.Buffer
	for _, ev := range events {
		msg := s.format(ev)
		frames.WriteString(strconv.Itoa(len(msg)))
		frames.WriteByte(' ')
		frames.Write(msg)
	}
	if s.tcp == nil {
		conn, err := net.DialTimeout("tcp", s.opts.Address.String(), syslogWriteTimeout)
		if err != nil {
			return fmt.Errorf("connect to %s: %w", s.opts.Address, err)
		}
		s.tcp = conn
	}
	s.tcp.SetWriteDeadline(time.Now().Add(syslogWriteTimeout))
	if _, err := s.tcp.Write(frames.Bytes()); err != nil {
		// A half-written frame would corrupt the stream: start afresh.
		s.tcp.Close()
		s.tcp = nil
		return fmt.Errorf("send to %s: %w", s.opts.Address, err)
	}
	return nil
}

func (s *syslogSender) close() error {
	if s.udp != nil {
		return s.udp.Close()
	}
	if s.tcp != nil {
		return s.tcp.Close()
	}
	return nil
}

// printableOrNil returns s when it is a valid RFC 5424 header field
// (1 to max printable US-ASCII characters), else the NILVALUE "-".
func printableOrNil(s string, max int) string {
	if s == "" || len(s) > max {
		return "-"
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 33 || s[i] > 126 {
			return "-"
		}
	}
	return s
}
