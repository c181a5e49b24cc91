// Package exporttest checks what the export package sends, with parts that
// share no code with it: an RFC 7011 decoder written from the RFC, a UDP
// collector that decodes (and can forward the same bytes to a real
// collector), an RFC 5424 parser, and runners for Debian's nfcapd and
// nfdump. The export package's tests and the end-to-end tests use it.
package exporttest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/blocknat/blocknat/test/testutil"
)

// Field is a template's field specifier.
type Field struct{ ID, Length uint16 }

// Message is one decoded IPFIX message.
type Message struct {
	Version, Length   uint16
	ExportTime        uint32
	Sequence          uint32
	ObservationDomain uint32
	// Templates are the template records in the message, by template ID.
	Templates map[uint16][]Field
	// Records are the data records, each element's bytes by element ID.
	Records []Record
	Raw     []byte
}

// Record is one data record: element ID -> value bytes.
type Record map[uint16][]byte

// Uint reads an unsigned element of any length.
func (r Record) Uint(id uint16) (uint64, bool) {
	b, ok := r[id]
	if !ok || len(b) > 8 {
		return 0, false
	}
	var v uint64
	for _, c := range b {
		v = v<<8 | uint64(c)
	}
	return v, true
}

// Addr reads an IPv4 address element.
func (r Record) Addr(id uint16) (netip.Addr, bool) {
	b, ok := r[id]
	if !ok || len(b) != 4 {
		return netip.Addr{}, false
	}
	return netip.AddrFrom4([4]byte(b)), true
}

// Decoder decodes a stream of messages, keeping the templates it learnt.
type Decoder struct {
	templates map[uint16][]Field
}

// NewDecoder returns a decoder that knows no template yet.
func NewDecoder() *Decoder { return &Decoder{templates: map[uint16][]Field{}} }

// Decode decodes one message. A data set whose template is unknown is an
// error: the exporter must send the template first.
func (d *Decoder) Decode(b []byte) (Message, error) {
	m := Message{Templates: map[uint16][]Field{}, Raw: append([]byte(nil), b...)}
	b = m.Raw // records point into it; the caller may reuse its buffer
	if len(b) < 16 {
		return m, fmt.Errorf("message of %d bytes is shorter than its header", len(b))
	}
	be := binary.BigEndian
	m.Version, m.Length = be.Uint16(b), be.Uint16(b[2:])
	m.ExportTime, m.Sequence, m.ObservationDomain = be.Uint32(b[4:]), be.Uint32(b[8:]), be.Uint32(b[12:])
	if m.Version != 10 {
		return m, fmt.Errorf("version %d, want 10", m.Version)
	}
	if int(m.Length) != len(b) {
		return m, fmt.Errorf("header length %d, datagram %d bytes", m.Length, len(b))
	}
	for rest := b[16:]; len(rest) > 0; {
		if len(rest) < 4 {
			return m, errors.New("trailing bytes shorter than a set header")
		}
		id, n := be.Uint16(rest), int(be.Uint16(rest[2:]))
		if n < 4 || n > len(rest) {
			return m, fmt.Errorf("set %d: length %d of %d left", id, n, len(rest))
		}
		body := rest[4:n]
		rest = rest[n:]
		switch {
		case id == 2:
			for len(body) >= 4 {
				tid, count := be.Uint16(body), int(be.Uint16(body[2:]))
				body = body[4:]
				if len(body) < 4*count {
					return m, fmt.Errorf("template %d: %d fields announced, %d bytes left", tid, count, len(body))
				}
				fields := make([]Field, count)
				for i := range fields {
					fields[i] = Field{ID: be.Uint16(body[4*i:]), Length: be.Uint16(body[4*i+2:])}
					if fields[i].ID&0x8000 != 0 {
						return m, fmt.Errorf("template %d: enterprise element, not expected", tid)
					}
				}
				body = body[4*count:]
				m.Templates[tid], d.templates[tid] = fields, fields
			}
		case id < 256:
			return m, fmt.Errorf("set ID %d is reserved or an options template, not expected", id)
		default:
			fields, ok := d.templates[id]
			if !ok {
				return m, fmt.Errorf("data set for template %d before its template", id)
			}
			size := 0
			for _, f := range fields {
				size += int(f.Length)
			}
			for len(body) >= size && size > 0 {
				rec := Record{}
				off := 0
				for _, f := range fields {
					rec[f.ID] = body[off : off+int(f.Length)]
					off += int(f.Length)
				}
				m.Records = append(m.Records, rec)
				body = body[size:]
			}
			if len(body) > 3 { // more than padding
				return m, fmt.Errorf("data set %d: %d bytes left over", id, len(body))
			}
		}
	}
	return m, nil
}

