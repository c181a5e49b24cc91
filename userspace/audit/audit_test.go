package audit

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/blocknat/blocknat/test/testutil"
)

func TestAppendVerifyReopen(t *testing.T) {
	tl := openTest(t, Options{CheckpointEvery: 4})
	got := tl.appendN(t, 10)
	for i, e := range got {
		if e.Seq != uint64(i+1) {
			t.Fatalf("entry %d: seq %d", i, e.Seq)
		}
		wantPrev := zeroHash
		if i > 0 {
			wantPrev = got[i-1].Hash
		}
		if e.Prev != wantPrev || e.Hash != entryHash(&e) {
			t.Fatalf("entry %d: prev %s hash %s, want prev %s", e.Seq, e.Prev, e.Hash, wantPrev)
		}
		if !e.Time.Equal(day0) || e.Time.Location() != time.UTC {
			t.Fatalf("entry %d: time %v, want %v in UTC", e.Seq, e.Time, day0)
		}
	}
	r := mustVerifyOK(t, tl.dir, tl)
	if r.Entries != 10 || r.FirstSeq != 1 || r.LastSeq != 10 || r.HeadSeq != 10 || r.Checkpoints != 2 {
		t.Fatalf("report %+v, want 10 entries 1..10, head 10, 2 checkpoints", r)
	}
	if lr, err := tl.Log.Verify(); err != nil || !lr.OK() || lr.LastSeq != 10 {
		t.Fatalf("live Verify: %+v, %v", lr, err)
	}

	if err := tl.Close(); err != nil {
		t.Fatal(err)
	}
	tl.clock.Advance(time.Second)
	tl.reopen(t)
	if tl.Len() != 10 {
		t.Fatalf("Len after reopen %d, want 10", tl.Len())
	}
	next := tl.appendN(t, 1)[0]
	if next.Seq != 11 || next.Prev != got[9].Hash {
		t.Fatalf("after reopen: seq %d prev %s, want 11 and %s", next.Seq, next.Prev, got[9].Hash)
	}
	r = mustVerifyOK(t, tl.dir, tl)
	if r.LastSeq != 11 {
		t.Fatalf("LastSeq %d", r.LastSeq)
	}

	all, err := tl.Entries(0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if want := append(got, next); !reflect.DeepEqual(all, want) {
		t.Fatalf("Entries differ from what Append returned:\n got %+v\nwant %+v", all, want)
	}
	page, err := tl.Entries(4, 3)
	if err != nil || len(page) != 3 || page[0].Seq != 4 || page[2].Seq != 6 {
		t.Fatalf("Entries(4, 3) = %v, %v", page, err)
	}

	fi, err := os.Stat(tl.keyPath)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v, %v; want mode 0600", fi, err)
	}
	pub, err := LoadPublicKey(filepath.Join(tl.dir, pubFile))
	if err != nil || !pub.Equal(tl.PublicKey()) {
		t.Fatalf("audit.pub: %v, %v", pub, err)
	}
}

