package audit

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestAppendProvedVerifies(t *testing.T) {
	tl := openTest(t, Options{CheckpointEvery: 2})
	tl.appendN(t, 1)
	e, head, err := tl.AppendProved(entryFor(2))
	if err != nil {
		t.Fatal(err)
	}
	if head.Kind != kindHead || head.Seq != e.Seq || head.Hash != e.Hash {
		t.Fatalf("AppendProved returned head %+v for entry %d %s", head, e.Seq, e.Hash)
	}
	onDisk, err := os.ReadFile(filepath.Join(tl.dir, headFile))
	if err != nil || !bytes.Equal(onDisk, head.line()) {
		t.Fatalf("returned head is not the one written:\n%s\n%s", onDisk, head.line())
	}
	if err := head.Verify(tl.PublicKey()); err != nil {
		t.Fatalf("head.Verify: %v", err)
	}
	p := Proof{Entry: e, Signed: head}
	if err := VerifyProof(p, tl.PublicKey()); err != nil {
		t.Fatalf("VerifyProof: %v", err)
	}
	// The chain may also spell out the entry itself.
	if err := VerifyProof(Proof{Entry: e, Chain: []Entry{e}, Signed: head}, tl.PublicKey()); err != nil {
		t.Fatalf("VerifyProof with a one-entry chain: %v", err)
	}
	// As a requester gets it: a file, checked with the key they were given.
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(b, []byte(`"chain"`)) {
		t.Fatalf("a proof by its own head writes a chain: %s", b)
	}
	var got Proof
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(filepath.Join(tl.dir, pubFile))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	pub, err := ReadPublicKey(f)
	if err != nil || !pub.Equal(tl.PublicKey()) {
		t.Fatalf("ReadPublicKey(audit.pub): %v, %v", pub, err)
	}
	if err := VerifyProof(got, pub); err != nil {
		t.Fatalf("VerifyProof after a JSON round trip: %v", err)
	}
	mustVerifyOK(t, tl.dir, tl)
}

func TestReadPublicKeyRefusesOthers(t *testing.T) {
	for _, in := range []string{"", "not pem", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"} {
		if _, err := ReadPublicKey(strings.NewReader(in)); err == nil {
			t.Fatalf("ReadPublicKey(%q) accepted", in)
		}
	}
}

// proveTestLog is an open log of 12 entries, 4 per UTC day, with
// checkpoints at 5 and 10 and the head at 12.
func proveTestLog(t *testing.T) *testLog {
	t.Helper()
	tl := openTest(t, Options{CheckpointEvery: 5, CheckpointInterval: -1})
	for range 3 {
		tl.appendN(t, 4)
		tl.clock.Advance(24 * time.Hour)
	}
	return tl
}

func TestProveEntry(t *testing.T) {
	tl := proveTestLog(t)
	check := func(t *testing.T) {
		t.Helper()
		for seq := uint64(1); seq <= 12; seq++ {
			p, err := tl.ProveEntry(seq)
			if err != nil {
				t.Fatalf("ProveEntry(%d): %v", seq, err)
			}
			wantSigned, wantKind := uint64(5), kindCheckpoint
			switch {
			case seq > 10:
				wantSigned, wantKind = 12, kindHead
			case seq > 5:
				wantSigned = 10
			}
			if p.Entry.Seq != seq || p.Signed.Seq != wantSigned || p.Signed.Kind != wantKind {
				t.Fatalf("ProveEntry(%d): entry %d signed by %s %d, want %s %d", seq, p.Entry.Seq, p.Signed.Kind, p.Signed.Seq, wantKind, wantSigned)
			}
			if wantLen := int(wantSigned - seq + 1); wantLen > 1 && len(p.Chain) != wantLen || wantLen == 1 && p.Chain != nil {
				t.Fatalf("ProveEntry(%d): chain of %d entries, want %d (none when the record names the entry)", seq, len(p.Chain), wantLen)
			}
			if err := VerifyProof(p, tl.PublicKey()); err != nil {
				t.Fatalf("proof of %d: %v", seq, err)
			}
		}
	}
	check(t)
	// After a reopen the head comes from head.json, not from an append.
	tl.Close()
	tl.reopen(t)
	check(t)

	for _, seq := range []uint64{0, 13} {
		if _, err := tl.ProveEntry(seq); err == nil {
			t.Fatalf("ProveEntry(%d) of a 12-entry log succeeded", seq)
		}
	}
	// A log altered on disk does not prove the entries the change touches.
	seg := filepath.Join(tl.dir, segments(t, tl.dir)[1])
	lines := readLines(t, seg)
	lines[2] = bytes.Replace(lines[2], []byte("case-0007"), []byte("case-7777"), 1)
	writeLines(t, seg, lines)
	if _, err := tl.ProveEntry(6); err == nil || !strings.Contains(err.Error(), "chain[1] (seq 7)") {
		t.Fatalf("ProveEntry(6) over an altered entry 7: %v; want a refusal naming it", err)
	}
	if _, err := tl.ProveEntry(11); err != nil {
		t.Fatalf("ProveEntry(11), after the altered entry: %v", err)
	}
}

