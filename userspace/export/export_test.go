package export

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/blocknat/blocknat/test/netns"
	"github.com/blocknat/blocknat/test/testutil"
	"github.com/blocknat/blocknat/userspace/export/exporttest"
	"github.com/blocknat/blocknat/userspace/store"
)

var (
	quiet   = slog.New(slog.NewTextHandler(io.Discard, nil))
	t0      = time.Date(2026, 11, 20, 12, 0, 1, 123456789, time.UTC)
	inside3 = netip.MustParseAddr("100.64.0.3")
	inside2 = netip.MustParseAddr("100.64.0.2")
	public  = netip.MustParseAddr("198.51.100.10")
)

func rec(sub uint32, inside netip.Addr, lo, hi uint16, start time.Time) store.Record {
	return store.Record{Subscriber: sub, Inside: inside, Public: public, PortLo: lo, PortHi: hi, Start: start, Epoch: 1}
}

func activate(r store.Record) store.Op { return store.Op{Kind: store.OpActivate, Record: r} }

func release(r store.Record, end time.Time) store.Op {
	r.End = end
	return store.Op{Kind: store.OpRelease, Record: r}
}

// ops is a day in the life of two blocks: subscriber 3's block is
// announced twice (reconciler, then ring buffer), released, and opened
// again; subscriber 2's is opened once.
func ops() ([]store.Op, []Event) {
	a := rec(3, inside3, 1528, 2031, t0)
	b := rec(2, inside2, 1024, 1527, t0.Add(time.Second))
	again := rec(3, inside3, 1528, 2031, t0.Add(time.Minute))
	in := []store.Op{activate(a), activate(b), activate(rec(3, inside3, 1528, 2031, t0.Add(time.Millisecond))),
		release(a, t0.Add(30*time.Second)), activate(again)}
	// The times the store keeps: starts rounded down to the millisecond,
	// ends up.
	down, up := func(t time.Time) time.Time { return t.Truncate(time.Millisecond) },
		func(t time.Time) time.Time { return t.Add(time.Millisecond - 1).Truncate(time.Millisecond) }
	want := []Event{
		{Kind: Allocation, Time: down(t0), Inside: inside3, Public: public, PortLo: 1528, PortHi: 2031},
		{Kind: Allocation, Time: down(t0.Add(time.Second)), Inside: inside2, Public: public, PortLo: 1024, PortHi: 1527},
		{Kind: Deallocation, Time: up(t0.Add(30 * time.Second)), Inside: inside3, Public: public, PortLo: 1528, PortHi: 2031},
		{Kind: Allocation, Time: down(t0.Add(time.Minute)), Inside: inside3, Public: public, PortLo: 1528, PortHi: 2031},
	}
	return in, want
}

func TestEventsOf(t *testing.T) {
	e := &Exporter{open: map[blockKey]struct{}{}}
	in, want := ops()
	got := e.eventsOf(in)
	if len(got) != len(want) {
		t.Fatalf("events %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("event %d: %+v, want %+v", i, got[i], want[i])
		}
	}
}

func TestNothingConfigured(t *testing.T) {
	e, err := New(Options{Logger: quiet})
	if e != nil || err != nil {
		t.Fatalf("New without exporters: %v, %v; want nil, nil", e, err)
	}
}

// TestIPFIXOnTheWire decodes what the exporter sends with an independent
// RFC 7011 decoder: the template first, then every field of every event,
// and sequence numbers that count data records.
func TestIPFIXOnTheWire(t *testing.T) {
	col, err := exporttest.Listen(netip.MustParseAddrPort("127.0.0.1:0"), netip.AddrPort{})
	if err != nil {
		t.Fatal(err)
	}
	defer col.Close()
	e, err := New(Options{Logger: quiet, IPFIX: &IPFIXOptions{Collector: col.Addr(), TemplateRefresh: time.Hour, ObservationDomain: 7}})
	if err != nil {
		t.Fatal(err)
	}
	in, want := ops()
	e.Observe(in[:2])
	e.Observe(in[2:])
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	msgs := waitMessages(t, col, 3)
	if len(msgs[0].Records) != 0 || len(msgs[0].Templates[256]) != 8 {
		t.Errorf("first message %+v, want the template alone", msgs[0])
	}
	wantFields := []exporttest.Field{{ID: 323, Length: 8}, {ID: 230, Length: 1}, {ID: 8, Length: 4}, {ID: 225, Length: 4},
		{ID: 361, Length: 2}, {ID: 362, Length: 2}, {ID: 363, Length: 2}, {ID: 364, Length: 2}}
	for i, f := range msgs[0].Templates[256] {
		if f != wantFields[i] {
			t.Errorf("template field %d: %+v, want %+v", i, f, wantFields[i])
		}
	}
	if len(msgs[1].Templates) != 1 {
		t.Errorf("the first data message carries no template: a collector started after the agent could not decode it")
	}
	var seq uint32
	var got []exporttest.Record
	for _, m := range msgs {
		if m.ObservationDomain != 7 || m.Sequence != seq {
			t.Errorf("message domain %d sequence %d, want 7 and %d", m.ObservationDomain, m.Sequence, seq)
		}
		if d := time.Since(time.Unix(int64(m.ExportTime), 0)); d < 0 || d > time.Minute {
			t.Errorf("export time %d is not now", m.ExportTime)
		}
		seq += uint32(len(m.Records))
		got = append(got, m.Records...)
	}
	if len(got) != len(want) {
		t.Fatalf("%d records, want %d", len(got), len(want))
	}
	for i, w := range want {
		checkRecord(t, got[i], w)
	}
}