// The package doc promises that an auditor can check the log without this
// package. Re-implement hash and signature from the doc alone.
func TestDocumentedEncoding(t *testing.T) {
	tl := openTest(t, Options{})
	str := func(b []byte, s string) []byte {
		return append(binary.BigEndian.AppendUint32(b, uint32(len(s))), s...)
	}
	u64 := binary.BigEndian.AppendUint64
	// Entry 1 has no subjects and no answer hash, entry 2 both; an entry
	// with only one of them takes the trailer as well.
	entries := tl.appendN(t, 2)
	onlyAnswer := entries[0]
	onlyAnswer.AnswerSHA256 = entries[1].AnswerSHA256
	onlySubjects := entries[0]
	onlySubjects.Subjects = []string{"inside:100.64.0.1"}
	for _, e := range append(entries, onlyAnswer, onlySubjects) {
		e.Criteria["zz"] = "last"
		e.Criteria["a"] = "first"
		var b []byte
		b = str(b, "blocknat-audit-entry-v1")
		b = u64(b, e.Seq)
		b = str(b, e.Time.UTC().Format(time.RFC3339Nano))
		b = str(b, e.Operator)
		b = str(b, e.Role)
		b = str(b, e.Action)
		keys := make([]string, 0, len(e.Criteria))
		for k := range e.Criteria {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		b = u64(b, uint64(len(keys)))
		for _, k := range keys {
			b = str(str(b, k), e.Criteria[k])
		}
		for _, s := range []string{e.Purpose, string(e.Outcome), e.Detail, e.Prev} {
			b = str(b, s)
		}
		if len(e.Subjects) > 0 || e.AnswerSHA256 != "" {
			b = str(b, "v2")
			b = u64(b, uint64(len(e.Subjects)))
			for _, s := range e.Subjects {
				b = str(b, s)
			}
			b = str(b, e.AnswerSHA256)
		}
		sum := sha256.Sum256(b)
		if got := entryHash(&e); got != hex.EncodeToString(sum[:]) {
			t.Fatalf("entry %+v: entryHash %s, documented encoding gives %x", e, got, sum)
		}
	}

	head, err := os.ReadFile(filepath.Join(tl.dir, headFile))
	if err != nil {
		t.Fatal(err)
	}
	var rec struct {
		Kind string    `json:"kind"`
		Seq  uint64    `json:"seq"`
		Hash string    `json:"hash"`
		Time time.Time `json:"time"`
		Sig  string    `json:"sig"`
	}
	if err := json.Unmarshal(head, &rec); err != nil {
		t.Fatal(err)
	}
	var m []byte
	m = str(m, "blocknat-audit-signed-v1")
	m = str(m, rec.Kind)
	m = u64(m, rec.Seq)
	m = str(m, rec.Hash)
	m = str(m, rec.Time.UTC().Format(time.RFC3339Nano))
	sig, _ := hex.DecodeString(rec.Sig)
	if rec.Kind != "head" || rec.Seq != 2 || !ed25519.Verify(tl.PublicKey(), m, sig) {
		t.Fatalf("head %+v does not verify with the documented encoding", rec)
	}
}

// threeDays is a closed log of 12 entries, 4 per UTC day, with checkpoints
// at 5 and 10 and Close's at 12.
func threeDays(t *testing.T) (*testLog, []string) {
	t.Helper()
	tl := openTest(t, Options{CheckpointEvery: 5, CheckpointInterval: -1})
	for range 3 {
		tl.appendN(t, 4)
		tl.clock.Advance(24 * time.Hour)
	}
	if err := tl.Close(); err != nil {
		t.Fatal(err)
	}
	segs := segments(t, tl.dir)
	if len(segs) != 3 {
		t.Fatalf("segments %v, want 3", segs)
	}
	return tl, segs
}

func TestTamperingIsNamed(t *testing.T) {
	otherPub, otherPriv, _ := ed25519.GenerateKey(rand.Reader)
	seg := func(dir string, i int) string { return filepath.Join(dir, segments(t, dir)[i]) }
	cases := []struct {
		name   string
		tamper func(t *testing.T, dir string)
		// want: the problem that must be reported; as line numbers shift with
		// the tampering, it is given for the tampered directory.
		wantSeq  uint64
		wantFile func(segs []string) string
		wantLine int
	}{
		{"delete entry 6", func(t *testing.T, dir string) {
			p := seg(dir, 1)
			lines := readLines(t, p)
			writeLines(t, p, slices.Delete(lines, 1, 2))
		}, 6, func(s []string) string { return s[1] }, 2},
		{"swap entries 6 and 7", func(t *testing.T, dir string) {
			p := seg(dir, 1)
			lines := readLines(t, p)
			lines[1], lines[2] = lines[2], lines[1]
			writeLines(t, p, lines)
		}, 6, func(s []string) string { return s[1] }, 2},
		{"cut newest segment in its last line", func(t *testing.T, dir string) {
			p := seg(dir, 2)
			data, _ := os.ReadFile(p)
			last := bytes.LastIndexByte(data[:len(data)-1], '\n') + 1
			os.WriteFile(p, data[:last+(len(data)-last)/2], 0o600)
		}, 12, func(s []string) string { return s[2] }, 4},
		{"cut a middle segment inside entry 6", func(t *testing.T, dir string) {
			p := seg(dir, 1)
			data, _ := os.ReadFile(p)
			first := bytes.IndexByte(data, '\n') + 1
			os.WriteFile(p, data[:first+20], 0o600)
		}, 6, func(s []string) string { return s[1] }, 2},
		{"cut newest segment at a line boundary", func(t *testing.T, dir string) {
			p := seg(dir, 2)
			writeLines(t, p, readLines(t, p)[:1])
		}, 10, func(s []string) string { return s[2] }, 2},
		{"delete newest segment", func(t *testing.T, dir string) {
			os.Remove(seg(dir, 2))
		}, 9, func(s []string) string { return segmentName(day0.Add(48 * time.Hour)) }, 0},
		// A gap is named where the entry after it now sits.
		{"delete middle segment", func(t *testing.T, dir string) {
			os.Remove(seg(dir, 1))
		}, 5, func(s []string) string { return s[2] }, 1},
		{"delete oldest segment", func(t *testing.T, dir string) {
			os.Remove(seg(dir, 0))
		}, 1, func(s []string) string { return s[1] }, 1},
		{"edit a checkpoint's hash", func(t *testing.T, dir string) {
			p := filepath.Join(dir, checkpointsFile)
			lines := readLines(t, p)
			var r SignedRecord
			json.Unmarshal(lines[0], &r)
			r.Hash = strings.Repeat("ab", 32) // signature left as it was
			lines[0] = bytes.TrimSuffix(r.line(), []byte{'\n'})
			writeLines(t, p, lines)
		}, 5, func([]string) string { return checkpointsFile }, 1},
		{"forge a checkpoint with another key", func(t *testing.T, dir string) {
			p := filepath.Join(dir, checkpointsFile)
			rec := signRecord(otherPriv, kindCheckpoint, 12, strings.Repeat("cd", 32), day0)
			writeLines(t, p, append(readLines(t, p), bytes.TrimSuffix(rec.line(), []byte{'\n'})))
		}, 12, func([]string) string { return checkpointsFile }, 4},
		{"rewrite entry 6 and re-chain without the key", func(t *testing.T, dir string) {
			rechain(t, dir, 6, nil)
		}, 10, func(s []string) string { return s[2] }, 2},
		{"rewrite entry 6, re-chain and re-sign with another key", func(t *testing.T, dir string) {
			rechain(t, dir, 6, otherPriv)
		}, 5, func([]string) string { return checkpointsFile }, 1},
		{"append two entries without the key", func(t *testing.T, dir string) {
			p := seg(dir, 2)
			lines := readLines(t, p)
			var last Entry
			json.Unmarshal(lines[len(lines)-1], &last)
			for range 2 {
				e := last
				e.Seq, e.Prev, e.Purpose = last.Seq+1, last.Hash, "forged"
				e.Hash = entryHash(&e)
				b, _ := json.Marshal(&e)
				lines = append(lines, b)
				last = e
			}
			writeLines(t, p, lines)
		}, 13, func(s []string) string { return s[2] }, 5},
		{"delete head.json", func(t *testing.T, dir string) {
			os.Remove(filepath.Join(dir, headFile))
		}, 0, func([]string) string { return headFile }, 0},
	}
	tl, segs := threeDays(t)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := copyDir(t, tl.dir)
			tc.tamper(t, dir)
			r, err := Verify(dir, tl.PublicKey())
			if err != nil {
				t.Fatal(err)
			}
			want := Problem{Seq: tc.wantSeq, File: tc.wantFile(segs), Line: tc.wantLine}
			found := false
			for _, p := range r.Problems {
				found = found || (p.Seq == want.Seq && p.File == want.File && p.Line == want.Line)
				if strings.HasPrefix(p.File, "audit-") && strings.HasPrefix(want.File, "audit-") && p.Seq < want.Seq {
					t.Errorf("problem blames seq %d, before the tampering at %d: %s", p.Seq, want.Seq, p)
				}
			}
			if !found {
				t.Fatalf("want a problem at seq %d, %s:%d; got:\n%s", want.Seq, want.File, want.Line, problems(r))
			}
			t.Logf("reported:\n%s", problems(r))

			// Open must refuse to append to it, naming where.
			_, err = Open(dir, Options{KeyPath: tl.keyPath, Now: tl.clock.Now})
			if err == nil || !strings.Contains(err.Error(), "blocknat audit verify") {
				t.Fatalf("Open of the tampered log: %v; want a refusal pointing at verify", err)
			}
		})
	}

	t.Run("verify with another public key", func(t *testing.T) {
		r, err := Verify(tl.dir, otherPub)
		if err != nil {
			t.Fatal(err)
		}
		// head.json and the three checkpoints all fail.
		bad := 0
		for _, p := range r.Problems {
			if strings.Contains(p.Reason, "bad signature") {
				bad++
			}
		}
		if bad != 4 {
			t.Fatalf("%d bad signatures, want 4:\n%s", bad, problems(r))
		}
	})
}

