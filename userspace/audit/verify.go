package audit

import (
	"bytes"
	"cmp"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
)

// Problem names where verification failed. Seq is the entry concerned (for
// a missing range, the first missing seq); File and Line (1-based) locate the
// line at fault, or for something missing the place it should have been.
type Problem struct {
	Seq    uint64
	File   string
	Line   int
	Reason string
}

func (p Problem) String() string {
	return fmt.Sprintf("seq %d, %s:%d: %s", p.Seq, p.File, p.Line, p.Reason)
}

// Report is the result of a verification.
type Report struct {
	Entries           uint64 // entry lines present and readable
	Checkpoints       int    // validly signed lines of checkpoints.jsonl (anchors included)
	Anchors           int    // of which retention anchors
	FirstSeq, LastSeq uint64 // seqs of the first and last entry present (0 when none)
	HeadSeq           uint64 // seq named by a validly signed head.json
	Problems          []Problem
}

// OK says whether the log verified without any problem.
func (r Report) OK() bool { return len(r.Problems) == 0 }

// Verify checks the log in dir against pub without opening it for writing,
// so it works on a copy taken off the box. The error is for what stops the
// check (an unreadable directory); what the check finds is in the Report.
func Verify(dir string, pub ed25519.PublicKey) (Report, error) {
	if len(pub) != ed25519.PublicKeySize {
		return Report{}, errors.New("verify: an ed25519 public key is required (load it from a copy kept off the box)")
	}
	snap, err := takeSnapshot(dir)
	if err != nil {
		return Report{}, err
	}
	res, err := scan(snap, pub)
	if err != nil {
		return Report{}, err
	}
	return res.report, nil
}

// problemKind lets Open and RepairTornTail tell a crash's traces from
// tampering.
type problemKind int

const (
	kindOther        problemKind = iota
	kindUnsignedTail             // entries after the head's seq
	kindTorn                     // last line of a file without its newline
	kindNoHead                   // head.json missing
)

type problem struct {
	Problem
	kind  problemKind
	count uint64 // kindUnsignedTail: how many entries
}

type signedAt struct {
	rec  SignedRecord
	file string
	line int
}

type entryRef struct {
	file           string
	line           int
	stored, actual string // Hash as written and as computed
}

type scanResult struct {
	report   Report
	problems []problem
	segments []segmentInfo
	// lastSeq and lastHash are where the chain ends: the last entry, or the
	// newest anchor when retention removed every entry.
	lastSeq        uint64
	lastHash       string
	head           *SignedRecord
	lastCheckpoint *SignedRecord
}

func (res *scanResult) add(kind problemKind, p Problem) {
	res.problems = append(res.problems, problem{Problem: p, kind: kind})
	res.report.Problems = append(res.report.Problems, p)
}

// scan verifies a snapshot in three phases: it reads the signed records,
// walks the hash chain through the segments, and checks every signed
// record against the entry it names.
func scan(snap snapshot, pub ed25519.PublicKey) (*scanResult, error) {
	res := &scanResult{}
	signed, err := res.readSigned(snap, pub)
	if err != nil {
		return nil, err
	}
	chain, err := res.walkChain(snap, signed)
	if err != nil {
		return nil, err
	}
	res.checkSigned(signed, chain)
	return res, nil
}

// signedSet is what the signed records say. They are read first because
// they say which entries' hashes the chain walk must remember.
type signedSet struct {
	records      []signedAt // checkpoints and anchors with valid signatures
	head         *signedAt  // nil when head.json is missing or invalid
	anchors      map[uint64]SignedRecord
	newestAnchor *SignedRecord
	wanted       map[uint64]bool // seqs whose entries checkSigned compares
}

// readSigned is the first phase: head.json and checkpoints.jsonl.
func (res *scanResult) readSigned(snap snapshot, pub ed25519.PublicKey) (*signedSet, error) {
	signed := &signedSet{head: res.readHead(snap.head, pub), anchors: map[uint64]SignedRecord{}, wanted: map[uint64]bool{}}
	if snap.checkpoints != nil {
		data, err := readSnap(snap.dir, *snap.checkpoints)
		if err != nil {
			return nil, err
		}
		signed.records = res.readCheckpoints(data, pub)
	}
	for _, r := range signed.records {
		if r.rec.Kind == kindAnchor {
			signed.anchors[r.rec.Seq] = r.rec
			if signed.newestAnchor == nil || r.rec.Seq > signed.newestAnchor.Seq {
				a := r.rec
				signed.newestAnchor = &a
			}
		}
	}
	for _, r := range signed.records {
		signed.wanted[r.rec.Seq] = true
	}
	if signed.head != nil {
		signed.wanted[signed.head.rec.Seq] = true
		signed.wanted[signed.head.rec.Seq+1] = true
	}
	return signed, nil
}

