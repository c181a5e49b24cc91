package main

import (
	"bytes"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

func TestJudge(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	ptr := func(t time.Time) *time.Time { return &t }
	a, b, c, d := netip.MustParseAddr("100.64.0.10"), netip.MustParseAddr("100.64.0.11"),
		netip.MustParseAddr("100.64.0.12"), netip.MustParseAddr("100.64.0.13")
	acts := []activation{
		{Inside: a, Phase: "restart", Answered: at(10)}, // an open record since 9: covered
		{Inside: b, Phase: "restart", Answered: at(10)}, // closed at 5, reopened at 20: lost
		{Inside: c, Phase: "disk", Answered: at(10)},    // no record at all: lost
		{Inside: d, Phase: "disk", Answered: at(10)},    // starts 100 ms late: within the slack
	}
	records := map[netip.Addr][]span{
		a: {{Start: at(9)}, {Start: at(9)}, {Start: at(1), End: ptr(at(2))}}, // two open: one duplicate
		b: {{Start: at(1), End: ptr(at(5))}, {Start: at(20)}},
		d: {{Start: at(10).Add(100 * time.Millisecond), End: ptr(at(30))}},
	}
	v := judge(acts, records, 250*time.Millisecond)
	var lost []netip.Addr
	for _, l := range v.Lost {
		lost = append(lost, l.Inside)
	}
	if len(lost) != 2 || lost[0] != b || lost[1] != c {
		t.Errorf("lost %v, want %v and %v", lost, b, c)
	}
	if v.Duplicated != 1 || len(v.DuplicatedSubs) != 1 || v.DuplicatedSubs[0] != a {
		t.Errorf("duplicated %d %v, want 1 for %v", v.Duplicated, v.DuplicatedSubs, a)
	}
}

func TestSpanCovers(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	end := t0.Add(time.Second)
	s := span{Start: t0, End: &end}
	for _, c := range []struct {
		at   time.Time
		want bool
	}{
		{t0, true}, {end, true}, {t0.Add(-200 * time.Millisecond), true}, {t0.Add(-300 * time.Millisecond), false},
		{end.Add(200 * time.Millisecond), true}, {end.Add(300 * time.Millisecond), false},
	} {
		if got := s.covers(c.at, 250*time.Millisecond); got != c.want {
			t.Errorf("covers(%v) = %v, want %v", c.at.Sub(t0), got, c.want)
		}
	}
	if !(span{Start: t0}).covers(t0.Add(time.Hour), 0) {
		t.Error("an open record does not cover a later time")
	}
}

func frame(t *testing.T, ip *layers.IPv4, rest ...gopacket.SerializableLayer) []byte {
	t.Helper()
	ip.Version, ip.IHL, ip.TTL = 4, 5, 64
	eth := &layers.Ethernet{SrcMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, DstMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2}, EthernetType: layers.EthernetTypeIPv4}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		append([]gopacket.SerializableLayer{eth, ip}, rest...)...); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestLeak(t *testing.T) {
	inside := netip.MustParsePrefix("100.64.0.0/22")
	udp := func(src, dst string) []byte {
		u := &layers.UDP{SrcPort: 1000, DstPort: 9000}
		ip := &layers.IPv4{Protocol: layers.IPProtocolUDP, SrcIP: net.ParseIP(src), DstIP: net.ParseIP(dst)}
		u.SetNetworkLayerForChecksum(ip)
		return frame(t, ip, u, gopacket.Payload("x"))
	}
	// An ICMP error from the pool address quoting the datagram it answers.
	icmpQuoting := func(quotedSrc, quotedDst string) []byte {
		quoted := udp(quotedSrc, quotedDst)[14:]
		ip := &layers.IPv4{Protocol: layers.IPProtocolICMPv4, SrcIP: net.ParseIP("198.51.100.10"), DstIP: net.ParseIP("203.0.113.1")}
		icmp := &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(layers.ICMPv4TypeDestinationUnreachable, layers.ICMPv4CodePort)}
		return frame(t, ip, icmp, gopacket.Payload(quoted))
	}
	echoReply := func() []byte {
		ip := &layers.IPv4{Protocol: layers.IPProtocolICMPv4, SrcIP: net.ParseIP("198.51.100.10"), DstIP: net.ParseIP("203.0.113.1")}
		icmp := &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(layers.ICMPv4TypeEchoReply, 0)}
		return frame(t, ip, icmp, gopacket.Payload(bytes.Repeat([]byte{0x45, 100, 64, 1, 2}, 8)))
	}
	for _, c := range []struct {
		name  string
		frame []byte
		want  string
	}{
		{"translated", udp("198.51.100.10", "203.0.113.1"), ""},
		{"inside source", udp("100.64.1.7", "203.0.113.1"), "100.64.1.7 -> 203.0.113.1"},
		{"inside source at the prefix's end", udp("100.64.3.250", "203.0.113.1"), "100.64.3.250"},
		{"outside the prefix", udp("100.64.4.1", "203.0.113.1"), ""},
		{"ICMP error quoting the inside address", icmpQuoting("203.0.113.1", "100.64.0.2"), "quoting 203.0.113.1 -> 100.64.0.2"},
		{"ICMP error quoting the pool", icmpQuoting("203.0.113.1", "198.51.100.10"), ""},
		{"an echo reply is no error", echoReply(), ""},
		{"ARP", append(make([]byte, 12), 0x08, 0x06, 0, 1), ""},
		{"truncated", udp("100.64.1.7", "203.0.113.1")[:20], ""},
	} {
		got := leak(c.frame, inside)
		if c.want == "" && got != "" || c.want != "" && !strings.Contains(got, c.want) {
			t.Errorf("%s: leak = %q, want %q", c.name, got, c.want)
		}
	}
}