// rechain rewrites entry seq and recomputes every hash after it, as someone
// who can edit the files but (priv == nil) not sign would. With priv it also
// re-signs head and checkpoints.
func rechain(t *testing.T, dir string, seq uint64, priv ed25519.PrivateKey) {
	t.Helper()
	prev := ""
	hashes := map[uint64]string{}
	for _, name := range segments(t, dir) {
		p := filepath.Join(dir, name)
		lines := readLines(t, p)
		for i, line := range lines {
			var e Entry
			if err := json.Unmarshal(line, &e); err != nil {
				t.Fatal(err)
			}
			if e.Seq == seq {
				e.Purpose = "rewritten"
			}
			if e.Seq >= seq {
				e.Prev = prev
				e.Hash = entryHash(&e)
				lines[i], _ = json.Marshal(&e)
			}
			prev = e.Hash
			hashes[e.Seq] = e.Hash
		}
		writeLines(t, p, lines)
	}
	if priv == nil {
		return
	}
	p := filepath.Join(dir, checkpointsFile)
	lines := readLines(t, p)
	for i, line := range lines {
		var r SignedRecord
		json.Unmarshal(line, &r)
		r = signRecord(priv, r.Kind, r.Seq, hashes[r.Seq], r.Time)
		lines[i] = bytes.TrimSuffix(r.line(), []byte{'\n'})
	}
	writeLines(t, p, lines)
	var h SignedRecord
	data, _ := os.ReadFile(filepath.Join(dir, headFile))
	json.Unmarshal(data, &h)
	h = signRecord(priv, kindHead, h.Seq, hashes[h.Seq], h.Time)
	os.WriteFile(filepath.Join(dir, headFile), h.line(), 0o600)
}