// readHead returns the validly signed head, or nil.
func (res *scanResult) readHead(line []byte, pub ed25519.PublicKey) *signedAt {
	if line == nil {
		res.add(kindNoHead, Problem{File: headFile, Reason: "head.json is missing: the signed record of the newest entry was deleted"})
		return nil
	}
	if len(line) == 0 || line[len(line)-1] != '\n' || bytes.Count(line, []byte{'\n'}) != 1 {
		res.add(kindOther, Problem{File: headFile, Line: 1, Reason: "head.json is not exactly one line"})
		return nil
	}
	rec, err := parseSigned(line[:len(line)-1], pub)
	if err != nil {
		res.add(kindOther, Problem{Seq: rec.Seq, File: headFile, Line: 1, Reason: err.Error()})
		return nil
	}
	if rec.Kind != kindHead {
		res.add(kindOther, Problem{Seq: rec.Seq, File: headFile, Line: 1, Reason: fmt.Sprintf("kind %q where %q belongs", rec.Kind, kindHead)})
		return nil
	}
	head := &signedAt{rec: rec, file: headFile, line: 1}
	res.head = &head.rec
	res.report.HeadSeq = rec.Seq
	return head
}

// readCheckpoints returns the validly signed checkpoints and anchors of
// checkpoints.jsonl, in file order.
func (res *scanResult) readCheckpoints(data []byte, pub ed25519.PublicKey) []signedAt {
	var records []signedAt
	lines, torn := splitLines(data)
	var lastSeq = map[string]uint64{}
	for i, line := range lines {
		n := i + 1
		if torn && i == len(lines)-1 {
			res.add(kindTorn, Problem{File: checkpointsFile, Line: n, Reason: "incomplete last line (no newline): torn write from a crash, or the file was cut"})
			break
		}
		rec, err := parseSigned(line, pub)
		if err != nil {
			res.add(kindOther, Problem{Seq: rec.Seq, File: checkpointsFile, Line: n, Reason: err.Error()})
			continue
		}
		if rec.Kind != kindCheckpoint && rec.Kind != kindAnchor {
			res.add(kindOther, Problem{Seq: rec.Seq, File: checkpointsFile, Line: n, Reason: fmt.Sprintf("kind %q does not belong in %s", rec.Kind, checkpointsFile)})
			continue
		}
		if prev, ok := lastSeq[rec.Kind]; ok && rec.Seq < prev {
			res.add(kindOther, Problem{Seq: rec.Seq, File: checkpointsFile, Line: n, Reason: fmt.Sprintf("%s seq %d after one for seq %d: lines reordered", rec.Kind, rec.Seq, prev)})
		}
		lastSeq[rec.Kind] = max(lastSeq[rec.Kind], rec.Seq)
		records = append(records, signedAt{rec: rec, file: checkpointsFile, line: n})
		res.report.Checkpoints++
		if rec.Kind == kindAnchor {
			res.report.Anchors++
		} else if res.lastCheckpoint == nil || rec.Seq >= res.lastCheckpoint.Seq {
			r := rec
			res.lastCheckpoint = &r
		}
	}
	return records
}

// chain is the second phase's walk through the segments. prevSeq,
// prevStored and prevActual describe the newest entry taken as in place; an
// entry that goes back does not replace it, so that one swap shows up as two
// problems rather than a cascade.
type chain struct {
	res                    *scanResult
	signed                 *signedSet
	refs                   map[uint64]entryRef // the entries signed.wanted names
	haveFirst              bool
	prevSeq                uint64
	prevStored, prevActual string
	prevKnown              bool
	lastFile               string // the newest segment and its number of whole lines
	lastLines              int
}

// walkChain is the second phase: every entry of every segment, in order.
func (res *scanResult) walkChain(snap snapshot, signed *signedSet) (*chain, error) {
	c := &chain{res: res, signed: signed, refs: map[uint64]entryRef{}}
	for _, seg := range snap.segments {
		data, err := readSnap(snap.dir, seg)
		if err != nil {
			return nil, err
		}
		res.segments = append(res.segments, c.segment(seg, data))
	}
	if c.haveFirst {
		res.report.LastSeq = c.prevSeq
		res.lastSeq, res.lastHash = c.prevSeq, c.prevStored
	} else if signed.newestAnchor != nil {
		res.lastSeq, res.lastHash = signed.newestAnchor.Seq, signed.newestAnchor.Hash
	} else {
		res.lastHash = zeroHash
	}
	return c, nil
}

