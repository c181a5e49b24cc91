package main

import (
	"fmt"
	"io"
	"net/netip"
	"sort"
	"strings"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

// activation is one block the soak made active: the first packet a
// subscriber that had never sent before got answered through the NAT.
type activation struct {
	Inside netip.Addr
	Phase  string
	// Sent is just before the first packet left; Answered is when its
	// answer came back, by which time the block was certainly active.
	Sent, Answered time.Time
}

// span is a block record's interval as a lookup returns it; End is nil
// while the record is open.
type span struct {
	Start time.Time
	End   *time.Time
	// Recovered is set when the reconciler, not the ring buffer, found
	// the block.
	Recovered bool
}

// covers reports whether the record holds t, allowing slack for the
// conversion of the kernel's clock to wall time.
func (s span) covers(t time.Time, slack time.Duration) bool {
	if s.Start.After(t.Add(slack)) {
		return false
	}
	return s.End == nil || !s.End.Before(t.Add(-slack))
}

// verdict is what the records say about a set of activations.
type verdict struct {
	// Lost are activations no record of their subscriber covers.
	Lost []activation
	// Duplicated counts open records beyond the first for one block:
	// a block is active once, so a second open record is a second
	// answer to the same question.
	Duplicated int
	// DuplicatedSubs names the subscribers with more than one.
	DuplicatedSubs []netip.Addr
}

// judge compares every activation with the records found for its
// subscriber. A subscriber missing from records has none.
func judge(acts []activation, records map[netip.Addr][]span, slack time.Duration) verdict {
	var v verdict
	for _, a := range acts {
		found := false
		for _, r := range records[a.Inside] {
			if r.covers(a.Answered, slack) {
				found = true
				break
			}
		}
		if !found {
			v.Lost = append(v.Lost, a)
		}
	}
	subs := make([]netip.Addr, 0, len(records))
	for s := range records {
		subs = append(subs, s)
	}
	sort.Slice(subs, func(i, j int) bool { return subs[i].Less(subs[j]) })
	for _, s := range subs {
		open := 0
		for _, r := range records[s] {
			if r.End == nil {
				open++
			}
		}
		if open > 1 {
			v.Duplicated += open - 1
			v.DuplicatedSubs = append(v.DuplicatedSubs, s)
		}
	}
	return v
}

// leak describes an IPv4 frame that carries an inside address where the
// internet can read it: as its source, or inside the packet an ICMP
// error quotes (an untranslated error would name the subscriber there).
// It returns "" for a frame that does not.
func leak(frame []byte, inside netip.Prefix) string {
	pkt := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.Lazy)
	ip, _ := pkt.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	if ip == nil {
		return ""
	}
	src, _ := netip.AddrFromSlice(ip.SrcIP.To4())
	dst, _ := netip.AddrFromSlice(ip.DstIP.To4())
	if inside.Contains(src) {
		return fmt.Sprintf("%s %s -> %s", ip.Protocol, src, dst)
	}
	icmp, _ := pkt.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4)
	if icmp == nil || !isICMPError(icmp.TypeCode.Type()) {
		return ""
	}
	// The quoted header follows the 8 bytes of the ICMP header.
	quoted := icmp.Payload
	if len(quoted) < 20 || quoted[0]>>4 != 4 {
		return ""
	}
	qsrc := netip.AddrFrom4([4]byte(quoted[12:16]))
	qdst := netip.AddrFrom4([4]byte(quoted[16:20]))
	if inside.Contains(qsrc) || inside.Contains(qdst) {
		return fmt.Sprintf("ICMP %s %s -> %s quoting %s -> %s", icmp.TypeCode, src, dst, qsrc, qdst)
	}
	return ""
}

func isICMPError(t uint8) bool {
	switch t {
	case layers.ICMPv4TypeDestinationUnreachable, layers.ICMPv4TypeSourceQuench, layers.ICMPv4TypeRedirect,
		layers.ICMPv4TypeTimeExceeded, layers.ICMPv4TypeParameterProblem:
		return true
	}
	return false
}

// phaseResult is one phase's verdict with the reasons it failed.
type phaseResult struct {
	Name     string
	Failures []string
	Notes    []string
	Took     time.Duration
}

func (p *phaseResult) fail(format string, args ...any) {
	p.Failures = append(p.Failures, fmt.Sprintf(format, args...))
}

func (p *phaseResult) note(format string, args ...any) {
	p.Notes = append(p.Notes, fmt.Sprintf(format, args...))
}

func (p *phaseResult) passed() bool { return len(p.Failures) == 0 }

// figure is one line of the final table.
type figure struct {
	Name  string
	Value string
}

// report prints the figures, a line per phase and, last, the one line
// "N passed, M failed". It returns M.
func report(w io.Writer, figures []figure, phases []*phaseResult) int {
	width := 0
	for _, f := range figures {
		width = max(width, len(f.Name))
	}
	fmt.Fprintln(w, "figures")
	for _, f := range figures {
		fmt.Fprintf(w, "  %-*s  %s\n", width, f.Name, f.Value)
	}
	fmt.Fprintln(w, "phases")
	passed, failed := 0, 0
	for _, p := range phases {
		verdict := "PASS"
		if p.passed() {
			passed++
		} else {
			verdict = "FAIL"
			failed++
		}
		fmt.Fprintf(w, "  %s %s (%s)\n", verdict, p.Name, p.Took.Round(time.Second))
		for _, f := range p.Failures {
			fmt.Fprintf(w, "      failed: %s\n", oneLine(f))
		}
		for _, n := range p.Notes {
			fmt.Fprintf(w, "      %s\n", oneLine(n))
		}
	}
	fmt.Fprintf(w, "%d passed, %d failed\n", passed, failed)
	return failed
}

// oneLine keeps a reason quoted from a log or a command on its line, so
// that the report's last line stays the verdict.
func oneLine(s string) string {
	s = strings.TrimSpace(s)
	s = strings.ReplaceAll(s, "\n", " | ")
	if len(s) > 400 {
		s = s[:400] + "…"
	}
	return s
}
