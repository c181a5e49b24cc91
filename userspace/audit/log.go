package audit

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/blocknat/blocknat/userspace/logattr"
)

// Defaults of Options.
const (
	DefaultCheckpointEvery    = 100
	DefaultCheckpointInterval = 5 * time.Minute
)

// ErrClosed is returned by a Log's methods after Close.
var ErrClosed = errors.New("audit log is closed")

// Options configures Open.
type Options struct {
	Now func() time.Time // nil = time.Now
	// KeyPath is the ed25519 private key (PEM PKCS #8), generated with mode
	// 0600 if missing. Required, and best kept outside the log directory so
	// that copies of the directory never carry it.
	KeyPath string
	// CheckpointEvery writes a signed checkpoint every N entries (0 = 100).
	CheckpointEvery int
	// CheckpointInterval also writes one when entries were added and this
	// long has passed since the last (0 = 5m, negative = never). It is
	// checked on Append and by Tick, which Run calls.
	CheckpointInterval time.Duration
	// Retention: Sweep removes segments whose newest entry is older than
	// this (0 = keep forever).
	Retention time.Duration
	Logger    *slog.Logger // nil = discard
}

// attrSeq is the log attribute for an entry's seq (logattr has none yet).
const attrSeq = "seq"

// Log is an open audit log. Its methods are safe for concurrent use.
type Log struct {
	dir    string
	opts   Options
	now    func() time.Time
	logger *slog.Logger
	priv   ed25519.PrivateKey
	pub    ed25519.PublicKey

	// files keeps Sweep's unlinking away from readers (Entries, Verify),
	// which read outside mu so that they do not hold up Append. Lock order:
	// files, then mu.
	files sync.RWMutex

	mu      sync.Mutex
	closed  bool
	failed  error // the on-disk state is unknown (see fail); cleared by a reload from disk
	retryAt time.Time
	// writeErr is the last write's error, cleared by the next write that
	// succeeds; with failed it is what Health reports.
	writeErr   error
	writeErrAt time.Time
	seq        uint64
	hash       string
	segments   []segmentInfo
	cur        *os.File // the newest segment, open for appending; nil until needed
	curName    string
	cps        *os.File // checkpoints.jsonl
	cpsSize    int64
	cpSeq      uint64       // seq of the newest checkpoint
	cpTime     time.Time    // when it was written
	head       SignedRecord // as in head.json, so that proofs need not read it back
}

// Open opens the log in dir, creating it if needed, and recovers its state
// from disk. It verifies the whole log first and refuses to append to one
// that does not verify; the error names the first problem. See the package
// doc for the one crash trace it repairs by itself.
func Open(dir string, opts Options) (*Log, error) {
	if opts.KeyPath == "" {
		return nil, errors.New("audit: Options.KeyPath: required (the signing key's file, outside the log directory)")
	}
	if opts.CheckpointEvery < 0 {
		return nil, fmt.Errorf("audit: Options.CheckpointEvery: %d is negative", opts.CheckpointEvery)
	}
	if opts.CheckpointEvery == 0 {
		opts.CheckpointEvery = DefaultCheckpointEvery
	}
	if opts.CheckpointInterval == 0 {
		opts.CheckpointInterval = DefaultCheckpointInterval
	}
	if opts.Retention < 0 {
		return nil, fmt.Errorf("audit: Options.Retention: %v is negative", opts.Retention)
	}
	l := &Log{dir: dir, opts: opts, now: opts.Now, logger: opts.Logger}
	if l.now == nil {
		l.now = time.Now
	}
	if l.logger == nil {
		l.logger = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("audit: create log directory: %w", err)
	}
	priv, err := loadOrCreateKey(opts.KeyPath, l.logger)
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	l.priv, l.pub = priv, priv.Public().(ed25519.PublicKey)
	if err := writePublicKey(dir, l.pub); err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}

	repaired, err := l.load()
	if err != nil {
		return nil, err
	}
	l.logger.Info("audit log open", logattr.Path, dir, attrSeq, l.seq)
	if repaired != nil {
		if _, err := l.Append(repairEntry(repaired)); err != nil {
			l.Close()
			return nil, fmt.Errorf("audit: record the repair: %w", err)
		}
	}
	return l, nil
}

