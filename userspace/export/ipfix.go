package export

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"
)

// IANA IPFIX Information Element IDs of the port-block template.
const (
	ieSourceIPv4Address           = 8
	iePostNATSourceIPv4Address    = 225
	ieNATEvent                    = 230
	ieObservationTimeMilliseconds = 323
	iePortRangeStart              = 361
	iePortRangeEnd                = 362
	iePortRangeStepSize           = 363
	iePortRangeNumPorts           = 364
)

// RFC 7011 framing.
const (
	ipfixVersion      = 10
	messageHeaderLen  = 16
	setHeaderLen      = 4
	templateSetID     = 2
	portBlockTemplate = 256 // the first ID a Data Set may use
)

// portBlockFields is the template, in record order: {element ID, length}.
var portBlockFields = [...][2]uint16{
	{ieObservationTimeMilliseconds, 8},
	{ieNATEvent, 1},
	{ieSourceIPv4Address, 4},
	{iePostNATSourceIPv4Address, 4},
	{iePortRangeStart, 2},
	{iePortRangeEnd, 2},
	{iePortRangeStepSize, 2},
	{iePortRangeNumPorts, 2},
}

const (
	recordLen = 8 + 1 + 4 + 4 + 2 + 2 + 2 + 2
	// templateSetLen: set header, template record header, field specifiers.
	templateSetLen = setHeaderLen + 4 + 4*len(portBlockFields)
	// recordsPerMessage keeps a message with the template in it under
	// 1400 bytes, so it is never fragmented on an Ethernet path.
	recordsPerMessage = (1400 - messageHeaderLen - templateSetLen - setHeaderLen) / recordLen
)

type ipfixSender struct {
	opts IPFIXOptions
	now  func() time.Time
	conn *net.UDPConn

	mu           sync.Mutex // the run loop sends; tests call in too
	sequence     uint32     // data records sent so far, modulo 2^32
	lastTemplate time.Time
	sentData     bool
}

func newIPFIX(opts IPFIXOptions, now func() time.Time) (*ipfixSender, error) {
	if opts.TemplateRefresh <= 0 {
		opts.TemplateRefresh = 10 * time.Minute
	}
	network := "udp4"
	if !opts.Collector.Addr().Unmap().Is4() {
		network = "udp6"
	}
	// Unconnected: an ICMP error from a collector that is down must not
	// turn into an error on a later, unrelated write.
	conn, err := net.ListenUDP(network, nil)
	if err != nil {
		return nil, fmt.Errorf("open UDP socket: %w", err)
	}
	return &ipfixSender{opts: opts, now: now, conn: conn}, nil
}

// sendTemplate sends a message holding only the template.
func (s *ipfixSender) sendTemplate() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.write(s.message(nil, true))
}

// refresh re-sends the template once template_refresh has passed since it
// was last sent.
func (s *ipfixSender) refresh() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.now().Sub(s.lastTemplate) < s.opts.TemplateRefresh {
		return nil
	}
	return s.write(s.message(nil, true))
}

func (s *ipfixSender) send(events []Event) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for len(events) > 0 {
		n := min(len(events), recordsPerMessage)
		// The template rides in front of the first data set, and again
		// whenever it is due, so a collector that started after the
		// agent can decode from the first event it receives.
		withTemplate := !s.sentData || s.now().Sub(s.lastTemplate) >= s.opts.TemplateRefresh
		if err := s.write(s.message(events[:n], withTemplate)); err != nil {
			errs = append(errs, err)
		}
		// RFC 7011 §3.1: the sequence number counts records sent,
		// lost or not, so the collector can tell that it missed them.
		s.sequence += uint32(n)
		s.sentData = true
		events = events[n:]
	}
	return errors.Join(errs...)
}

// message encodes one IPFIX message; withTemplate puts the template set
// first. It notes the template as sent.
func (s *ipfixSender) message(events []Event, withTemplate bool) []byte {
	now := s.now()
	size := messageHeaderLen
	if withTemplate {
		size += templateSetLen
	}
	if len(events) > 0 {
		size += setHeaderLen + len(events)*recordLen
	}
	b := make([]byte, 0, size)
	b = binary.BigEndian.AppendUint16(b, ipfixVersion)
	b = binary.BigEndian.AppendUint16(b, uint16(size))
	b = binary.BigEndian.AppendUint32(b, uint32(now.Unix()))
	b = binary.BigEndian.AppendUint32(b, s.sequence)
	b = binary.BigEndian.AppendUint32(b, s.opts.ObservationDomain)
	if withTemplate {
		b = binary.BigEndian.AppendUint16(b, templateSetID)
		b = binary.BigEndian.AppendUint16(b, uint16(templateSetLen))
		b = binary.BigEndian.AppendUint16(b, portBlockTemplate)
		b = binary.BigEndian.AppendUint16(b, uint16(len(portBlockFields)))
		for _, f := range portBlockFields {
			b = binary.BigEndian.AppendUint16(b, f[0])
			b = binary.BigEndian.AppendUint16(b, f[1])
		}
		s.lastTemplate = now
	}
	if len(events) > 0 {
		b = binary.BigEndian.AppendUint16(b, portBlockTemplate)
		b = binary.BigEndian.AppendUint16(b, uint16(setHeaderLen+len(events)*recordLen))
		for _, ev := range events {
			b = appendRecord(b, ev)
		}
	}
	return b
}

func appendRecord(b []byte, ev Event) []byte {
	b = binary.BigEndian.AppendUint64(b, uint64(ev.Time.UnixMilli()))
	b = append(b, byte(ev.Kind))
	inside, public := ev.Inside.Unmap().As4(), ev.Public.Unmap().As4()
	b = append(b, inside[:]...)
	b = append(b, public[:]...)
	b = binary.BigEndian.AppendUint16(b, ev.PortLo)
	b = binary.BigEndian.AppendUint16(b, ev.PortHi)
	b = binary.BigEndian.AppendUint16(b, 1)
	return binary.BigEndian.AppendUint16(b, ev.PortHi-ev.PortLo+1)
}

func (s *ipfixSender) write(msg []byte) error {
	if _, err := s.conn.WriteToUDPAddrPort(msg, netip.AddrPortFrom(s.opts.Collector.Addr().Unmap(), s.opts.Collector.Port())); err != nil {
		return fmt.Errorf("send to collector %s: %w", s.opts.Collector, err)
	}
	return nil
}

func (s *ipfixSender) close() error { return s.conn.Close() }
