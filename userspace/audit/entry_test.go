package audit

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// v1Line is entry 1 of testdata/v1-log, a log written before entries had
// subjects and an answer hash. Its hash must never change.
const v1Line = `{"seq":1,"time":"2026-02-27T23:59:58.123456789Z","operator":"uid:1001(alice)","role":"investigator","action":"lookup","criteria":{"ip":"198.51.100.7","port":"15001","time":"2026-02-27T23:00:00Z"},"purpose":"case-0001","outcome":"answered","detail":"1 record","prev":"0000000000000000000000000000000000000000000000000000000000000000","hash":"aa279ef7a935f918933d5f1c1878018a6f101639f9ae7f20012c5687cba730ae"}`

func TestOldFormatStillVerifies(t *testing.T) {
	var e Entry
	if err := json.Unmarshal([]byte(v1Line), &e); err != nil {
		t.Fatal(err)
	}
	if got := entryHash(&e); got != e.Hash {
		t.Fatalf("hash of an old-format entry changed: %s, written as %s", got, e.Hash)
	}
	if !canonicalEntry(&e, []byte(v1Line)) {
		t.Fatal("an old-format line no longer re-encodes byte for byte")
	}

	const dir = "testdata/v1-log"
	if lines := readLines(t, filepath.Join(dir, "audit-20260227.jsonl")); string(lines[0]) != v1Line {
		t.Fatalf("the fixture log's first line is not v1Line:\n%s", lines[0])
	}
	pub, err := LoadPublicKey(filepath.Join(dir, pubFile))
	if err != nil {
		t.Fatal(err)
	}
	r, err := Verify(dir, pub)
	if err != nil {
		t.Fatal(err)
	}
	if !r.OK() || r.Entries != 3 || r.HeadSeq != 3 || r.Checkpoints != 2 {
		t.Fatalf("old-format log: %+v\n%s", r, problems(r))
	}
}