// Collector is a UDP socket that decodes every datagram and, when asked,
// forwards the same bytes to another collector.
type Collector struct {
	conn    *net.UDPConn
	forward *net.UDPAddr
	mu      sync.Mutex
	msgs    []Message
	errs    []error
	done    chan struct{}
}

// Listen opens a Collector on addr (port 0 picks one). Call it inside the
// network namespace it should listen in; the socket stays there. forward
// may be the zero AddrPort.
func Listen(addr, forward netip.AddrPort) (*Collector, error) {
	conn, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(addr))
	if err != nil {
		return nil, err
	}
	c := &Collector{conn: conn, done: make(chan struct{})}
	if forward.IsValid() {
		c.forward = net.UDPAddrFromAddrPort(forward)
	}
	go c.serve()
	return c, nil
}

// Addr is where the collector listens.
func (c *Collector) Addr() netip.AddrPort { return c.conn.LocalAddr().(*net.UDPAddr).AddrPort() }

func (c *Collector) serve() {
	defer close(c.done)
	dec := NewDecoder()
	buf := make([]byte, 65535)
	for {
		n, _, err := c.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		if c.forward != nil {
			c.conn.WriteToUDP(buf[:n], c.forward)
		}
		m, err := dec.Decode(buf[:n])
		c.mu.Lock()
		if err != nil {
			c.errs = append(c.errs, err)
		} else {
			c.msgs = append(c.msgs, m)
		}
		c.mu.Unlock()
	}
}

// Messages returns the messages decoded so far and the decoding errors.
func (c *Collector) Messages() ([]Message, []error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Message(nil), c.msgs...), append([]error(nil), c.errs...)
}

// Records returns every data record received so far.
func (c *Collector) Records() []Record {
	msgs, _ := c.Messages()
	var out []Record
	for _, m := range msgs {
		out = append(out, m.Records...)
	}
	return out
}

// Close stops the collector.
func (c *Collector) Close() error {
	err := c.conn.Close()
	<-c.done
	return err
}

// Commander makes a command, in a namespace or not.
type Commander func(ctx context.Context, argv ...string) *exec.Cmd

// Local runs commands in the current namespace.
func Local(ctx context.Context, argv ...string) *exec.Cmd {
	return exec.CommandContext(ctx, argv[0], argv[1:]...)
}

// Nfcapd is a running nfcapd writing into Dir.
type Nfcapd struct {
	Dir  string
	cmd  *exec.Cmd
	log  testutil.Buffer
	done chan error
}

// StartNfcapd runs nfcapd listening on addr, writing files into dir.
func StartNfcapd(ctx context.Context, run Commander, addr netip.AddrPort, dir string) (*Nfcapd, error) {
	n := &Nfcapd{Dir: dir, done: make(chan error, 1)}
	// -t: one file per hour, so that only Stop closes it.
	n.cmd = run(context.WithoutCancel(ctx), "nfcapd", "-b", addr.Addr().String(), "-p", strconv.Itoa(int(addr.Port())),
		"-w", dir, "-t", "3600")
	n.cmd.Stdout, n.cmd.Stderr = &n.log, &n.log
	if err := n.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start nfcapd: %w", err)
	}
	go func() { n.done <- n.cmd.Wait() }()
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(n.logText(), "Startup") {
		select {
		case err := <-n.done:
			return nil, fmt.Errorf("nfcapd exited (%v): %s", err, n.logText())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			n.cmd.Process.Kill()
			return nil, fmt.Errorf("nfcapd did not start: %s", n.logText())
		}
	}
	return n, nil
}

func (n *Nfcapd) logText() string { return n.log.String() }

// Stop sends SIGTERM, which makes nfcapd close its current file under its
// final name, and returns the files it wrote and its log.
func (n *Nfcapd) Stop() ([]string, string, error) {
	n.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-n.done:
	case <-time.After(10 * time.Second):
		n.cmd.Process.Kill()
		<-n.done
		return nil, n.logText(), errors.New("nfcapd ignored SIGTERM")
	}
	files, err := filepath.Glob(filepath.Join(n.Dir, "nfcapd.2*"))
	return files, n.logText(), err
}

// SequenceErrors reads the count nfcapd prints when it stops.
func SequenceErrors(log string) (int, bool) {
	m := regexp.MustCompile(`Sequence Errors: (\d+)`).FindStringSubmatch(log)
	if m == nil {
		return 0, false
	}
	v, _ := strconv.Atoi(m[1])
	return v, true
}

// NfdumpRecord is one record of `nfdump -o raw`: label -> value, as
// printed ("src addr" -> "100.64.0.3").
type NfdumpRecord map[string]string

