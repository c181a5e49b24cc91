// Package export sends block events to the collectors an operator already
// runs: IPFIX (RFC 7011) with the NAT port-block events of RFC 8158, and
// syslog (RFC 5424). It exports exactly what the record store was told: a
// port block was allocated to a subscriber, or de-allocated, at a time.
// Nothing else ever leaves: no destination, no flow, no subscriber index.
//
// The exporter hangs off the Recorder (events.Options.Observers): it sees
// each batch after it is on disk, so nothing is exported that the store
// does not hold. The observer only queues; a goroutine sends, so a slow or
// absent collector never delays the records. Both transports are
// best-effort (UDP, or TCP without a spool): the store is the record of
// evidence, the export is a copy for the collector.
//
// # IPFIX encoding
//
// One template (ID 256) carries every event, with these IANA Information
// Elements (the ones RFC 8158 lists for port-block allocation and
// de-allocation):
//
//	323 observationTimeMilliseconds  8  the event's time (ms since the Unix epoch)
//	230 natEvent                     1  16 allocation, 17 de-allocation
//	  8 sourceIPv4Address            4  the subscriber's inside address
//	225 postNATSourceIPv4Address     4  the public address
//	361 portRangeStart               2  first port of the block
//	362 portRangeEnd                 2  last port of the block
//	363 portRangeStepSize            2  always 1: the block is contiguous
//	364 portRangeNumPorts            2  portRangeEnd - portRangeStart + 1
//
// The template goes out when the exporter starts, in front of the first
// data set, and again every template_refresh, as RFC 7011 asks of
// UDP exporters. The header's sequence number counts the data records sent
// before the message (RFC 7011 §3.1). Debian 12's nfcapd/nfdump (1.7.1)
// decodes the time, the event and both addresses of these records but not
// elements 361-364, which later nfdump versions print as the NAT block.
//
// The encoder is this package's own, about a hundred lines, rather than
// github.com/vmware/go-ipfix, the maintained Go IPFIX library, which was
// tried and works with nfcapd. It does not fit an agent that must keep
// exporting across collector restarts: it sends over a connected UDP socket
// and closes the exporting process for good when a template refresh fails,
// which one ICMP port-unreachable from a restarting collector causes; it
// logs through klog's globals rather than the agent's slog logger; and it
// brings DTLS, klog and five other modules for a single fixed template.
// Here the socket is unconnected, so a collector that is down costs the
// datagrams sent meanwhile and nothing more.
//
// # Syslog encoding
//
// One RFC 5424 message per event, facility local0, severity informational,
// MSGID BLOCK-ALLOC or BLOCK-RELEASE, and the same fields as structured
// data under the SD-ID blocknat@32473 (32473 is the example enterprise
// number of RFC 5612; blocknat has no number of its own):
//
//	<134>1 2026-11-20T12:00:01.123456Z router blocknat 812 BLOCK-ALLOC [blocknat@32473 natEvent="16" sourceIPv4Address="100.64.0.3" postNATSourceIPv4Address="198.51.100.10" portRangeStart="1528" portRangeEnd="2031"] port block allocation 100.64.0.3 -> 198.51.100.10 ports 1528-2031
//
// Over UDP each message is one datagram (RFC 5426); over TCP messages are
// framed by octet counting (RFC 6587 §3.4.1).
package export

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/blocknat/blocknat/userspace/logattr"
	"github.com/blocknat/blocknat/userspace/store"
)

// Kind is what happened to a block. Its values are the natEvent values of
// the IANA "NAT Event Type" registry (RFC 8158).
type Kind uint8

const (
	// Allocation: the block became the subscriber's (natEvent 16).
	Allocation Kind = 16
	// Deallocation: the subscriber released the block (natEvent 17).
	Deallocation Kind = 17
)