// load reads the log's state from its files: it verifies the whole log,
// repairs a torn last line (once: a log that a repair cannot fix is
// refused), opens the files Append writes, and signs a head that a crash
// left behind. Open calls it, and so does a retry after a failure, which is
// how the log recovers: everything it knows is read back from disk. The
// caller holds mu, or has not shared l yet. It returns the files a repair
// moved aside, for the caller to record.
func (l *Log) load() (repaired []string, err error) {
	dir := l.dir
	for {
		snap, err := takeSnapshot(dir)
		if err != nil {
			return nil, fmt.Errorf("audit: %w", err)
		}
		res, err := scan(snap, l.pub)
		if err != nil {
			return nil, fmt.Errorf("audit: verify at open: %w", err)
		}
		fresh := res.report.Entries == 0 && res.report.Checkpoints == 0 && len(snap.segments) == 0
		resignHead := fresh
		var refuse []problem
		for _, p := range res.problems {
			switch {
			case p.kind == kindNoHead && fresh:
			case p.kind == kindUnsignedTail && p.count == 1:
				// The crash window between the entry's fsync and the head's.
				resignHead = true
				l.logger.Warn("audit entry written but not yet covered by the signed head (crash before the head was updated); signing it now",
					attrSeq, p.Seq, logattr.Path, p.File)
			default:
				refuse = append(refuse, p)
			}
		}
		if len(refuse) > 0 {
			var named []string
			torn := true
			for i, p := range refuse {
				torn = torn && p.kind == kindTorn
				if i < 3 {
					named = append(named, p.String())
				}
			}
			if torn && repaired == nil {
				// A torn last line is what a crash mid-write leaves; it was
				// never acknowledged, so no answer depended on it. It is
				// moved aside (kept, not dropped) and the repair itself is
				// audited, rather than keeping the agent from starting.
				moved, err := RepairTornTail(dir, l.pub)
				if err != nil {
					return nil, fmt.Errorf("audit: %w", err)
				}
				l.logger.Warn("audit log: torn last line moved aside (a crash during a write)", logattr.Path, dir, logattr.Count, len(moved))
				repaired = moved
				continue
			}
			return nil, fmt.Errorf("audit: log %s does not verify (%d problems), refusing to append: %s; run `blocknat audit verify` to see every problem",
				dir, len(refuse), strings.Join(named, "; "))
		}
		return repaired, l.adopt(snap, res, resignHead)
	}
}

// adopt takes the state a verified scan found and opens the files to
// append to.
func (l *Log) adopt(snap snapshot, res *scanResult, resignHead bool) (err error) {
	dir := l.dir
	l.seq, l.hash, l.segments = res.lastSeq, res.lastHash, res.segments
	l.head = SignedRecord{}
	if res.head != nil {
		l.head = *res.head
	}
	if res.lastCheckpoint != nil {
		l.cpSeq, l.cpTime = res.lastCheckpoint.Seq, res.lastCheckpoint.Time
	} else {
		l.cpSeq, l.cpTime = 0, l.now()
	}
	defer func() {
		if err != nil {
			l.closeFiles()
		}
	}()
	if n := len(l.segments); n > 0 {
		last := l.segments[n-1]
		if l.cur, err = os.OpenFile(filepath.Join(dir, last.name), os.O_WRONLY|os.O_APPEND, 0); err != nil {
			return fmt.Errorf("audit: open segment %s: %w", last.name, err)
		}
		l.curName = last.name
	}
	if l.cps, err = os.OpenFile(filepath.Join(dir, checkpointsFile), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600); err != nil {
		return fmt.Errorf("audit: open %s: %w", checkpointsFile, err)
	}
	l.cpsSize = 0
	if snap.checkpoints != nil {
		l.cpsSize = snap.checkpoints.size
	} else if err := syncDir(dir); err != nil {
		return fmt.Errorf("audit: sync log directory: %w", err)
	}
	if resignHead {
		if _, err := l.writeHead(l.now()); err != nil {
			return fmt.Errorf("audit: write %s: %w", headFile, err)
		}
	}
	return nil
}

