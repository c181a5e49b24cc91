package audit

import (
	"bytes"
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

// noteEntry counts entry seq, with its hash and time, in its segment's
// info. The scan calls it for every entry it takes as in place, and Append
// for the entry it has written.
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
