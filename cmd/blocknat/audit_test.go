package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/blocknat/blocknat/userspace/wire"
)

// hostile holds a character of every class audit show must not print as it
// is: C0 (ESC, BEL, CR, NUL), DEL, C1 (CSI), the bidirectional embeddings,
// overrides and isolates, marks and the line separator.
var hostile = []rune{0x1b, 0x07, '\r', 0x00, 0x7f, 0x9b, 0x85,
	0x202a, 0x202b, 0x202c, 0x202d, 0x202e, 0x2066, 0x2067, 0x2068, 0x2069, 0x200e, 0x200f, 0x061c, 0x2028}

func hostileText(prefix string) string {
	return prefix + "[" + string(hostile) + "]" + "\\u202e" + "\xff"
}

// checkPrintable fails when out holds any hostile character (newlines end
// lines and are the only control allowed).
func checkPrintable(t *testing.T, out string) {
	t.Helper()
	for _, r := range hostile {
		if strings.ContainsRune(out, r) {
			t.Errorf("output holds %U unescaped:\n%q", r, out)
		}
	}
	if strings.Contains(out, "\xff") {
		t.Errorf("output holds invalid UTF-8:\n%q", out)
	}
}

// TestAuditShowEscapes prints an entry with hostile characters in every
// field: none is printed as it is, each appears escaped, and a backslash
// sent as text cannot pass for an escape.
func TestAuditShowEscapes(t *testing.T) {
	e := wire.AuditEntry{
		Seq: 7, Time: time.Date(2026, 11, 20, 12, 0, 1, 0, time.UTC),
		Operator: hostileText("cert:CN="), Role: hostileText("role"), Action: hostileText("lookup"),
		Criteria: map[string]string{hostileText("key"): hostileText("value"), "ip": "198.51.100.10"},
		Purpose:  hostileText("case 1"), Outcome: wire.Outcome(hostileText("refused")), Detail: hostileText("detail text"),
		Subjects: []string{hostileText("inside:"), "inside:100.64.0.7"}, AnswerSHA256: hostileText("sha"),
	}
	var out bytes.Buffer
	printAuditEntries(&out, &wire.AuditShowResponse{AuditSeq: 8, Total: 7, Entries: []wire.AuditEntry{e}})
	got := out.String()
	t.Logf("audit show:\n%s", got)
	checkPrintable(t, got)
	for _, want := range []string{`cert:CN=[\x1b\a\r\x00\x7f\u009b\u0085\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c\u2028]\\u202e\xff`,
		`detail   detail text[\x1b`, `ip=198.51.100.10`, `inside:100.64.0.7`, `purpose  "case 1[\x1b`} {
		if !strings.Contains(got, want) {
			t.Errorf("audit show lacks %s", want)
		}
	}
	if n := strings.Count(got, "\n"); n != 9 {
		t.Errorf("%d lines, want 9 (a field's line break must not start a line of its own)", n)
	}

	out.Reset()
	printAuditSubject(&out, &wire.AuditSubjectResponse{Subject: "inside:100.64.0.7", Uses: []wire.SubjectUse{{
		Seq: 7, Time: e.Time, Action: e.Action, Role: e.Role, Outcome: string(e.Outcome), Purpose: e.Purpose, Named: []string{hostileText("criteria")},
	}}})
	checkPrintable(t, out.String())
}

// TestAuditShowEscapesThroughAgent sends a purpose with a terminal escape
// and a right-to-left override and reads it back with audit show.
func TestAuditShowEscapesThroughAgent(t *testing.T) {
	a := startAgent(t, agentOptions{roles: allRoles()})
	runCLI("lookup", "--socket", a.socket, "--ip", "198.51.100.10", "--port", "15123", "--time", "2026-11-20T12:00:01Z", "--purpose", "case \x1b[2J\u202e21")
	r := runCLI("audit", "show", "--socket", a.socket)
	checkPrintable(t, r.stdout)
	if !strings.Contains(r.stdout, `purpose  "case \x1b[2J\u202e21"`) {
		t.Errorf("audit show lacks the escaped purpose:\n%s", r.stdout)
	}
}