func TestReport(t *testing.T) {
	var buf bytes.Buffer
	ok := &phaseResult{Name: "restart"}
	bad := &phaseResult{Name: "disk"}
	bad.fail("the alarm did not clear\nwithin 60s")
	failed := report(&buf, []figure{{"cycles done", "100 of 100"}}, []*phaseResult{ok, bad, {Name: "cleanup"}})
	if failed != 1 {
		t.Errorf("report returned %d failed, want 1", failed)
	}
	lines := strings.Split(strings.TrimRight(buf.String(), "\n"), "\n")
	if last := lines[len(lines)-1]; last != "2 passed, 1 failed" {
		t.Errorf("last line %q, want %q", last, "2 passed, 1 failed")
	}
	if n := strings.Count(buf.String(), "passed, "); n != 1 {
		t.Errorf("%d verdict lines, want exactly one:\n%s", n, buf.String())
	}
	if !strings.Contains(buf.String(), "FAIL disk") || !strings.Contains(buf.String(), "did not clear | within") {
		t.Errorf("the failed phase or its reason is missing, or a reason spans lines:\n%s", buf.String())
	}
}

func TestParseAlarm(t *testing.T) {
	text := `# HELP blocknat_records_alarm 1 when block records are not being written.
# TYPE blocknat_records_alarm gauge
blocknat_records_alarm 1
blocknat_alarm{reason="audit"} 0
blocknat_alarm{reason="disk_low"} 1
blocknat_alarm{reason="selfcheck"} 0
blocknat_alarms_total 3
`
	a := parseAlarm(text)
	if !a.Raised || len(a.Reasons) != 1 || a.Reasons[0] != "disk_low" || len(a.Lines) != 4 {
		t.Errorf("parseAlarm = %+v, want raised for disk_low alone, from 4 lines", a)
	}
	if a := parseAlarm("blocknat_records_alarm 0\nblocknat_alarm{reason=\"disk_low\"} 0\n"); a.Raised || len(a.Reasons) != 0 {
		t.Errorf("parseAlarm of a quiet agent = %+v", a)
	}
}