// Every single changed byte of an entry is reported, at that entry's seq
// and line, and nowhere else.
func TestEveryFlippedByteIsNamed(t *testing.T) {
	tl, segs := threeDays(t)
	path := filepath.Join(tl.dir, segs[1])
	orig, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	start := bytes.IndexByte(orig, '\n') + 1 // entry 6 is line 2
	end := start + bytes.IndexByte(orig[start:], '\n')
	want := Problem{Seq: 6, File: segs[1], Line: 2}
	for off := start; off < end; off++ {
		for _, mask := range []byte{0x01, 0x20} {
			data := bytes.Clone(orig)
			data[off] ^= mask
			if err := os.WriteFile(path, data, 0o600); err != nil {
				t.Fatal(err)
			}
			r, err := Verify(tl.dir, tl.PublicKey())
			if err != nil {
				t.Fatal(err)
			}
			if len(r.Problems) != 1 || r.Problems[0].Seq != want.Seq || r.Problems[0].File != want.File || r.Problems[0].Line != want.Line {
				t.Fatalf("byte %d ^ %#x (%q -> %q): want exactly one problem at %s:%d seq %d, got:\n%s",
					off-start, mask, orig[off], data[off], want.File, want.Line, want.Seq, problems(r))
			}
		}
	}
	os.WriteFile(path, orig, 0o600)
	mustVerifyOK(t, tl.dir, tl)
}