func repairEntry(moved []string) Entry {
	return Entry{Operator: RepairOperator, Action: ActionRepair, Outcome: OutcomeAnswered,
		Detail: "torn last line moved aside after a crash: " + strings.Join(moved, ", ")}
}

// The entry an automatic repair appends.
const (
	RepairOperator = "blocknatd"
	ActionRepair   = "audit.repair"
)

// Append assigns e its Seq, Time, Prev and Hash, writes it, fsyncs it, signs
// the new head and returns the entry as stored. When it returns an error the
// entry may or may not be on disk (the next Open tells), but the caller must
// treat the request as unlogged and return no data.
func (l *Log) Append(e Entry) (Entry, error) {
	e, _, err := l.AppendProved(e)
	return e, err
}

// AppendProved appends like Append and also returns the head it signed for
// the entry, so that Proof{Entry: e, Signed: head} shows with the public key
// alone that e is in the signed chain. The next Append replaces head.json,
// which is why the head is handed out here, under the lock that wrote it.
func (l *Log) AppendProved(e Entry) (Entry, SignedRecord, error) {
	e, err := prepare(e)
	if err != nil {
		return Entry{}, SignedRecord{}, fmt.Errorf("audit append: %w", err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.usable(); err != nil {
		return Entry{}, SignedRecord{}, err
	}
	e, head, err := l.appendLocked(e)
	l.noteWrite(err)
	return e, head, err
}

// appendLocked appends a prepared entry; the caller holds mu.
func (l *Log) appendLocked(e Entry) (Entry, SignedRecord, error) {
	now := l.now().UTC()
	e.Seq, e.Time, e.Prev = l.seq+1, now, l.hash
	e.Hash = entryHash(&e)
	line, err := json.Marshal(&e)
	if err != nil {
		return Entry{}, SignedRecord{}, fmt.Errorf("audit append: encode entry: %w", err)
	}
	line = append(line, '\n')

	// An entry goes into its day's segment, but never into one older than
	// the newest, so that names keep sorting in seq order when the clock
	// steps back.
	if name := segmentName(now); l.cur == nil || name > l.curName {
		if err := l.startSegment(name); err != nil {
			return Entry{}, SignedRecord{}, fmt.Errorf("audit append: start segment %s: %w", name, err)
		}
	}
	seg := &l.segments[len(l.segments)-1]
	if err := l.writeLine(l.cur, seg.size, line); err != nil {
		return Entry{}, SignedRecord{}, fmt.Errorf("audit append: write %s: %w", l.curName, err)
	}
	seg.size += int64(len(line))
	noteEntry(seg, e.Seq, e.Hash, e.Time)
	l.seq, l.hash = e.Seq, e.Hash
	head, err := l.writeHead(e.Time)
	if err != nil {
		// The entry is on disk and the head behind it. One such entry is what
		// Open expects after a crash; a second would look like tampering, so
		// stop appending until the log is reopened.
		err = fmt.Errorf("audit append: write %s: %w", headFile, err)
		l.fail(err)
		return Entry{}, SignedRecord{}, err
	}
	if l.checkpointDue(now, true) {
		if err := l.checkpointLocked(now); err != nil {
			// The head already covers the entry; a late checkpoint costs
			// nothing but timeliness, so the request need not fail.
			l.logger.Error("audit checkpoint failed", attrSeq, e.Seq, logattr.Err, err)
		}
	}
	return e, head, nil
}

// RetryInterval is how often a log that stopped after a failure reads
// itself back from disk to go on; Append and Tick try too, no more often.
const RetryInterval = time.Second

func (l *Log) usable() error {
	if l.closed {
		return ErrClosed
	}
	if l.failed != nil {
		if err := l.recoverLocked(); err != nil {
			return err
		}
	}
	return nil
}

// fail stops the log: after a failed fsync the kernel may have dropped the
// dirty pages, so nothing more may be written on top of an unknown state
// until the state is read back from disk (recoverLocked).
func (l *Log) fail(err error) {
	if l.failed == nil {
		l.failed = err
		l.retryAt = l.now().Add(RetryInterval)
		l.logger.Error("audit log stopped; it reads itself back from disk and goes on once it can", logattr.Err, err)
	}
}

// recoverLocked reads the log back from disk after a failure, at most once
// per RetryInterval: a transient failure (no space, no descriptors) ends by
// itself, and answers resume without a restart. What it reads is verified
// as at Open, so a log left in a state a crash cannot explain stays
// stopped.
func (l *Log) recoverLocked() error {
	now := l.now()
	if now.Before(l.retryAt) {
		return fmt.Errorf("audit log stopped after a failure, retrying: %w", l.failed)
	}
	l.retryAt = now.Add(RetryInterval)
	l.closeFiles()
	repaired, err := l.load()
	if err != nil {
		l.closeFiles()
		l.noteWrite(err)
		return fmt.Errorf("audit log stopped after a failure (%w); reading it back failed too: %w", l.failed, err)
	}
	l.logger.Info("audit log writes again", logattr.Err, l.failed, attrSeq, l.seq)
	l.failed = nil
	l.noteWrite(nil)
	if repaired != nil {
		e, err := prepare(repairEntry(repaired))
		if err == nil {
			_, _, err = l.appendLocked(e)
		}
		if err != nil {
			return fmt.Errorf("audit: record the repair: %w", err)
		}
	}
	return nil
}

// retry is Run's check on a log that cannot write: one that stopped is
// read back from disk; after a write that failed without stopping it (no
// space for the line, which was cut back off), the signed head is written
// again, so the alarm ends when writing works again even if no request
// comes to prove it.
func (l *Log) retry() {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.closed:
	case l.failed != nil:
		if err := l.recoverLocked(); err != nil {
			l.logger.Debug("audit log still cannot write", logattr.Err, err)
		}
	case l.writeErr != nil:
		_, err := l.writeHead(l.now().UTC())
		if err == nil {
			l.logger.Info("audit log writes again", logattr.Err, l.writeErr)
		}
		l.noteWrite(err)
	}
}

// noteWrite remembers the outcome of a write for Health.
func (l *Log) noteWrite(err error) {
	if err == nil {
		l.writeErr = nil
		return
	}
	if l.writeErr == nil {
		l.writeErrAt = l.now()
	}
	l.writeErr = err
}

// Health is whether the log can write.
type Health struct {
	Failing   bool
	LastError string    // why, while Failing
	Since     time.Time // when it started failing
}

// Health reports whether the last write (or the retry after a failure)
// succeeded. While it does not, lookups are refused (no entry, no answer),
// which is what the agent's alarm says.
func (l *Log) Health() Health {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.failed != nil && l.writeErr != nil:
		return Health{Failing: true, LastError: l.writeErr.Error(), Since: l.writeErrAt}
	case l.failed != nil:
		return Health{Failing: true, LastError: l.failed.Error(), Since: l.writeErrAt}
	case l.writeErr != nil:
		return Health{Failing: true, LastError: l.writeErr.Error(), Since: l.writeErrAt}
	}
	return Health{}
}