func checkRecord(t *testing.T, r exporttest.Record, w Event) {
	t.Helper()
	ms, _ := r.Uint(323)
	ev, _ := r.Uint(230)
	src, _ := r.Addr(8)
	post, _ := r.Addr(225)
	lo, _ := r.Uint(361)
	hi, _ := r.Uint(362)
	step, _ := r.Uint(363)
	num, _ := r.Uint(364)
	if int64(ms) != w.Time.UnixMilli() || ev != uint64(w.Kind) || src != w.Inside || post != w.Public || lo != uint64(w.PortLo) ||
		hi != uint64(w.PortHi) || step != 1 || num != uint64(w.PortHi-w.PortLo+1) || len(r) != 8 {
		t.Errorf("record time %d event %d %s -> %s ports %d-%d step %d num %d (%d fields), want %+v",
			ms, ev, src, post, lo, hi, step, num, len(r), w)
	}
}

func waitMessages(t *testing.T, col *exporttest.Collector, n int) []exporttest.Message {
	t.Helper()
	var msgs []exporttest.Message
	arrived := testutil.Poll(5*time.Second, func() bool {
		var errs []error
		msgs, errs = col.Messages()
		if len(errs) > 0 {
			t.Fatalf("decode: %v", errs)
		}
		return len(msgs) >= n
	})
	if !arrived {
		t.Fatalf("%d messages, want %d", len(msgs), n)
	}
	return msgs
}