func TestCrashBetweenEntryAndHead(t *testing.T) {
	tl := openTest(t, Options{CheckpointInterval: -1})
	tl.appendN(t, 3)
	headAt3, err := os.ReadFile(filepath.Join(tl.dir, headFile))
	if err != nil {
		t.Fatal(err)
	}
	tl.appendN(t, 1)
	// Every write is fsync'd, so a copy now is what a power cut would leave;
	// putting back the older head gives the state between the entry's fsync
	// and the head's rename.
	dir := copyDir(t, tl.dir)
	os.WriteFile(filepath.Join(dir, headFile), headAt3, 0o600)
	r, err := Verify(dir, tl.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	seg := segments(t, dir)[0]
	if len(r.Problems) != 1 || r.Problems[0].Seq != 4 || r.Problems[0].File != seg || r.Problems[0].Line != 4 {
		t.Fatalf("want one problem naming seq 4 at %s:4 as not covered by the head, got:\n%s", seg, problems(r))
	}
	l, err := Open(dir, Options{KeyPath: tl.keyPath, Now: tl.clock.Now})
	if err != nil {
		t.Fatalf("Open after a crash in the head window: %v", err)
	}
	defer l.Close()
	if e, err := l.Append(entryFor(5)); err != nil || e.Seq != 5 {
		t.Fatalf("Append after recovery: %+v, %v", e, err)
	}
	if r, err := Verify(dir, tl.PublicKey()); err != nil || !r.OK() {
		t.Fatalf("Verify after recovery: %v\n%s", err, problems(r))
	}

	// Two entries beyond the head is not a crash Append can leave.
	tl.appendN(t, 1)
	dir2 := copyDir(t, tl.dir)
	os.WriteFile(filepath.Join(dir2, headFile), headAt3, 0o600)
	if _, err := Open(dir2, Options{KeyPath: tl.keyPath, Now: tl.clock.Now}); err == nil || !strings.Contains(err.Error(), "entries 4..5 not covered") {
		t.Fatalf("Open with two unsigned entries: %v; want a refusal", err)
	}
}

func TestTornTail(t *testing.T) {
	tl := openTest(t, Options{CheckpointInterval: -1})
	tl.appendN(t, 5)
	dir := copyDir(t, tl.dir)
	seg := segments(t, dir)[0]
	segPath := filepath.Join(dir, seg)
	torn := []byte(`{"seq":6,"time":"2026-03-01T12:00:00Z","operator":"uid:10`)
	f, _ := os.OpenFile(segPath, os.O_WRONLY|os.O_APPEND, 0)
	f.Write(torn)
	f.Close()
	// A crash inside a checkpoint write tears checkpoints.jsonl the same way.
	f, _ = os.OpenFile(filepath.Join(dir, checkpointsFile), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	f.Write([]byte(`{"kind":"checkpoint","seq":5,"ha`))
	f.Close()

	r, _ := Verify(dir, tl.PublicKey())
	var named bool
	for _, p := range r.Problems {
		named = named || (p.Seq == 6 && p.File == seg && p.Line == 6)
	}
	if !named {
		t.Fatalf("Verify does not name seq 6 at %s:6:\n%s", seg, problems(r))
	}

	// Open repairs it: the torn bytes are kept beside the segment, and
	// the repair is the next entry.
	size := fileSize(t, segPath) - int64(len(torn))
	l, err := Open(dir, Options{KeyPath: tl.keyPath, Now: tl.clock.Now})
	if err != nil {
		t.Fatalf("Open with a torn last line: %v; want it repaired", err)
	}
	defer l.Close()
	kept, err := os.ReadFile(filepath.Join(dir, seg+tornSuffix+strconv.FormatInt(size, 10)))
	if err != nil || !bytes.Equal(kept, torn) {
		t.Fatalf("torn bytes not kept beside the segment: %q, %v", kept, err)
	}
	es, err := l.Entries(6, 1)
	if err != nil || len(es) != 1 || es[0].Action != ActionRepair || es[0].Operator != RepairOperator || !strings.Contains(es[0].Detail, seg) {
		t.Fatalf("entry 6 after the repair: %+v, %v", es, err)
	}
	if e, err := l.Append(Entry{Operator: "uid:0(root)", Action: "lookup", Outcome: OutcomeAnswered}); err != nil || e.Seq != 7 {
		t.Fatalf("Append after repair: %+v, %v", e, err)
	}
	if r, err := l.Verify(); err != nil || !r.OK() {
		t.Fatalf("Verify after repair: %v\n%s", err, problems(r))
	}
}

func TestRepairRefusesTampering(t *testing.T) {
	tl, segs := threeDays(t)
	dir := copyDir(t, tl.dir)
	// Entry 6 edited and the newest segment torn: the edit is no crash's.
	p := filepath.Join(dir, segs[1])
	data, _ := os.ReadFile(p)
	second := bytes.IndexByte(data, '\n') + 1
	data[second+10] ^= 1
	os.WriteFile(p, data, 0o600)
	newest := filepath.Join(dir, segs[2])
	before, _ := os.ReadFile(newest)
	os.WriteFile(newest, append(bytes.Clone(before), `{"seq":13`...), 0o600)
	if _, err := RepairTornTail(dir, tl.PublicKey()); err == nil || !strings.Contains(err.Error(), segs[1]+":2") {
		t.Fatalf("RepairTornTail on a tampered log: %v; want a refusal naming %s:2", err, segs[1])
	}
	after, _ := os.ReadFile(newest)
	if !bytes.Equal(after, append(before, `{"seq":13`...)) {
		t.Fatal("a refused repair changed the segment")
	}
	// A cut inside an older segment is not at the end: no repair either.
	dir2 := copyDir(t, tl.dir)
	p2 := filepath.Join(dir2, segs[1])
	d2, _ := os.ReadFile(p2)
	os.WriteFile(p2, d2[:len(d2)-5], 0o600)
	if _, err := RepairTornTail(dir2, tl.PublicKey()); err == nil {
		t.Fatal("RepairTornTail cut a line out of the middle of the log")
	}
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

func checkpointSeqs(t *testing.T, dir string) []uint64 {
	t.Helper()
	var seqs []uint64
	for _, line := range readLines(t, filepath.Join(dir, checkpointsFile)) {
		var r SignedRecord
		if err := json.Unmarshal(line, &r); err != nil {
			t.Fatal(err)
		}
		if r.Kind == kindCheckpoint {
			seqs = append(seqs, r.Seq)
		}
	}
	return seqs
}

func TestCheckpointSchedule(t *testing.T) {
	const n = 5
	tl := openTest(t, Options{CheckpointEvery: n, CheckpointInterval: time.Hour})
	tl.appendN(t, 2*n+1)
	if got := checkpointSeqs(t, tl.dir); !slices.Equal(got, []uint64{5, 10}) {
		t.Fatalf("after %d appends: checkpoints %v, want [5 10]", 2*n+1, got)
	}
	tl.clock.Advance(59 * time.Minute)
	tl.Tick()
	if got := checkpointSeqs(t, tl.dir); len(got) != 2 {
		t.Fatalf("Tick before the interval wrote a checkpoint: %v", got)
	}
	tl.clock.Advance(time.Minute)
	if err := tl.Tick(); err != nil {
		t.Fatal(err)
	}
	if got := checkpointSeqs(t, tl.dir); !slices.Equal(got, []uint64{5, 10, 11}) {
		t.Fatalf("Tick after the interval: %v, want [5 10 11]", got)
	}
	tl.clock.Advance(2 * time.Hour)
	tl.Tick()
	if got := checkpointSeqs(t, tl.dir); len(got) != 3 {
		t.Fatalf("Tick without new entries wrote a checkpoint: %v", got)
	}
	// The interval has passed since the last checkpoint: Append writes one.
	tl.appendN(t, 1)
	if got := checkpointSeqs(t, tl.dir); !slices.Equal(got, []uint64{5, 10, 11, 12}) {
		t.Fatalf("Append after the interval: %v, want [5 10 11 12]", got)
	}
	if err := tl.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	r := mustVerifyOK(t, tl.dir, tl)
	if r.Checkpoints != 5 {
		t.Fatalf("report counts %d checkpoints, want 5", r.Checkpoints)
	}
}

func TestRunCheckpointsOnItsOwn(t *testing.T) {
	dir := t.TempDir()
	l, err := Open(dir, Options{KeyPath: filepath.Join(t.TempDir(), "k"), CheckpointInterval: 40 * time.Millisecond, CheckpointEvery: 1000})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { l.Run(ctx); close(done) }()
	if _, err := l.Append(entryFor(1)); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, func() bool { return slices.Contains(checkpointSeqs(t, dir), 1) },
		"Run to write a checkpoint at a 40ms interval")
	cancel()
	<-done
}

func TestRetention(t *testing.T) {
	tl := openTest(t, Options{Retention: 3 * 24 * time.Hour, CheckpointEvery: 7})
	// Four entries at noon on each of six days (seq 1-4 on 1 March, ...).
	for range 6 {
		for range 4 {
			tl.appendN(t, 1)
			tl.clock.Advance(time.Minute)
		}
		tl.clock.Advance(24*time.Hour - 4*time.Minute)
	}
	// 7 March 00:00: the cutoff is 4 March 00:00, so 1-3 March go.
	tl.clock.Advance(-12 * time.Hour)
	removed, err := tl.Sweep()
	if err != nil || removed != 12 {
		t.Fatalf("Sweep: %d, %v; want 12 entries removed", removed, err)
	}
	if segs := segments(t, tl.dir); !slices.Equal(segs, []string{"audit-20260304.jsonl", "audit-20260305.jsonl", "audit-20260306.jsonl"}) {
		t.Fatalf("segments after Sweep: %v", segs)
	}
	r := mustVerifyOK(t, tl.dir, tl)
	if r.FirstSeq != 13 || r.LastSeq != 24 || r.Anchors != 3 {
		t.Fatalf("report after Sweep %+v, want 13..24 and 3 anchors", r)
	}
	// The removed entries are gone from every file; the kept ones are there.
	assertContent(t, tl.dir, "case-0012", false)
	assertContent(t, tl.dir, "case-0001", false)
	assertContent(t, tl.dir, "case-0013", true)
	if es, err := tl.Entries(0, 0); err != nil || len(es) != 12 || es[0].Seq != 13 {
		t.Fatalf("Entries after Sweep: %d entries from %v, %v", len(es), es[0].Seq, err)
	}
	if n, err := tl.Sweep(); err != nil || n != 0 {
		t.Fatalf("second Sweep: %d, %v", n, err)
	}

	// The chain goes on from the anchor, also across a reopen.
	tl.Close()
	tl.reopen(t)
	if e := tl.appendN(t, 1)[0]; e.Seq != 25 {
		t.Fatalf("seq after Sweep and reopen: %d", e.Seq)
	}
	mustVerifyOK(t, tl.dir, tl)

	// A segment removed behind the anchors' back is reported.
	dir := copyDir(t, tl.dir)
	os.Remove(filepath.Join(dir, "audit-20260304.jsonl"))
	r, _ = Verify(dir, tl.PublicKey())
	if r.OK() || r.Problems[0].Seq != 13 || r.Problems[0].File != "audit-20260305.jsonl" || r.Problems[0].Line != 1 {
		t.Fatalf("deleting the oldest kept segment: want seq 13 at audit-20260305.jsonl:1, got:\n%s", problems(r))
	}

	// Everything expires: the log is empty, and the chain still goes on.
	tl.clock.Advance(10 * 24 * time.Hour)
	if n, err := tl.Sweep(); err != nil || n != 13 {
		t.Fatalf("Sweep of everything: %d, %v", n, err)
	}
	if segs := segments(t, tl.dir); len(segs) != 0 {
		t.Fatalf("segments left: %v", segs)
	}
	mustVerifyOK(t, tl.dir, tl)
	tl.Close()
	tl.reopen(t)
	e := tl.appendN(t, 1)[0]
	if e.Seq != 26 {
		t.Fatalf("seq after pruning everything: %d, want 26", e.Seq)
	}
	r = mustVerifyOK(t, tl.dir, tl)
	if r.FirstSeq != 26 || r.Entries != 1 {
		t.Fatalf("report %+v", r)
	}
}

func assertContent(t *testing.T, dir, needle string, want bool) {
	t.Helper()
	des, _ := os.ReadDir(dir)
	found := false
	for _, de := range des {
		data, err := os.ReadFile(filepath.Join(dir, de.Name()))
		if err != nil {
			t.Fatal(err)
		}
		found = found || bytes.Contains(data, []byte(needle))
	}
	if found != want {
		t.Fatalf("%q on disk: %v, want %v", needle, found, want)
	}
}

func TestSweepRefusesTamperedLog(t *testing.T) {
	tl := openTest(t, Options{Retention: 24 * time.Hour})
	tl.appendN(t, 3)
	tl.clock.Advance(48 * time.Hour)
	tl.appendN(t, 1)
	old := filepath.Join(tl.dir, segmentName(day0))
	data, _ := os.ReadFile(old)
	data[20] ^= 1
	os.WriteFile(old, data, 0o600)
	if n, err := tl.Sweep(); err == nil || n != 0 {
		t.Fatalf("Sweep of a tampered log: %d, %v; want a refusal", n, err)
	}
	if _, err := os.Stat(old); err != nil {
		t.Fatalf("the tampered segment was removed: %v", err)
	}
}

func TestConcurrentAppend(t *testing.T) {
	tl := openTest(t, Options{CheckpointEvery: 17})
	const workers, each = 32, 25
	var wg sync.WaitGroup
	seqs := make(chan uint64, workers*each)
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				e, err := tl.Append(entryFor(w*1000 + i))
				if err != nil {
					t.Error(err)
					return
				}
				seqs <- e.Seq
			}
		})
	}
	wg.Wait()
	close(seqs)
	var got []uint64
	for s := range seqs {
		got = append(got, s)
	}
	slices.Sort(got)
	for i, s := range got {
		if s != uint64(i+1) {
			t.Fatalf("seqs are not 1..%d without gaps: position %d holds %d", workers*each, i, s)
		}
	}
	if len(got) != workers*each {
		t.Fatalf("%d seqs", len(got))
	}
	r := mustVerifyOK(t, tl.dir, tl)
	if r.LastSeq != workers*each {
		t.Fatalf("LastSeq %d", r.LastSeq)
	}
}

