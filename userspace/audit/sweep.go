package audit

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/blocknat/blocknat/userspace/logattr"
)

// Sweep removes the oldest segments whose newest entry is older than
// Options.Retention and returns how many entries they held. It verifies the
// log first and refuses to prune one that does not verify: the anchors it
// signs would otherwise vouch for tampered entries, and the evidence would be
// deleted with them.
func (l *Log) Sweep() (removed int, err error) {
	if l.opts.Retention <= 0 {
		return 0, nil
	}
	l.files.Lock()
	defer l.files.Unlock()
	res, err := l.scanLive()
	if err != nil {
		return 0, err
	}
	if !res.report.OK() {
		return 0, fmt.Errorf("audit sweep: log does not verify (%d problems, first: %s); not pruning", len(res.report.Problems), res.report.Problems[0])
	}

	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.usable(); err != nil {
		return 0, err
	}
	now := l.now().UTC()
	cutoff := now.Add(-l.opts.Retention)
	n := 0
	var anchors []byte
	for ; n < len(l.segments); n++ {
		s := l.segments[n]
		if s.entries == 0 {
			continue // a segment created just before a crash; nothing to keep
		}
		if !s.maxTime.Before(cutoff) {
			break
		}
		// One anchor per segment, so that whatever prefix the removals below
		// get through before a failure is accounted for.
		rec := signRecord(l.priv, kindAnchor, s.lastSeq, s.lastHash, now)
		anchors = append(anchors, rec.line()...)
	}
	if n == 0 {
		return 0, nil
	}
	if len(anchors) > 0 {
		if err := l.writeLine(l.cps, l.cpsSize, anchors); err != nil {
			return 0, fmt.Errorf("audit sweep: write anchors to %s: %w", checkpointsFile, err)
		}
		l.cpsSize += int64(len(anchors))
	}

	var errs []error
	done := 0
	for ; done < n; done++ {
		name := l.segments[done].name
		if name == l.curName {
			l.cur.Close()
			l.cur, l.curName = nil, ""
		}
		if err := os.Remove(filepath.Join(l.dir, name)); err != nil {
			errs = append(errs, fmt.Errorf("remove %s: %w", name, err))
			break
		}
		removed += l.segments[done].entries
		if err := removeQuarantined(l.dir, name); err != nil {
			errs = append(errs, err)
		}
	}
	l.segments = append([]segmentInfo(nil), l.segments[done:]...)
	if err := syncDir(l.dir); err != nil {
		errs = append(errs, fmt.Errorf("sync log directory: %w", err))
	}
	l.logger.Info("audit entries past retention removed", logattr.Count, removed, logattr.Path, l.dir)
	if err := errors.Join(errs...); err != nil {
		return removed, fmt.Errorf("audit sweep: %w", err)
	}
	return removed, nil
}

// removeQuarantined deletes the torn lines RepairTornTail set aside from a
// segment: they may hold criteria, which must not outlive the segment.
func removeQuarantined(dir, segment string) error {
	des, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("read audit directory: %w", err)
	}
	for _, de := range des {
		if strings.HasPrefix(de.Name(), segment+tornSuffix) {
			if err := os.Remove(filepath.Join(dir, de.Name())); err != nil {
				return fmt.Errorf("remove %s: %w", de.Name(), err)
			}
		}
	}
	return nil
}