func (l *Log) startSegment(name string) error {
	f, err := os.OpenFile(filepath.Join(l.dir, name), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	if err := syncDir(l.dir); err != nil {
		f.Close()
		return err
	}
	if l.cur != nil {
		l.cur.Close()
	}
	l.cur, l.curName = f, name
	l.segments = append(l.segments, segmentInfo{name: name})
	return nil
}

// writeLine appends line to f, whose size is size, and fsyncs it. A short
// write is cut back off so that the file stays whole; if that fails too,
// the log stops.
func (l *Log) writeLine(f *os.File, size int64, line []byte) error {
	_, err := f.Write(line)
	if err != nil {
		if terr := f.Truncate(size); terr != nil {
			l.fail(fmt.Errorf("cut back partial line of %s: %w (after %w)", f.Name(), terr, err))
		}
		return err
	}
	if err := f.Sync(); err != nil {
		l.fail(fmt.Errorf("fsync %s: %w", f.Name(), err))
		return err
	}
	return nil
}

func (l *Log) writeHead(t time.Time) (SignedRecord, error) {
	rec := signRecord(l.priv, kindHead, l.seq, l.hash, t)
	if err := writeFileAtomic(l.dir, headFile, rec.line(), 0o600); err != nil {
		return SignedRecord{}, err
	}
	l.head = rec
	return rec, nil
}

func (l *Log) checkpointDue(now time.Time, countToo bool) bool {
	if l.seq <= l.cpSeq {
		return false
	}
	if countToo && l.seq-l.cpSeq >= uint64(l.opts.CheckpointEvery) {
		return true
	}
	return l.opts.CheckpointInterval > 0 && now.Sub(l.cpTime) >= l.opts.CheckpointInterval
}

func (l *Log) checkpointLocked(now time.Time) error {
	if err := l.writeRecord(signRecord(l.priv, kindCheckpoint, l.seq, l.hash, now)); err != nil {
		return err
	}
	l.cpSeq, l.cpTime = l.seq, now
	return nil
}

func (l *Log) writeRecord(rec SignedRecord) error {
	line := rec.line()
	if err := l.writeLine(l.cps, l.cpsSize, line); err != nil {
		return fmt.Errorf("write %s: %w", checkpointsFile, err)
	}
	l.cpsSize += int64(len(line))
	return nil
}

// Checkpoint signs and appends a checkpoint of the newest entry now.
func (l *Log) Checkpoint() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.usable(); err != nil {
		return err
	}
	if err := l.checkpointLocked(l.now().UTC()); err != nil {
		return fmt.Errorf("audit checkpoint: %w", err)
	}
	return nil
}