func (k Kind) String() string {
	switch k {
	case Allocation:
		return "allocation"
	case Deallocation:
		return "de-allocation"
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

// Event is one exported block event: the block fields and nothing else.
type Event struct {
	Kind           Kind
	Time           time.Time
	Inside         netip.Addr // the subscriber's inside IPv4 address
	Public         netip.Addr // the public IPv4 address
	PortLo, PortHi uint16
}

// Options configure New. A nil IPFIX or Syslog leaves that exporter off.
type Options struct {
	IPFIX  *IPFIXOptions
	Syslog *SyslogOptions
	// QueueLength bounds the batches waiting to be sent (default 1024).
	// Beyond it new batches are dropped and counted, never waited for.
	QueueLength int
	Logger      *slog.Logger
	// Now is the clock for message headers (default time.Now).
	Now func() time.Time
}

// IPFIXOptions configure the IPFIX exporter.
type IPFIXOptions struct {
	Collector         netip.AddrPort
	TemplateRefresh   time.Duration // default 10m
	ObservationDomain uint32
}

// SyslogOptions configure the syslog exporter.
type SyslogOptions struct {
	Address netip.AddrPort
	Network string // "udp" (default) or "tcp"
	AppName string // default "blocknat"
	// Hostname is the HOSTNAME field (default os.Hostname, "-" when unknown).
	Hostname string
}

// sender is one transport.
type sender interface {
	send(events []Event) error
	close() error
}

// Exporter queues the Recorder's batches and sends them.
type Exporter struct {
	log     *slog.Logger
	ipfix   *ipfixSender
	senders []namedSender

	mu     sync.Mutex // guards open, closed and queue sends
	open   map[blockKey]struct{}
	closed bool
	queue  chan []Event

	done    chan struct{}
	dropped atomic.Uint64
	sent    atomic.Uint64
	failed  atomic.Uint64
}

type namedSender struct {
	name    string
	s       sender
	failing bool
}

type blockKey struct {
	subscriber uint32
	public     netip.Addr
	portLo     uint16
}

// New opens the configured exporters and starts sending. It returns nil,
// nil when neither is configured. Close stops it.
func New(opts Options) (*Exporter, error) {
	if opts.IPFIX == nil && opts.Syslog == nil {
		return nil, nil
	}
	if opts.QueueLength <= 0 {
		opts.QueueLength = 1024
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	var senders []namedSender
	var ipfix *ipfixSender
	if opts.IPFIX != nil {
		s, err := newIPFIX(*opts.IPFIX, opts.Now)
		if err != nil {
			return nil, fmt.Errorf("export.ipfix: %w", err)
		}
		ipfix = s
		senders = append(senders, namedSender{name: "ipfix", s: s})
		// Collectors learn the template before any data arrives.
		if err := s.sendTemplate(); err != nil {
			log.Warn("ipfix template not sent; it is sent again with the first event", logattr.Err, err.Error())
		}
	}
	if opts.Syslog != nil {
		s, err := newSyslog(*opts.Syslog)
		if err != nil {
			if ipfix != nil {
				ipfix.close()
			}
			return nil, fmt.Errorf("export.syslog: %w", err)
		}
		senders = append(senders, namedSender{name: "syslog", s: s})
	}
	return start(log, opts.QueueLength, ipfix, senders), nil
}

func start(log *slog.Logger, queueLength int, ipfix *ipfixSender, senders []namedSender) *Exporter {
	e := &Exporter{log: log, ipfix: ipfix, senders: senders, open: map[blockKey]struct{}{},
		queue: make(chan []Event, queueLength), done: make(chan struct{})}
	go e.run()
	return e
}

// Observers is what goes into events.Options.Observers: nothing when e is
// nil (no exporter configured).
func (e *Exporter) Observers() []func([]store.Op) {
	if e == nil {
		return nil
	}
	return []func([]store.Op){e.Observe}
}

// Observe is the Recorder's observer (events.Options.Observers): it turns
// a batch that is on disk into events and queues them. It never blocks.
func (e *Exporter) Observe(ops []store.Op) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return
	}
	events := e.eventsOf(ops)
	if len(events) == 0 {
		return
	}
	select {
	case e.queue <- events:
	default:
		if e.dropped.Add(uint64(len(events))) == uint64(len(events)) {
			e.log.Warn("export queue full: block events dropped from the export (the store has them)", logattr.Count, len(events))
		}
	}
}

// eventsOf keeps an allocation only when the block is not already open:
// the store merges a second activation of an open block (the reconciler's
// and the ring buffer's report of one activation) into the first, and so
// does the export.
func (e *Exporter) eventsOf(ops []store.Op) []Event {
	var out []Event
	for _, op := range ops {
		// The times the store keeps (to the millisecond, rounded
		// outward), so the export says what a lookup will.
		r := op.Record.AsStored()
		key := blockKey{subscriber: r.Subscriber, public: r.Public, portLo: r.PortLo}
		ev := Event{Inside: r.Inside, Public: r.Public, PortLo: r.PortLo, PortHi: r.PortHi}
		switch op.Kind {
		case store.OpActivate:
			if _, dup := e.open[key]; dup {
				continue
			}
			e.open[key] = struct{}{}
			ev.Kind, ev.Time = Allocation, r.Start
		case store.OpRelease:
			delete(e.open, key)
			ev.Kind, ev.Time = Deallocation, r.End
		default:
			continue
		}
		out = append(out, ev)
	}
	return out
}

func (e *Exporter) run() {
	defer close(e.done)
	var refresh <-chan time.Time
	if e.ipfix != nil {
		// Checked more often than the period, so that an idle exporter
		// still refreshes within a fraction of it.
		t := time.NewTicker(max(e.ipfix.opts.TemplateRefresh/4, 250*time.Millisecond))
		defer t.Stop()
		refresh = t.C
	}
	for {
		select {
		case events, ok := <-e.queue:
			if !ok {
				return
			}
			e.deliver(events)
		case <-refresh:
			if err := e.ipfix.refresh(); err != nil {
				e.log.Warn("ipfix template refresh failed", logattr.Err, err.Error())
			}
		}
	}
}

func (e *Exporter) deliver(events []Event) {
	for i := range e.senders {
		ns := &e.senders[i]
		err := ns.s.send(events)
		switch {
		case err != nil:
			e.failed.Add(uint64(len(events)))
			if !ns.failing {
				e.log.Error("block events not exported; retried with the next events", "exporter", ns.name, logattr.Err, err.Error())
			}
			ns.failing = true
		default:
			e.sent.Add(uint64(len(events)))
			if ns.failing {
				e.log.Info("block events are exported again", "exporter", ns.name)
			}
			ns.failing = false
		}
	}
}

// Stats counts events: sent (per exporter that took them), failed (per
// exporter that refused them) and dropped because the queue was full.
type Stats struct {
	Sent, Failed, Dropped uint64
}

// Stats reports what the exporter did so far.
func (e *Exporter) Stats() Stats {
	return Stats{Sent: e.sent.Load(), Failed: e.failed.Load(), Dropped: e.dropped.Load()}
}

// closeTimeout bounds how long Close waits for queued events to leave.
const closeTimeout = 5 * time.Second

// Close sends what is queued (for at most a few seconds) and closes the
// sockets. Call it after the Recorder has stopped, so that its last batch
// is exported too. A nil Exporter closes without error.
func (e *Exporter) Close() error {
	if e == nil {
		return nil
	}
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	e.closed = true
	close(e.queue)
	e.mu.Unlock()
	select {
	case <-e.done:
	case <-time.After(closeTimeout):
		e.log.Warn("export: queued block events not sent at shutdown", logattr.Count, len(e.queue))
	}
	return e.closeSenders()
}

func (e *Exporter) closeSenders() error {
	var errs []error
	for _, ns := range e.senders {
		if err := ns.s.close(); err != nil {
			errs = append(errs, fmt.Errorf("close %s exporter: %w", ns.name, err))
		}
	}
	return errors.Join(errs...)
}