func TestAppendChecksAndBoundsInput(t *testing.T) {
	tl := openTest(t, Options{})
	for _, bad := range []Entry{
		{Action: "lookup", Outcome: OutcomeAnswered},
		{Operator: "uid:1", Outcome: OutcomeAnswered},
		{Operator: "uid:1", Action: "lookup", Outcome: "fine"},
	} {
		if _, err := tl.Append(bad); err == nil {
			t.Fatalf("Append(%+v) accepted", bad)
		}
	}
	if tl.Len() != 0 {
		t.Fatalf("rejected entries took seqs: Len %d", tl.Len())
	}
	crit := map[string]string{"ip": "bad\xffutf8", "huge": strings.Repeat("é", 3000)}
	for i := range 100 {
		crit["k"+strconv.Itoa(1000+i)] = "v"
	}
	e, err := tl.Append(Entry{Operator: "cert:CN=mallory", Action: "lookup", Outcome: OutcomeMalformed, Criteria: crit})
	if err != nil {
		t.Fatal(err)
	}
	crit["ip"] = "changed after Append"
	if e.Criteria["ip"] != "bad\uFFFDutf8" {
		t.Fatalf("invalid UTF-8 stored as %q", e.Criteria["ip"])
	}
	if h := e.Criteria["huge"]; len(h) > MaxFieldBytes+64 || !strings.Contains(h, "truncated") {
		t.Fatalf("oversized criterion stored with %d bytes", len(h))
	}
	if len(e.Criteria) != MaxCriteria+1 || e.Criteria[TruncatedKey] == "" {
		t.Fatalf("%d criteria stored, want %d and a truncation note", len(e.Criteria), MaxCriteria+1)
	}
	stored, err := tl.Entries(1, 1)
	if err != nil || !reflect.DeepEqual(stored[0], e) {
		t.Fatalf("stored entry differs from the returned one: %+v", stored)
	}
	mustVerifyOK(t, tl.dir, tl)
}