// segment walks the lines of one segment.
func (c *chain) segment(seg fileSnap, data []byte) segmentInfo {
	info := segmentInfo{name: seg.name, size: seg.size}
	lines, torn := splitLines(data)
	c.lastFile, c.lastLines = seg.name, len(lines)
	for i, line := range lines {
		if torn && i == len(lines)-1 {
			c.lastLines--
			p := problemAt(seg.name, i+1)(c.expected(), "incomplete last line (no newline): torn write from a crash, or the file was cut here")
			c.res.add(kindTorn, p)
			break
		}
		c.entry(&info, seg.name, i+1, line)
	}
	return info
}

// expected is the seq the next entry should have.
func (c *chain) expected() uint64 {
	if !c.haveFirst {
		if c.signed.newestAnchor != nil {
			return c.signed.newestAnchor.Seq + 1
		}
		return 1
	}
	return c.prevSeq + 1
}

// entry checks the entry on line n of file against the chain so far.
func (c *chain) entry(info *segmentInfo, file string, n int, line []byte) {
	res := c.res
	expected := c.expected()
	at := problemAt(file, n)
	var e Entry
	if err := json.Unmarshal(line, &e); err != nil {
		res.add(kindOther, at(expected, "not a valid entry: %v", err))
		if c.haveFirst {
			c.prevSeq, c.prevKnown = expected, false
		}
		return
	}
	res.report.Entries++
	actual := entryHash(&e)
	if e.Hash != actual || !canonicalEntry(&e, line) {
		seq := e.Seq
		if c.haveFirst {
			seq = expected
		}
		reason := "entry altered: its hash does not match its content"
		if e.Hash == actual {
			reason = "entry altered: not in canonical form (its bytes were changed)"
		}
		res.add(kindOther, at(seq, "%s", reason))
		// Take it as the entry that belongs here, so that the entries
		// after it are still checked against its stored hash.
		if !c.haveFirst {
			c.haveFirst = true
			res.report.FirstSeq = seq
		}
		c.take(info, file, n, seq, &e, actual)
		return
	}
	switch {
	case !c.haveFirst:
		c.haveFirst = true
		res.report.FirstSeq = e.Seq
		res.checkStart(e, c.signed.anchors, at)
	case e.Seq > expected:
		res.add(kindOther, at(expected, "%s missing (found seq %d): deleted entries or segment", span("entry", "entries", expected, e.Seq-1), e.Seq))
	case e.Seq < expected:
		res.add(kindOther, at(e.Seq, "seq %d after seq %d: entries reordered or duplicated", e.Seq, c.prevSeq))
		return
	case c.prevKnown && e.Prev != c.prevStored && e.Prev != c.prevActual:
		res.add(kindOther, at(e.Seq, "prev does not match the hash of entry %d: the chain was altered", c.prevSeq))
	}
	c.take(info, file, n, e.Seq, &e, actual)
}

// take makes e, on line n of file, the newest entry in place, as seq.
func (c *chain) take(info *segmentInfo, file string, n int, seq uint64, e *Entry, actual string) {
	c.prevSeq, c.prevStored, c.prevActual, c.prevKnown = seq, e.Hash, actual, true
	noteEntry(info, seq, e.Hash, e.Time)
	if c.signed.wanted[seq] {
		c.refs[seq] = entryRef{file, n, e.Hash, actual}
	}
}

// problemAt returns a maker of Problems on line n of file.
func problemAt(file string, n int) func(seq uint64, reason string, args ...any) Problem {
	return func(seq uint64, reason string, args ...any) Problem {
		return Problem{Seq: seq, File: file, Line: n, Reason: fmt.Sprintf(reason, args...)}
	}
}

