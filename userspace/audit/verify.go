package audit

import (
	"bytes"
	"cmp"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"
)

const (
	checkpointsFile = "checkpoints.jsonl"
	headFile        = "head.json"
	pubFile         = "audit.pub"
	segmentLayout   = "20060102"
)

var segmentRe = regexp.MustCompile(`^audit-[0-9]{8}\.jsonl$`)

func segmentName(t time.Time) string {
	return "audit-" + t.UTC().Format(segmentLayout) + ".jsonl"
}

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

// fileSnap is a file's name and the number of bytes to read: a live log is
// read only up to the sizes seen under its lock, so a concurrent Append can
// never show up as a torn line.
type fileSnap struct {
	name string
	size int64
}

type snapshot struct {
	dir         string
	segments    []fileSnap // sorted by name, which is seq order
	checkpoints *fileSnap
	head        []byte // nil when head.json does not exist
}

func takeSnapshot(dir string) (snapshot, error) {
	snap := snapshot{dir: dir}
	des, err := os.ReadDir(dir)
	if err != nil {
		return snap, fmt.Errorf("read audit directory: %w", err)
	}
	for _, de := range des {
		name := de.Name()
		if !de.Type().IsRegular() || !(segmentRe.MatchString(name) || name == checkpointsFile) {
			continue
		}
		fi, err := de.Info()
		if err != nil {
			return snap, fmt.Errorf("stat %s: %w", name, err)
		}
		fs := fileSnap{name: name, size: fi.Size()}
		if name == checkpointsFile {
			snap.checkpoints = &fs
		} else {
			snap.segments = append(snap.segments, fs)
		}
	}
	slices.SortFunc(snap.segments, func(a, b fileSnap) int { return strings.Compare(a.name, b.name) })
	snap.head, err = os.ReadFile(filepath.Join(dir, headFile))
	if errors.Is(err, fs.ErrNotExist) {
		snap.head, err = nil, nil
	}
	if err != nil {
		return snap, fmt.Errorf("read %s: %w", headFile, err)
	}
	return snap, nil
}

func readSnap(dir string, f fileSnap) ([]byte, error) {
	fh, err := os.Open(filepath.Join(dir, f.name))
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", f.name, err)
	}
	defer fh.Close()
	buf := make([]byte, f.size)
	if _, err := io.ReadFull(fh, buf); err != nil {
		return nil, fmt.Errorf("read %s: %w", f.name, err)
	}
	return buf, nil
}

// splitLines returns the lines of data without their newlines, and whether
// the last one lacks its newline.
func splitLines(data []byte) (lines [][]byte, torn bool) {
	for len(data) > 0 {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			return append(lines, data), true
		}
		lines = append(lines, data[:i])
		data = data[i+1:]
	}
	return lines, false
}