func TestOpenRefusesOtherKeyAndMissingHead(t *testing.T) {
	tl := openTest(t, Options{})
	tl.appendN(t, 3)
	tl.Close()
	other := filepath.Join(t.TempDir(), "other.key")
	if _, err := Open(tl.dir, Options{KeyPath: other}); err == nil || !strings.Contains(err.Error(), "different public key") {
		t.Fatalf("Open with another key: %v", err)
	}
	// Without audit.pub, the signatures still tell.
	dir := copyDir(t, tl.dir)
	os.Remove(filepath.Join(dir, pubFile))
	if _, err := Open(dir, Options{KeyPath: other}); err == nil || !strings.Contains(err.Error(), "bad signature") {
		t.Fatalf("Open with another key and no audit.pub: %v", err)
	}
	dir = copyDir(t, tl.dir)
	os.Remove(filepath.Join(dir, headFile))
	if _, err := Open(dir, Options{KeyPath: tl.keyPath}); err == nil || !strings.Contains(err.Error(), "head.json") {
		t.Fatalf("Open without head.json: %v", err)
	}
	if _, err := Open(t.TempDir(), Options{}); err == nil || !strings.Contains(err.Error(), "KeyPath") {
		t.Fatalf("Open without KeyPath: %v", err)
	}
	if _, err := Verify(tl.dir, nil); err == nil {
		t.Fatal("Verify without a public key")
	}
}

func TestClosed(t *testing.T) {
	tl := openTest(t, Options{})
	tl.appendN(t, 1)
	tl.Close()
	if _, err := tl.Append(entryFor(2)); err != ErrClosed {
		t.Fatalf("Append after Close: %v", err)
	}
	if got := checkpointSeqs(t, tl.dir); !slices.Equal(got, []uint64{1}) {
		t.Fatalf("Close wrote checkpoints %v, want [1]", got)
	}
}

func BenchmarkAppend(b *testing.B) {
	l, err := Open(b.TempDir(), Options{KeyPath: filepath.Join(b.TempDir(), "k")})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	e := entryFor(1)
	for b.Loop() {
		if _, err := l.Append(e); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "entries/s")
}