func TestSubjectsAndAnswerHash(t *testing.T) {
	tl := openTest(t, Options{})
	for _, bad := range []string{
		strings.Repeat("A", 64), // upper case: two spellings of one hash would not match
		strings.Repeat("0", 63),
		strings.Repeat("0", 65),
		strings.Repeat("g", 64),
		"sha256:" + strings.Repeat("0", 64),
	} {
		e := entryFor(1)
		e.AnswerSHA256 = bad
		if _, err := tl.Append(e); err == nil || !strings.Contains(err.Error(), "answer_sha256") {
			t.Fatalf("Append with answer_sha256 %q: %v; want a refusal naming the field", bad, err)
		}
	}
	if tl.Len() != 0 {
		t.Fatalf("rejected entries took seqs: Len %d", tl.Len())
	}

	old := tl.appendN(t, 1)[0]
	if old.Subjects != nil || old.AnswerSHA256 != "" {
		t.Fatalf("entry without subjects stored as %+v", old)
	}
	const distinct = MaxSubjects + 44
	var subjects []string
	for i := range distinct {
		subjects = append(subjects, fmt.Sprintf("inside:100.64.%d.%d", i/256, i%256))
	}
	subjects = append(subjects, subjects[:10]...) // duplicates
	subjects = append(subjects, "")
	huge := "mac:" + strings.Repeat("é", 3000)
	subjects = append(subjects, huge, huge)
	slices.Reverse(subjects)
	in := entryFor(2)
	in.Subjects = subjects
	e, err := tl.Append(in)
	if err != nil {
		t.Fatal(err)
	}
	subjects[0] = "changed after Append"
	if len(e.Subjects) != MaxSubjects+1 {
		t.Fatalf("%d subjects stored, want %d and a truncation note", len(e.Subjects), MaxSubjects+1)
	}
	kept := e.Subjects[:MaxSubjects]
	if !slices.IsSorted(kept) || len(slices.Compact(slices.Clone(kept))) != MaxSubjects || slices.Contains(kept, "") {
		t.Fatalf("subjects not sorted, unique and non-empty: %q", kept)
	}
	if want := fmt.Sprintf("…truncated: %d more subjects not logged", distinct+1-MaxSubjects); e.Subjects[MaxSubjects] != want {
		t.Fatalf("truncation note %q, want %q", e.Subjects[MaxSubjects], want)
	}
	if kept[0] != "inside:100.64.0.0" {
		t.Fatalf("subjects kept from %q, want the lowest first", kept[0])
	}
	withHuge := entryFor(4)
	withHuge.Subjects = []string{huge, "inside:100.64.0.7"}
	e2, err := tl.Append(withHuge)
	if err != nil {
		t.Fatal(err)
	}
	if len(e2.Subjects) != 2 || len(e2.Subjects[1]) > MaxFieldBytes+64 || !strings.Contains(e2.Subjects[1], "truncated") {
		t.Fatalf("oversized subject stored as %d subjects, last %d bytes", len(e2.Subjects), len(e2.Subjects[1]))
	}
	last := tl.appendN(t, 1)[0]
	stored, err := tl.Entries(0, 0)
	if err != nil || !reflect.DeepEqual(stored, []Entry{old, e, e2, last}) {
		t.Fatalf("stored entries differ from the returned ones: %v", err)
	}
	seg := segments(t, tl.dir)[0]
	if lines := readLines(t, filepath.Join(tl.dir, seg)); strings.Contains(string(lines[0]), "subjects") || strings.Contains(string(lines[0]), "answer_sha256") {
		t.Fatalf("an entry without subjects writes their keys: %s", lines[0])
	}
	mustVerifyOK(t, tl.dir, tl)

	// The hash covers both fields: any change to them in the line is named at
	// that entry, and the entries around it (one without them) stay clean.
	edit := func(e Entry, change func(*Entry)) []byte {
		c := e
		c.Subjects = slices.Clone(e.Subjects)
		change(&c)
		b, err := json.Marshal(&c)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, tc := range []struct {
		name   string
		change func(*Entry)
	}{
		{"change a subject", func(e *Entry) { e.Subjects[3] = "inside:100.64.9.9" }},
		{"drop a subject", func(e *Entry) { e.Subjects = slices.Delete(e.Subjects, 3, 4) }},
		{"add a subject", func(e *Entry) { e.Subjects = append(e.Subjects, "mac:02:00:00:00:00:01") }},
		{"reorder subjects", func(e *Entry) { e.Subjects[0], e.Subjects[1] = e.Subjects[1], e.Subjects[0] }},
		{"drop every subject", func(e *Entry) { e.Subjects = nil }},
		{"change the answer hash", func(e *Entry) { e.AnswerSHA256 = strings.Repeat("0", 64) }},
		{"drop the answer hash", func(e *Entry) { e.AnswerSHA256 = "" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := copyDir(t, tl.dir)
			p := filepath.Join(dir, seg)
			lines := readLines(t, p)
			lines[1] = edit(e, tc.change)
			writeLines(t, p, lines)
			r, err := Verify(dir, tl.PublicKey())
			if err != nil {
				t.Fatal(err)
			}
			if len(r.Problems) != 1 || r.Problems[0].Seq != 2 || r.Problems[0].File != seg || r.Problems[0].Line != 2 ||
				!strings.Contains(r.Problems[0].Reason, "hash does not match") {
				t.Fatalf("want exactly one problem, a hash mismatch at seq 2, %s:2; got:\n%s", seg, problems(r))
			}
		})
	}
	// Old-format entries keep old-format lines, and an empty list written
	// out is not how Append writes "no subjects".
	t.Run("empty subjects list written out", func(t *testing.T) {
		dir := copyDir(t, tl.dir)
		p := filepath.Join(dir, seg)
		lines := readLines(t, p)
		lines[0] = []byte(strings.Replace(string(lines[0]), `,"prev"`, `,"subjects":[],"prev"`, 1))
		writeLines(t, p, lines)
		r, _ := Verify(dir, tl.PublicKey())
		if len(r.Problems) != 1 || r.Problems[0].Seq != 1 || r.Problems[0].Line != 1 || !strings.Contains(r.Problems[0].Reason, "canonical") {
			t.Fatalf("want one non-canonical problem at seq 1; got:\n%s", problems(r))
		}
	})
}

func TestSubjectSpelling(t *testing.T) {
	mac, _ := net.ParseMAC("AA:BB:CC:DD:EE:0F")
	for _, tc := range []struct{ got, want string }{
		{SubjectInside(netip.MustParseAddr("100.64.0.7")), "inside:100.64.0.7"},
		{SubjectInside(netip.MustParseAddr("::ffff:100.64.0.7")), "inside:100.64.0.7"},
		{SubjectMAC(mac), "mac:aa:bb:cc:dd:ee:0f"},
	} {
		if tc.got != tc.want {
			t.Errorf("subject %q, want %q", tc.got, tc.want)
		}
	}
}

// TestEntryBoundedAfterEscaping appends entries whose strings are full of
// characters that JSON escapes to six bytes each ('<', U+2028, controls):
// every line written is at most MaxEntryBytes, each field at most
// MaxFieldBytes escaped, and the log verifies.
func TestEntryBoundedAfterEscaping(t *testing.T) {
	tl := openTest(t, Options{})
	lt := strings.Repeat("<", 16<<10)
	many := map[string]string{}
	for i := range 2 * MaxCriteria {
		many[fmt.Sprintf("k%03d%s", i, lt[:200])] = lt
	}
	var subjects []string
	for i := range 2 * MaxSubjects {
		subjects = append(subjects, fmt.Sprintf("inside:%d%s", i, strings.Repeat("\u2028", 100)))
	}
	entries := []Entry{
		{Operator: "uid:65534", Action: "lookup", Outcome: OutcomeRefused, Purpose: lt, Detail: lt, Criteria: map[string]string{"ip": lt, "q": lt}},
		{Operator: "uid:65534", Action: "lookup", Outcome: OutcomeMalformed, Purpose: lt, Detail: lt, Criteria: many},
		{Operator: lt, Role: lt, Action: lt, Outcome: OutcomeMalformed, Purpose: lt, Detail: lt, Criteria: many, Subjects: subjects},
		{Operator: "uid:65534", Action: "lookup", Outcome: OutcomeMalformed, Purpose: strings.Repeat("\x01&\u2029", 8000)},
	}
	for i, in := range entries {
		e, err := tl.Append(in)
		if err != nil {
			t.Fatalf("entry %d: %v", i, err)
		}
		for _, f := range []string{e.Operator, e.Role, e.Action, e.Purpose, e.Detail} {
			if n := encodedLen(f); n > MaxFieldBytes {
				t.Errorf("entry %d: a field takes %d bytes escaped, over %d", i, n, MaxFieldBytes)
			}
		}
	}
	lines := readLines(t, filepath.Join(tl.dir, segments(t, tl.dir)[0]))
	if len(lines) != len(entries) {
		t.Fatalf("%d lines, want %d", len(lines), len(entries))
	}
	for i, line := range lines {
		if n := len(line) + 1; n > MaxEntryBytes {
			t.Errorf("line %d is %d bytes with its newline, over MaxEntryBytes %d", i+1, n, MaxEntryBytes)
		}
		if !strings.Contains(string(line), "truncated") {
			t.Errorf("line %d does not say it was clipped", i+1)
		}
	}
	// Clipping spends the budget: the first entry keeps most of what fits.
	if n := len(lines[0]); n < MaxEntryBytes/2 {
		t.Errorf("line 1 is %d bytes; clipping took far more than needed", n)
	}
	mustVerifyOK(t, tl.dir, tl)
}

// TestEncodedLenBoundsJSON: the escaped length prepare counts is never
// less than what encoding/json writes.
func TestEncodedLenBoundsJSON(t *testing.T) {
	for _, s := range []string{"", "plain", "<>&", "\"\\\n\r\t\b\f\x00\x1f\x7f", "\u2028\u2029", "é€😀", "\uFFFD", "a<b" + strings.Repeat("\x02", 9)} {
		got, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		if n := encodedLen(s) + 2; n < len(got) {
			t.Errorf("encodedLen(%q) = %d, but json writes %d bytes (with quotes) %s", s, n-2, len(got), got)
		}
	}
}