// segmentInfo is what Open, Append and Sweep keep about a segment.
type segmentInfo struct {
	name              string
	size              int64
	entries           int
	firstSeq, lastSeq uint64
	lastHash          string
	maxTime           time.Time // newest entry; retention compares it
	// minTime is the oldest entry, for Scan: a segment's name does not bound
	// its entries' times from below, as the clock may step back.
	minTime time.Time
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

func scan(snap snapshot, pub ed25519.PublicKey) (*scanResult, error) {
	res := &scanResult{}

	// Signed records first: they say which entries' hashes to remember.
	var records []signedAt // checkpoints and anchors with valid signatures
	var head *signedAt
	if snap.head == nil {
		res.add(kindNoHead, Problem{File: headFile, Reason: "head.json is missing: the signed record of the newest entry was deleted"})
	} else {
		line := snap.head
		if len(line) == 0 || line[len(line)-1] != '\n' || bytes.Count(line, []byte{'\n'}) != 1 {
			res.add(kindOther, Problem{File: headFile, Line: 1, Reason: "head.json is not exactly one line"})
		} else if rec, err := parseSigned(line[:len(line)-1], pub); err != nil {
			res.add(kindOther, Problem{Seq: rec.Seq, File: headFile, Line: 1, Reason: err.Error()})
		} else if rec.Kind != kindHead {
			res.add(kindOther, Problem{Seq: rec.Seq, File: headFile, Line: 1, Reason: fmt.Sprintf("kind %q where %q belongs", rec.Kind, kindHead)})
		} else {
			head = &signedAt{rec: rec, file: headFile, line: 1}
			res.head = &head.rec
			res.report.HeadSeq = rec.Seq
		}
	}
	if snap.checkpoints != nil {
		data, err := readSnap(snap.dir, *snap.checkpoints)
		if err != nil {
			return nil, err
		}
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
	}
	anchors := map[uint64]SignedRecord{}
	var newestAnchor *SignedRecord
	for _, r := range records {
		if r.rec.Kind == kindAnchor {
			anchors[r.rec.Seq] = r.rec
			if newestAnchor == nil || r.rec.Seq > newestAnchor.Seq {
				a := r.rec
				newestAnchor = &a
			}
		}
	}
	wanted := map[uint64]bool{}
	for _, r := range records {
		wanted[r.rec.Seq] = true
	}
	if head != nil {
		wanted[head.rec.Seq] = true
		wanted[head.rec.Seq+1] = true
	}
	refs := map[uint64]entryRef{}

	// Walk the chain. prevSeq/prevStored/prevActual describe the newest
	// entry taken as in place; an entry that goes back does not replace it,
	// so that one swap shows up as two problems rather than a cascade.
	var (
		haveFirst              bool
		prevSeq                uint64
		prevStored, prevActual string
		prevKnown              bool
		lastFile               string
		lastLines              int
	)
	expectedFirst := uint64(1)
	if newestAnchor != nil {
		expectedFirst = newestAnchor.Seq + 1
	}
	for _, seg := range snap.segments {
		data, err := readSnap(snap.dir, seg)
		if err != nil {
			return nil, err
		}
		info := segmentInfo{name: seg.name, size: seg.size}
		lines, torn := splitLines(data)
		lastFile, lastLines = seg.name, len(lines)
		for i, line := range lines {
			n := i + 1
			expected := prevSeq + 1
			if !haveFirst {
				expected = expectedFirst
			}
			at := func(seq uint64, reason string, args ...any) Problem {
				return Problem{Seq: seq, File: seg.name, Line: n, Reason: fmt.Sprintf(reason, args...)}
			}
			if torn && i == len(lines)-1 {
				lastLines--
				p := at(expected, "incomplete last line (no newline): torn write from a crash, or the file was cut here")
				res.add(kindTorn, p)
				break
			}
			var e Entry
			if err := json.Unmarshal(line, &e); err != nil {
				res.add(kindOther, at(expected, "not a valid entry: %v", err))
				if haveFirst {
					prevSeq, prevKnown = expected, false
				}
				continue
			}
			res.report.Entries++
			actual := entryHash(&e)
			if e.Hash != actual || !canonicalEntry(&e, line) {
				seq := e.Seq
				if haveFirst {
					seq = expected
				}
				reason := "entry altered: its hash does not match its content"
				if e.Hash == actual {
					reason = "entry altered: not in canonical form (its bytes were changed)"
				}
				res.add(kindOther, at(seq, "%s", reason))
				// Take it as the entry that belongs here, so that the entries
				// after it are still checked against its stored hash.
				if !haveFirst {
					haveFirst = true
					res.report.FirstSeq = seq
				}
				prevSeq, prevStored, prevActual, prevKnown = seq, e.Hash, actual, true
				noteEntry(&info, seq, e.Hash, e.Time)
				if wanted[seq] {
					refs[seq] = entryRef{seg.name, n, e.Hash, actual}
				}
				continue
			}
			switch {
			case !haveFirst:
				haveFirst = true
				res.report.FirstSeq = e.Seq
				res.checkStart(e, anchors, at)
			case e.Seq > expected:
				res.add(kindOther, at(expected, "%s missing (found seq %d): deleted entries or segment", span("entry", "entries", expected, e.Seq-1), e.Seq))
			case e.Seq < expected:
				res.add(kindOther, at(e.Seq, "seq %d after seq %d: entries reordered or duplicated", e.Seq, prevSeq))
				continue
			case prevKnown && e.Prev != prevStored && e.Prev != prevActual:
				res.add(kindOther, at(e.Seq, "prev does not match the hash of entry %d: the chain was altered", prevSeq))
			}
			prevSeq, prevStored, prevActual, prevKnown = e.Seq, e.Hash, actual, true
			noteEntry(&info, e.Seq, e.Hash, e.Time)
			if wanted[e.Seq] {
				refs[e.Seq] = entryRef{seg.name, n, e.Hash, actual}
			}
		}
		res.segments = append(res.segments, info)
	}
	if haveFirst {
		res.report.LastSeq = prevSeq
		res.lastSeq, res.lastHash = prevSeq, prevStored
	} else if newestAnchor != nil {
		res.lastSeq, res.lastHash = newestAnchor.Seq, newestAnchor.Hash
	} else {
		res.lastHash = zeroHash
	}

	// Every signed record must agree with the entry it names. Records are
	// taken in seq order, so that a mismatch can say since which signed
	// seq the entries were rewritten.
	all := append([]signedAt(nil), records...)
	if head != nil {
		all = append(all, *head)
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
		ref, ok := refs[r.rec.Seq]
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
		file, line := lastFile, lastLines+1
		if head != nil {
			// Name the segment the newest entry went into when it is gone.
			if want := segmentName(head.rec.Time); want > lastFile {
				file, line = want, 0
			}
		}
		reason := fmt.Sprintf("%s missing from the end: the signed %s at %s:%d covers seq %d; log truncated or newest segment deleted",
			span("entry", "entries", res.lastSeq+1, furthest.rec.Seq), furthest.rec.Kind, furthest.file, furthest.line, furthest.rec.Seq)
		if file != lastFile {
			reason += " (" + file + " is missing)"
		}
		res.add(kindOther, Problem{Seq: res.lastSeq + 1, File: file, Line: line, Reason: reason})
	}
	if head != nil && head.rec.Seq < res.lastSeq {
		seq := head.rec.Seq + 1
		ref := refs[seq]
		res.problems = append(res.problems, problem{
			Problem: Problem{Seq: seq, File: ref.file, Line: ref.line,
				Reason: fmt.Sprintf("%s not covered by the signed head (seq %d): written after the last signed head, by a crash before the head was updated or by someone without the key", span("entry", "entries", seq, res.lastSeq), head.rec.Seq)},
			kind:  kindUnsignedTail,
			count: res.lastSeq - head.rec.Seq,
		})
		res.report.Problems = append(res.report.Problems, res.problems[len(res.problems)-1].Problem)
	}
	return res, nil
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

func noteEntry(info *segmentInfo, seq uint64, hash string, t time.Time) {
	if info.entries == 0 {
		info.firstSeq = seq
		info.minTime = t
	}
	if t.Before(info.minTime) {
		info.minTime = t
	}
	info.entries++
	info.lastSeq, info.lastHash = seq, hash
	if t.After(info.maxTime) {
		info.maxTime = t
	}
}

// canonicalEntry says whether line is exactly how Append writes e.
func canonicalEntry(e *Entry, line []byte) bool {
	c := *e
	c.Time = e.Time.UTC()
	want, err := json.Marshal(&c)
	return err == nil && bytes.Equal(want, line)
}