// Tick writes a checkpoint if entries were added and CheckpointInterval has
// passed since the last one. Run calls it; it is exported for callers that
// drive time themselves.
func (l *Log) Tick() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.usable(); err != nil {
		return err
	}
	now := l.now().UTC()
	if !l.checkpointDue(now, false) {
		return nil
	}
	err := l.checkpointLocked(now)
	l.noteWrite(err)
	if err != nil {
		return fmt.Errorf("audit checkpoint: %w", err)
	}
	return nil
}

// Run calls Tick often enough that a checkpoint is at most a quarter of
// CheckpointInterval late, and retries a log that cannot write every
// RetryInterval, until ctx is done or the log is closed.
func (l *Log) Run(ctx context.Context) {
	var tick <-chan time.Time
	if l.opts.CheckpointInterval > 0 {
		t := time.NewTicker(max(l.opts.CheckpointInterval/4, 10*time.Millisecond))
		defer t.Stop()
		tick = t.C
	}
	retry := time.NewTicker(RetryInterval)
	defer retry.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-retry.C:
			l.retry()
		case <-tick:
			if err := l.Tick(); errors.Is(err, ErrClosed) {
				return
			} else if err != nil {
				l.logger.Error("audit checkpoint failed", logattr.Err, err)
			}
		}
	}
}

// Len is the chain length: the seq of the newest entry.
func (l *Log) Len() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.seq
}

// PublicKey is the key that verifies the log's signatures.
func (l *Log) PublicKey() ed25519.PublicKey { return bytes.Clone(l.pub) }

// Entries returns up to limit entries (all when limit <= 0) from fromSeq on,
// in seq order. Entries removed by retention are skipped. It decodes without
// verifying; Verify is for that.
func (l *Log) Entries(fromSeq uint64, limit int) ([]Entry, error) {
	l.files.RLock()
	defer l.files.RUnlock()
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil, ErrClosed
	}
	segs := append([]segmentInfo(nil), l.segments...)
	l.mu.Unlock()

	var out []Entry
	for _, seg := range segs {
		if seg.entries == 0 || seg.lastSeq < fromSeq {
			continue
		}
		full := false
		err := l.segmentEntries(seg, func(e Entry) bool {
			if e.Seq >= fromSeq {
				out = append(out, e)
				full = limit > 0 && len(out) == limit
			}
			return !full
		})
		if err != nil {
			return out, fmt.Errorf("audit entries: %w", err)
		}
		if full {
			break
		}
	}
	return out, nil
}