// NfdumpRaw runs `nfdump -r FILE -o raw` on each file and parses the
// records.
func NfdumpRaw(ctx context.Context, files ...string) ([]NfdumpRecord, string, error) {
	var all []NfdumpRecord
	var text strings.Builder
	for _, f := range files {
		out, err := exec.CommandContext(ctx, "nfdump", "-r", f, "-o", "raw").CombinedOutput()
		text.Write(out)
		if err != nil {
			return nil, text.String(), fmt.Errorf("nfdump -r %s: %w", f, err)
		}
		all = append(all, ParseNfdumpRaw(out)...)
	}
	return all, text.String(), nil
}

// ParseNfdumpRaw parses `nfdump -o raw` output: records start with
// "Flow Record:", fields are "  label = value".
func ParseNfdumpRaw(out []byte) []NfdumpRecord {
	var recs []NfdumpRecord
	var cur NfdumpRecord
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "Flow Record:") {
			cur = NfdumpRecord{}
			recs = append(recs, cur)
			continue
		}
		label, value, ok := strings.Cut(line, "=")
		if cur == nil || !ok || !strings.HasPrefix(line, "  ") {
			continue
		}
		cur[strings.TrimSpace(label)] = strings.TrimSpace(value)
	}
	return recs
}

// Find returns the value of the first label that contains substr
// (case-insensitive), so that tests read across nfdump versions' labels.
func (r NfdumpRecord) Find(substr string) (string, bool) {
	for k, v := range r {
		if strings.Contains(strings.ToLower(k), strings.ToLower(substr)) {
			return v, true
		}
	}
	return "", false
}

// SyslogMessage is one parsed RFC 5424 message.
type SyslogMessage struct {
	PRI                              int
	Timestamp                        time.Time
	Hostname, AppName, ProcID, MsgID string
	SDID                             string
	Params                           map[string]string
	Msg                              string
}

var (
	syslogHeader = regexp.MustCompile(`^<(\d{1,3})>1 (\S+) (\S+) (\S+) (\S+) (\S+) \[(\S+)((?: [^ =\]]+="(?:[^"\\\]]|\\.)*")*)\](?: (.*))?$`)
	sdParam      = regexp.MustCompile(` ([^ =\]]+)="((?:[^"\\\]]|\\.)*)"`)
)

// ParseSyslog parses one RFC 5424 message with a single SD-ELEMENT.
func ParseSyslog(line string) (SyslogMessage, error) {
	m := syslogHeader.FindStringSubmatch(line)
	if m == nil {
		return SyslogMessage{}, fmt.Errorf("not an RFC 5424 message with one SD-ELEMENT: %q", line)
	}
	pri, _ := strconv.Atoi(m[1])
	ts, err := time.Parse(time.RFC3339Nano, m[2])
	if err != nil {
		return SyslogMessage{}, fmt.Errorf("TIMESTAMP %q: %w", m[2], err)
	}
	msg := SyslogMessage{PRI: pri, Timestamp: ts, Hostname: m[3], AppName: m[4], ProcID: m[5], MsgID: m[6], SDID: m[7],
		Params: map[string]string{}, Msg: m[9]}
	for _, p := range sdParam.FindAllStringSubmatch(m[8], -1) {
		msg.Params[p[1]] = p[2]
	}
	return msg, nil
}

// SyslogUDP collects RFC 5424 datagrams.
type SyslogUDP struct {
	conn  *net.UDPConn
	mu    sync.Mutex
	lines []string
	done  chan struct{}
}

// ListenSyslogUDP listens on addr (port 0 picks one).
func ListenSyslogUDP(addr netip.AddrPort) (*SyslogUDP, error) {
	conn, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(addr))
	if err != nil {
		return nil, err
	}
	s := &SyslogUDP{conn: conn, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		buf := make([]byte, 65535)
		for {
			n, _, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			s.mu.Lock()
			s.lines = append(s.lines, string(buf[:n]))
			s.mu.Unlock()
		}
	}()
	return s, nil
}

// Addr is where it listens.
func (s *SyslogUDP) Addr() netip.AddrPort { return s.conn.LocalAddr().(*net.UDPAddr).AddrPort() }

// Lines returns the messages received so far.
func (s *SyslogUDP) Lines() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.lines...)
}

// Close stops it.
func (s *SyslogUDP) Close() error {
	err := s.conn.Close()
	<-s.done
	return err
}

// ReadOctetCounted reads RFC 6587 octet-counted frames ("LEN SP MSG").
func ReadOctetCounted(r *bufio.Reader) (string, error) {
	lenText, err := r.ReadString(' ')
	if err != nil {
		return "", err
	}
	n, err := strconv.Atoi(strings.TrimSuffix(lenText, " "))
	if err != nil || n <= 0 {
		return "", fmt.Errorf("frame length %q", lenText)
	}
	buf := make([]byte, n)
	if _, err := io.ReadFull(r, buf); err != nil {
		return "", err
	}
	return string(buf), nil
}