func TestProveEntryAfterRetention(t *testing.T) {
	tl := openTest(t, Options{Retention: 24 * time.Hour})
	tl.appendN(t, 2)
	tl.clock.Advance(72 * time.Hour)
	tl.appendN(t, 1)
	if n, err := tl.Sweep(); err != nil || n != 2 {
		t.Fatalf("Sweep: %d, %v", n, err)
	}
	if _, err := tl.ProveEntry(1); err == nil || !strings.Contains(err.Error(), "retention") {
		t.Fatalf("ProveEntry of a pruned entry: %v", err)
	}
	if _, err := tl.ProveEntry(3); err != nil {
		t.Fatal(err)
	}
}

// Every change to one value anywhere in a proof (entry, chain entry or
// signed record) makes it fail: one flipped byte of a string (criteria
// keys too), a number off by one, an array element left out.
func TestProofDetectsEveryChange(t *testing.T) {
	tl := proveTestLog(t)
	own, head, err := tl.AppendProved(entryFor(14))
	if err != nil {
		t.Fatal(err)
	}
	chained, err := tl.ProveEntry(6) // 6..10, entries with and without subjects
	if err != nil {
		t.Fatal(err)
	}
	for name, p := range map[string]Proof{"own head": {Entry: own, Signed: head}, "chain to a checkpoint": chained} {
		t.Run(name, func(t *testing.T) {
			doc, err := json.Marshal(p)
			if err != nil {
				t.Fatal(err)
			}
			unchanged, muts := mutations(t, doc)
			var same Proof
			if err := json.Unmarshal(unchanged, &same); err != nil || VerifyProof(same, tl.PublicKey()) != nil {
				t.Fatalf("the proof does not survive the generic form unchanged: %v\n%s", err, unchanged)
			}
			caught := 0
			for _, m := range muts {
				var q Proof
				if err := json.Unmarshal(m, &q); err != nil {
					continue // no longer a proof at all (a time that does not parse)
				}
				if err := VerifyProof(q, tl.PublicKey()); err == nil {
					t.Fatalf("altered proof verifies:\n%s\noriginal:\n%s", m, doc)
				}
				caught++
			}
			if caught < len(muts)*9/10 {
				t.Fatalf("only %d of %d changes reached VerifyProof", caught, len(muts))
			}
			t.Logf("%d changes, %d caught by VerifyProof, the rest by decoding", len(muts), caught)
		})
	}
}

// mutations returns doc re-encoded from its generic form, and a copy of that
// for each way TestProofDetectsEveryChange lists of changing one value.
func mutations(t *testing.T, doc []byte) (unchanged []byte, changed [][]byte) {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(doc))
	dec.UseNumber()
	var root any
	if err := dec.Decode(&root); err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	emit := func() {
		b, err := json.Marshal(root)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
	emit()
	unchanged, out = out[0], out[:0]

	var walk func(v any, set func(any), isCriteria bool)
	walk = func(v any, set func(any), isCriteria bool) {
		switch x := v.(type) {
		case string:
			for i := range len(x) {
				b := []byte(x)
				b[i] ^= 0x01
				set(string(b))
				emit()
			}
			set(x)
		case json.Number:
			n, err := x.Int64()
			if err != nil {
				t.Fatal(err)
			}
			set(json.Number(strconv.FormatInt(n+1, 10)))
			emit()
			set(x)
		case []any:
			for i := range x {
				walk(x[i], func(nv any) { x[i] = nv }, false)
			}
			for i := range x {
				set(slices.Delete(slices.Clone(x), i, i+1))
				emit()
			}
			set(x)
		case map[string]any:
			keys := make([]string, 0, len(x))
			for k := range x {
				keys = append(keys, k)
			}
			for _, k := range keys {
				walk(x[k], func(nv any) { x[k] = nv }, k == "criteria")
			}
			if isCriteria {
				for _, k := range keys {
					val := x[k]
					delete(x, k)
					for i := range len(k) {
						b := []byte(k)
						b[i] ^= 0x01
						x[string(b)] = val
						emit()
						delete(x, string(b))
					}
					x[k] = val
				}
			}
		}
	}
	walk(root, func(nv any) { root = nv }, false)
	if len(out) < 100 {
		t.Fatalf("only %d mutations of %s", len(out), doc)
	}
	return unchanged, out
}