// Scan calls fn for every entry whose Time is in [from, to], in seq order,
// reading only the segments that hold entries of that time (their oldest
// and newest entry bound it, not their name, as the clock may have stepped
// back). Entries appended after Scan started and those removed by retention
// are left out; like Entries, it decodes without verifying. fn runs with no
// lock held, so it may call the Log; its error stops the scan and is
// returned as it is.
func (l *Log) Scan(from, to time.Time, fn func(Entry) error) error {
	l.mu.Lock()
	closed, end := l.closed, l.seq
	l.mu.Unlock()
	if closed {
		return ErrClosed
	}
	// Walking by seq rather than by a copy of the segment list keeps a
	// concurrent Sweep from leaving the scan with a file it removed.
	for next := uint64(1); next <= end && !to.Before(from); {
		hits, last, err := l.scanSegment(next, end, from, to)
		if err != nil {
			return fmt.Errorf("audit scan: %w", err)
		}
		if last == 0 {
			return nil
		}
		for _, e := range hits {
			if err := fn(e); err != nil {
				return err
			}
		}
		next = last + 1
	}
	return nil
}

// scanSegment reads the first segment holding seqs from next on whose
// entries' times overlap [from, to], and returns its entries in that range
// and at most end, and its last seq (0 when no segment is left).
func (l *Log) scanSegment(next, end uint64, from, to time.Time) (hits []Entry, last uint64, err error) {
	l.files.RLock()
	defer l.files.RUnlock()
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil, 0, ErrClosed
	}
	var seg *segmentInfo
	for i := range l.segments {
		s := &l.segments[i]
		if s.firstSeq > end {
			break
		}
		if s.entries > 0 && s.lastSeq >= next && !s.maxTime.Before(from) && !s.minTime.After(to) {
			c := *s
			seg = &c
			break
		}
	}
	l.mu.Unlock()
	if seg == nil {
		return nil, 0, nil
	}
	err = l.segmentEntries(*seg, func(e Entry) bool {
		if e.Seq >= next && e.Seq <= end && !e.Time.Before(from) && !e.Time.After(to) {
			hits = append(hits, e)
		}
		return e.Seq < end
	})
	return hits, seg.lastSeq, err
}

// segmentEntries decodes seg's entries in order and passes each to fn until
// fn returns false. It reads seg.size bytes, the size seen under mu, so that
// an Append under way never shows up as a torn line. The caller holds files.
func (l *Log) segmentEntries(seg segmentInfo, fn func(Entry) bool) error {
	data, err := readSnap(l.dir, fileSnap{seg.name, seg.size})
	if err != nil {
		return err
	}
	lines, _ := splitLines(data)
	for i, line := range lines {
		var e Entry
		if err := json.Unmarshal(line, &e); err != nil {
			return fmt.Errorf("%s:%d: %w", seg.name, i+1, err)
		}
		if !fn(e) {
			return nil
		}
	}
	return nil
}

// Verify checks the open log as Verify(dir, PublicKey()) would, without
// holding up Append: it reads what was on disk when it started.
func (l *Log) Verify() (Report, error) {
	l.files.RLock()
	defer l.files.RUnlock()
	res, err := l.scanLive()
	if err != nil {
		return Report{}, err
	}
	return res.report, nil
}

// scanLive verifies the files as they were under mu. The caller holds files.
func (l *Log) scanLive() (*scanResult, error) {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil, ErrClosed
	}
	snap, err := takeSnapshot(l.dir)
	l.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("audit verify: %w", err)
	}
	res, err := scan(snap, l.pub)
	if err != nil {
		return nil, fmt.Errorf("audit verify: %w", err)
	}
	return res, nil
}

// Close writes a last checkpoint when entries were added since the previous
// one, so that a copy shipped after shutdown covers every entry.
func (l *Log) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	var err error
	if l.failed == nil && l.seq > l.cpSeq {
		if err = l.checkpointLocked(l.now().UTC()); err != nil {
			err = fmt.Errorf("audit close: final checkpoint: %w", err)
		}
	}
	l.closed = true
	return errors.Join(err, l.closeFiles())
}

func (l *Log) closeFiles() error {
	var errs []error
	for _, f := range []**os.File{&l.cur, &l.cps} {
		if *f != nil {
			if err := (*f).Close(); err != nil {
				errs = append(errs, fmt.Errorf("close %s: %w", strings.TrimPrefix((*f).Name(), l.dir+"/"), err))
			}
			*f = nil
		}
	}
	return errors.Join(errs...)
}