// TestIPFIXSplitsAndRefreshes: a large batch is split into messages that
// stay under 1400 bytes, and an idle exporter sends its template again.
func TestIPFIXSplitsAndRefreshes(t *testing.T) {
	col, err := exporttest.Listen(netip.MustParseAddrPort("127.0.0.1:0"), netip.AddrPort{})
	if err != nil {
		t.Fatal(err)
	}
	defer col.Close()
	e, err := New(Options{Logger: quiet, IPFIX: &IPFIXOptions{Collector: col.Addr(), TemplateRefresh: 300 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	var batch []store.Op
	for i := range 120 {
		batch = append(batch, activate(rec(uint32(i), netip.AddrFrom4([4]byte{100, 64, 0, byte(i)}), 1024, 1527, t0)))
	}
	e.Observe(batch)
	msgs := waitMessages(t, col, 4)
	total := 0
	for _, m := range msgs[1:4] {
		if len(m.Raw) > 1400 {
			t.Errorf("message of %d bytes", len(m.Raw))
		}
		if m.Sequence != uint32(total) {
			t.Errorf("sequence %d, want %d", m.Sequence, total)
		}
		total += len(m.Records)
	}
	if total != 120 {
		t.Errorf("%d records in the first three data messages, want 120", total)
	}
	templates := 0
	for _, m := range waitMessages(t, col, 5) {
		if len(m.Templates) > 0 {
			templates++
		}
	}
	if templates < 3 {
		t.Errorf("%d messages with a template: the start, the first data message and at least one refresh expected", templates)
	}
}

func TestSyslogUDP(t *testing.T) {
	l, err := exporttest.ListenSyslogUDP(netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	e, err := New(Options{Logger: quiet, Syslog: &SyslogOptions{Address: l.Addr(), Hostname: "rtr1"}})
	if err != nil {
		t.Fatal(err)
	}
	in, want := ops()
	e.Observe(in)
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	testutil.Poll(5*time.Second, func() bool { return len(l.Lines()) >= len(want) }) // checkSyslog says what is missing
	checkSyslog(t, l.Lines(), want, "rtr1", "blocknat")
}

func TestSyslogTCP(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	lines := make(chan []string, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			lines <- nil
			return
		}
		defer conn.Close()
		r := bufio.NewReader(conn)
		var got []string
		for {
			msg, err := exporttest.ReadOctetCounted(r)
			if err != nil {
				lines <- got
				return
			}
			got = append(got, msg)
		}
	}()
	addr := ln.Addr().(*net.TCPAddr).AddrPort()
	e, err := New(Options{Logger: quiet, Syslog: &SyslogOptions{Address: addr, Network: "tcp", AppName: "cgnat-7", Hostname: "rtr1"}})
	if err != nil {
		t.Fatal(err)
	}
	in, want := ops()
	e.Observe(in[:3])
	e.Observe(in[3:])
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-lines:
		checkSyslog(t, got, want, "rtr1", "cgnat-7")
	case <-time.After(5 * time.Second):
		t.Fatal("the receiver saw no end of stream")
	}
}

func checkSyslog(t *testing.T, lines []string, want []Event, host, app string) {
	t.Helper()
	if len(lines) != len(want) {
		t.Fatalf("%d messages, want %d: %q", len(lines), len(want), lines)
	}
	for i, line := range lines {
		m, err := exporttest.ParseSyslog(line)
		if err != nil {
			t.Fatal(err)
		}
		w := want[i]
		msgID := map[Kind]string{Allocation: "BLOCK-ALLOC", Deallocation: "BLOCK-RELEASE"}[w.Kind]
		if m.PRI != 134 || m.Hostname != host || m.AppName != app || m.ProcID != strconv.Itoa(os.Getpid()) || m.MsgID != msgID ||
			m.SDID != "blocknat@32473" || !m.Timestamp.Equal(w.Time.Truncate(time.Microsecond)) {
			t.Errorf("header %+v, want event %+v", m, w)
		}
		wantParams := map[string]string{"natEvent": strconv.Itoa(int(w.Kind)), "sourceIPv4Address": w.Inside.String(),
			"postNATSourceIPv4Address": w.Public.String(), "portRangeStart": strconv.Itoa(int(w.PortLo)), "portRangeEnd": strconv.Itoa(int(w.PortHi))}
		if len(m.Params) != len(wantParams) {
			t.Errorf("params %v, want exactly %v", m.Params, wantParams)
		}
		for k, v := range wantParams {
			if m.Params[k] != v {
				t.Errorf("%s=%q, want %q in %q", k, m.Params[k], v, line)
			}
		}
		if !strings.Contains(m.Msg, w.Inside.String()) {
			t.Errorf("MSG %q does not name the block", m.Msg)
		}
	}
}

// stuck is a sender that blocks until released.
type stuck struct{ release chan struct{} }

func (s stuck) send([]Event) error { <-s.release; return nil }
func (s stuck) close() error       { return nil }

// TestObserveNeverBlocks: a collector that does not keep up costs export
// events, counted, and never delays the Recorder.
func TestObserveNeverBlocks(t *testing.T) {
	s := stuck{release: make(chan struct{})}
	e := start(quiet, 2, nil, []namedSender{{name: "stuck", s: s}})
	in, _ := ops()
	done := make(chan struct{})
	go func() {
		for i := range 10 {
			e.Observe([]store.Op{activate(rec(uint32(100+i), inside2, 1024, 1527, t0))})
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("Observe blocked on a stuck exporter")
	}
	if st := e.Stats(); st.Dropped < 7 {
		t.Errorf("stats %+v: with one batch in flight and two queued, at least 7 of 10 must be dropped", st)
	}
	close(s.release)
	e.Observe(in)
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestNfcapd sends events to Debian's nfcapd on loopback and reads them
// back with nfdump: the collector operators run decodes the addresses,
// the event and its time.
func TestNfcapd(t *testing.T) {
	netns.RequireTools(t, "nfcapd", "nfdump")
	port := freeUDPPort(t)
	addr := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)
	nf, err := exporttest.StartNfcapd(t.Context(), exporttest.Local, addr, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	e, err := New(Options{Logger: quiet, IPFIX: &IPFIXOptions{Collector: addr, ObservationDomain: 1}})
	if err != nil {
		t.Fatal(err)
	}
	in, want := ops()
	e.Observe(in)
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	files, log, err := nf.Stop()
	if err != nil || len(files) == 0 {
		t.Fatalf("nfcapd files %v: %v\n%s", files, err, log)
	}
	if n, ok := exporttest.SequenceErrors(log); !ok || n != 0 {
		t.Errorf("nfcapd counted %d sequence errors (found: %v):\n%s", n, ok, log)
	}
	recs, out, err := exporttest.NfdumpRaw(context.Background(), files...)
	if err != nil {
		t.Fatal(err)
	}
	checkNfdump(t, recs, want, out)
}

func checkNfdump(t *testing.T, recs []exporttest.NfdumpRecord, want []Event, out string) {
	t.Helper()
	if len(recs) != len(want) {
		t.Fatalf("nfdump shows %d records, want %d:\n%s", len(recs), len(want), out)
	}
	for i, w := range want {
		r := recs[i]
		ev, _ := r.Find("nat event")
		at, _ := r.Find("event time")
		if r["src addr"] != w.Inside.String() || r["src xlt ip"] != w.Public.String() ||
			!strings.HasPrefix(ev, strconv.Itoa(int(w.Kind))) || !strings.HasPrefix(at, strconv.FormatInt(w.Time.UnixMilli(), 10)) {
			t.Errorf("nfdump record %d %v, want %+v", i, r, w)
		}
		// nfdump 1.7.1 (Debian 12) does not decode elements 361-364
		// from IPFIX; later versions print the block.
		if v, ok := r.Find("block start"); ok && v != strconv.Itoa(int(w.PortLo)) {
			t.Errorf("nfdump block start %s, want %d", v, w.PortLo)
		}
		if v, ok := r.Find("block end"); ok && v != strconv.Itoa(int(w.PortHi)) {
			t.Errorf("nfdump block end %s, want %d", v, w.PortHi)
		}
	}
}

func freeUDPPort(t *testing.T) uint16 {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).AddrPort().Port()
}