func TestProofFromAnotherKeyFails(t *testing.T) {
	tl := openTest(t, Options{})
	e, head, err := tl.AppendProved(entryFor(2))
	if err != nil {
		t.Fatal(err)
	}
	otherPub, otherPriv, _ := ed25519.GenerateKey(rand.Reader)
	forged := Proof{Entry: e, Signed: signRecord(otherPriv, head.Kind, head.Seq, head.Hash, head.Time)}
	if err := VerifyProof(forged, tl.PublicKey()); err == nil || !strings.Contains(err.Error(), "bad signature") {
		t.Fatalf("proof signed with another key: %v", err)
	}
	if err := VerifyProof(Proof{Entry: e, Signed: head}, otherPub); err == nil || !strings.Contains(err.Error(), "bad signature") {
		t.Fatalf("proof checked with another key: %v", err)
	}
	if err := VerifyProof(Proof{Entry: e, Signed: head}, nil); err == nil {
		t.Fatal("VerifyProof without a key")
	}
}

// The checks that a single changed value cannot reach: records and chains
// that are each valid but do not fit together.
func TestProofMismatches(t *testing.T) {
	tl := proveTestLog(t)
	pub := tl.PublicKey()
	p6, err := tl.ProveEntry(6)
	if err != nil {
		t.Fatal(err)
	}
	p12, err := tl.ProveEntry(12)
	if err != nil {
		t.Fatal(err)
	}
	upper := p12.Signed
	upper.Sig = strings.ToUpper(upper.Sig)
	local := p12.Signed
	local.Time = local.Time.In(time.FixedZone("CET", 3600))
	for _, tc := range []struct {
		name string
		p    Proof
		want string
	}{
		{"another entry's record", Proof{Entry: p6.Entry, Signed: p12.Signed}, "names seq 12"},
		{"chain cut short", Proof{Entry: p6.Entry, Chain: p6.Chain[:3], Signed: p6.Signed}, "names seq 10"},
		{"chain missing an entry", Proof{Entry: p6.Entry, Chain: slices.Delete(slices.Clone(p6.Chain), 2, 3), Signed: p6.Signed}, "seq 9 follows seq 7"},
		{"chain of another entry", Proof{Entry: p6.Entry, Chain: p6.Chain[1:], Signed: p6.Signed}, "chain[0] (seq 7) is not the proved entry"},
		{"chain reordered", Proof{Entry: p6.Entry, Chain: []Entry{p6.Chain[0], p6.Chain[2], p6.Chain[1], p6.Chain[3], p6.Chain[4]}, Signed: p6.Signed}, "seq 8 follows seq 6"},
		{"upper-case signature", Proof{Entry: p12.Entry, Signed: upper}, "lowercase hex"},
		{"time not in UTC", Proof{Entry: p12.Entry, Signed: local}, "UTC"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := VerifyProof(tc.p, pub); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("VerifyProof: %v; want an error containing %q", err, tc.want)
			}
		})
	}
}

// Proofs and scans taken while entries are appended are whole: every proof
// verifies and a scan never sees a torn line.
func TestProveAndScanDuringAppend(t *testing.T) {
	tl := openTest(t, Options{CheckpointEvery: 7})
	tl.appendN(t, 1)
	done := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := range 50 {
				e, head, err := tl.AppendProved(entryFor(w*1000 + i))
				if err != nil {
					t.Error(err)
					return
				}
				if err := VerifyProof(Proof{Entry: e, Signed: head}, tl.PublicKey()); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	go func() { wg.Wait(); close(done) }()
	for {
		select {
		case <-done:
			mustVerifyOK(t, tl.dir, tl)
			return
		default:
		}
		seq := tl.Len()
		p, err := tl.ProveEntry(max(1, seq/2))
		if err != nil {
			t.Fatalf("ProveEntry(%d) during appends: %v", max(1, seq/2), err)
		}
		if err := VerifyProof(p, tl.PublicKey()); err != nil {
			t.Fatal(err)
		}
		if err := tl.Scan(time.Time{}, day0, func(Entry) error { return nil }); err != nil {
			t.Fatalf("Scan during appends: %v", err)
		}
	}
}