// checkSigned is the third phase: every signed record must agree with the
// entry it names. Records are taken in seq order, so that a mismatch can
// say since which signed seq the entries were rewritten.
func (res *scanResult) checkSigned(signed *signedSet, c *chain) {
	all := append([]signedAt(nil), signed.records...)
	if signed.head != nil {
		all = append(all, *signed.head)
	}
	slices.SortStableFunc(all, func(a, b signedAt) int { return cmp.Compare(a.rec.Seq, b.rec.Seq) })
	var furthest *signedAt
	lastGood := uint64(0) // newest seq a signed record vouches for
	for _, r := range all {
		if furthest == nil || r.rec.Seq >= furthest.rec.Seq {
			furthest = &r
		}
		if r.rec.Seq == 0 {
			if r.rec.Hash != zeroHash {
				res.add(kindOther, Problem{File: r.file, Line: r.line, Reason: "signed record for seq 0 with a non-zero hash"})
			}
			continue
		}
		ref, ok := c.refs[r.rec.Seq]
		if r.rec.Seq > res.lastSeq || !ok {
			continue // beyond the end (reported below), pruned, or missing (reported)
		}
		if r.rec.Hash != ref.stored {
			from := max(lastGood+1, res.report.FirstSeq)
			res.add(kindOther, Problem{Seq: r.rec.Seq, File: ref.file, Line: ref.line,
				Reason: fmt.Sprintf("entry hash differs from the signed %s at %s:%d: %s rewritten and the chain recomputed",
					r.rec.Kind, r.file, r.line, span("entry", "entries", from, r.rec.Seq))})
			continue
		}
		lastGood = r.rec.Seq
	}
	if furthest != nil && furthest.rec.Seq > res.lastSeq {
		res.missingEnd(signed.head, furthest, c)
	}
	if head := signed.head; head != nil && head.rec.Seq < res.lastSeq {
		seq := head.rec.Seq + 1
		ref := c.refs[seq]
		res.problems = append(res.problems, problem{
			Problem: Problem{Seq: seq, File: ref.file, Line: ref.line,
				Reason: fmt.Sprintf("%s not covered by the signed head (seq %d): written after the last signed head, by a crash before the head was updated or by someone without the key", span("entry", "entries", seq, res.lastSeq), head.rec.Seq)},
			kind:  kindUnsignedTail,
			count: res.lastSeq - head.rec.Seq,
		})
		res.report.Problems = append(res.report.Problems, res.problems[len(res.problems)-1].Problem)
	}
}

// missingEnd reports the entries that furthest, a signed record beyond the
// chain's end, vouches for and that are gone.
func (res *scanResult) missingEnd(head, furthest *signedAt, c *chain) {
	file, line := c.lastFile, c.lastLines+1
	if head != nil {
		// Name the segment the newest entry went into when it is gone.
		if want := segmentName(head.rec.Time); want > c.lastFile {
			file, line = want, 0
		}
	}
	reason := fmt.Sprintf("%s missing from the end: the signed %s at %s:%d covers seq %d; log truncated or newest segment deleted",
		span("entry", "entries", res.lastSeq+1, furthest.rec.Seq), furthest.rec.Kind, furthest.file, furthest.line, furthest.rec.Seq)
	if file != c.lastFile {
		reason += " (" + file + " is missing)"
	}
	res.add(kindOther, Problem{Seq: res.lastSeq + 1, File: file, Line: line, Reason: reason})
}

// checkStart checks that the first entry present starts the chain: seq 1
// from the zero hash, or the successor of a signed retention anchor.
func (res *scanResult) checkStart(e Entry, anchors map[uint64]SignedRecord, at func(uint64, string, ...any) Problem) {
	if e.Seq == 1 {
		if e.Prev != zeroHash {
			res.add(kindOther, at(1, "seq 1 has a non-zero prev"))
		}
		return
	}
	if a, ok := anchors[e.Seq-1]; ok {
		if e.Prev != a.Hash {
			res.add(kindOther, at(e.Seq, "prev does not match the signed retention anchor for seq %d", a.Seq))
		}
		return
	}
	from := uint64(1)
	for s := range anchors {
		if s < e.Seq && s+1 > from {
			from = s + 1
		}
	}
	res.add(kindOther, at(from, "%s missing before the first entry, and no signed retention anchor accounts for them: oldest segment deleted", span("entry", "entries", from, e.Seq-1)))
}

// span names the seqs from..to: "entry 6" or "entries 6..8".
func span(one, many string, from, to uint64) string {
	if from == to {
		return fmt.Sprintf("%s %d", one, from)
	}
	return fmt.Sprintf("%s %d..%d", many, from, to)
}

// canonicalEntry says whether line is exactly how Append writes e.
func canonicalEntry(e *Entry, line []byte) bool {
	c := *e
	c.Time = e.Time.UTC()
	want, err := json.Marshal(&c)
	return err == nil && bytes.Equal(want, line)
}
