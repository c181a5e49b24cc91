// Package diskspace keeps the agent's records from running state_dir's
// filesystem out of space.
//
// Pebble cannot survive a full disk: when a write-ahead log write fails it
// ends the process (its commit pipeline cannot be resumed), and a restart
// onto the same full disk fails again. So the store is never let near that
// point. A Guard reads the free space before every store write and refuses
// the write while less than MinFree is left; the Recorder keeps what it
// could not write in memory and retries, the kernel's subscriber table
// holds every active block for the reconciler, and the agent's alarm says
// why. The margin below MinFree is left to the audit log, whose entries are
// few and small, so that lookups stay answered, and to whatever the store
// had already started (a memtable flush, a compaction).
//
// The reserve is a ballast file, state_dir/reserve, as CockroachDB keeps
// one: space held back that can be given up in an instant. An operator
// deletes it to free room at once; the agent deletes it itself when it
// starts on a full disk, so that the store can open; and it is made again
// once there is MinFree plus its size free.
package diskspace

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/dustin/go-humanize"
	"golang.org/x/sys/unix"

	"github.com/blocknat/blocknat/userspace/logattr"
)

// ReserveFile is the ballast's name under the directory a Guard watches.
const ReserveFile = "reserve"

// ErrLow reports that a write was refused for want of space.
var ErrLow = errors.New("state_dir low on free space")

// Limits are what a Guard keeps free.
type Limits struct {
	MinFree uint64 // bytes free below which writes are refused
	Reserve uint64 // the ballast's size; 0 keeps none
}

// State is what a Guard last saw.
type State struct {
	Limits
	Free, Size uint64 // bytes available to the agent, and the filesystem's size
	// Low is true while writes are refused.
	Low bool
	// Since is when Low last changed.
	Since time.Time
	// Held is the size of the ballast on disk (0 when there is none).
	Held uint64
	// Released says when and why the agent gave up the ballast itself.
	Released string
	// Err is why the free space could not be read; writes are allowed
	// then, since a broken gauge must not stop the records, but the alarm
	// is raised.
	Err string
}

// Reason is the alarm's sentence for s, or "" when there is no alarm.
func (s State) Reason() string {
	switch {
	case s.Err != "":
		return "cannot read state_dir's free space: " + s.Err
	case s.Low && s.Held > 0:
		return fmt.Sprintf("state_dir has %s free, below disk.min_free %s: record and lease writes are paused (kept in memory, retried) until there is room; delete %s to free %s at once",
			Bytes(s.Free), Bytes(s.MinFree), ReserveFile, Bytes(s.Held))
	case s.Low:
		return fmt.Sprintf("state_dir has %s free, below disk.min_free %s: record and lease writes are paused (kept in memory, retried) until there is room; the reserve is used up",
			Bytes(s.Free), Bytes(s.MinFree))
	}
	return ""
}

// Guard watches one directory's filesystem. Its methods are safe for
// concurrent use.
type Guard struct {
	dir string
	log *slog.Logger

	mu     sync.Mutex
	state  State
	statfs func(string, *unix.Statfs_t) error
}

// New returns a Guard of dir, which must exist before the first Check.
func New(dir string, limits Limits, log *slog.Logger) *Guard {
	if log == nil {
		log = slog.Default()
	}
	return &Guard{dir: dir, log: log, state: State{Limits: limits}, statfs: unix.Statfs}
}

// SetLimits changes the limits (a reload); the next Check applies them.
func (g *Guard) SetLimits(l Limits) {
	g.mu.Lock()
	g.state.Limits = l
	g.mu.Unlock()
}

// State is what the last Check saw.
func (g *Guard) State() State {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.state
}

// Writable reads the free space now and refuses (with an error wrapping
// ErrLow) while it is below MinFree. The store calls it before every write,
// so a disk filled between two polls is still caught before Pebble writes.
func (g *Guard) Writable() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.checkLocked()
	if g.state.Low {
		return fmt.Errorf("%w: %s free, disk.min_free is %s", ErrLow, Bytes(g.state.Free), Bytes(g.state.MinFree))
	}
	return nil
}

// checkLocked reads the free space and logs a change of state.
func (g *Guard) checkLocked() {
	var st unix.Statfs_t
	if err := g.statfs(g.dir, &st); err != nil {
		if g.state.Err == "" {
			g.log.Error("cannot read state_dir's free space; writes go on unguarded", logattr.Path, g.dir, logattr.Err, err.Error())
		}
		g.state.Err, g.state.Low = err.Error(), false
		return
	}
	g.state.Err = ""
	g.state.Free, g.state.Size = st.Bavail*uint64(st.Bsize), st.Blocks*uint64(st.Bsize)
	low := g.state.Free < g.state.MinFree
	if low == g.state.Low {
		return
	}
	g.state.Low, g.state.Since = low, time.Now()
	if low {
		g.log.Error("state_dir is low on free space: record and lease writes are paused, the alarm is raised",
			logattr.Path, g.dir, "free_bytes", g.state.Free, "min_free_bytes", g.state.MinFree, "reserve_bytes", g.state.Held)
	} else {
		g.log.Info("state_dir has room again: record and lease writes resume", logattr.Path, g.dir, "free_bytes", g.state.Free)
	}
}

// Start is called once before the store opens. It reads the free space
// and, when it is below MinFree, deletes the ballast so that the store can
// open and the audit log record the start; the state stays Low (and the
// alarm raised) until there is MinFree free. It also removes a ballast
// left half-made by a crash.
func (g *Guard) Start() State {
	g.mu.Lock()
	defer g.mu.Unlock()
	os.Remove(g.path() + ".tmp")
	g.state.Held = g.heldLocked()
	g.checkLocked()
	if g.state.Low && g.state.Held > 0 {
		if err := g.releaseLocked(); err != nil {
			g.log.Error("cannot delete the reserve on a full disk", logattr.Path, g.path(), logattr.Err, err.Error())
		} else {
			g.state.Released = fmt.Sprintf("deleted at start on %s: state_dir had less than disk.min_free free", time.Now().UTC().Format(time.RFC3339))
			g.log.Warn("state_dir is full: deleted the reserve so that the store can open; the alarm stays raised until there is room",
				logattr.Path, g.path())
			g.checkLocked()
		}
	}
	return g.state
}

// Maintain checks the free space and makes, resizes or removes the
// ballast to match Reserve when there is room for it. The agent calls it
// periodically; errors are logged, since a missing ballast is a lost
// margin, not a reason to stop.
func (g *Guard) Maintain() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.state.Held = g.heldLocked()
	g.checkLocked()
	want, held := g.state.Reserve, g.state.Held
	// Allocation rounds up to the filesystem's block, so a ballast within
	// a block or so of the size asked for is the one asked for.
	fits := held >= want && held-want < 1<<20
	switch {
	case fits && (want > 0 || held == 0), g.state.Err != "":
		return
	case want == 0 || held > want:
		if err := g.releaseLocked(); err != nil {
			g.log.Error("cannot delete the reserve", logattr.Path, g.path(), logattr.Err, err.Error())
			return
		}
		if want == 0 {
			return
		}
		g.checkLocked()
	}
	// A ballast is only made when it leaves MinFree free, so that making
	// it can never be what pauses the records.
	if g.state.Free+g.state.Held < g.state.MinFree+want {
		return
	}
	if err := g.makeLocked(want); err != nil {
		g.log.Error("cannot make the reserve", logattr.Path, g.path(), "reserve_bytes", want, logattr.Err, err.Error())
		return
	}
	if held == 0 {
		g.log.Info("reserve in place: delete it to free room at once when state_dir fills", logattr.Path, g.path(), "reserve_bytes", want)
	}
	g.state.Released = ""
	g.checkLocked()
}

func (g *Guard) path() string { return filepath.Join(g.dir, ReserveFile) }

// heldLocked is the ballast's size on disk: its allocated blocks, not its
// length, since only blocks are space that deleting it gives back.
func (g *Guard) heldLocked() uint64 {
	var st unix.Stat_t
	if err := unix.Stat(g.path(), &st); err != nil {
		return 0
	}
	return uint64(st.Blocks) * 512
}

func (g *Guard) releaseLocked() error {
	if err := os.Remove(g.path()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	g.state.Held = 0
	return nil
}

// makeLocked writes the ballast under a temporary name and renames it, so
// that a crash never leaves a partial one that looks whole.
func (g *Guard) makeLocked(size uint64) error {
	if err := g.releaseLocked(); err != nil {
		return err
	}
	tmp := g.path() + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	err = allocate(f, int64(size))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, g.path())
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	g.state.Held = g.heldLocked()
	return syncDir(g.dir)
}

// allocate gives f size bytes of real blocks: fallocate where the
// filesystem has it, zeros written otherwise (a sparse file would hold
// back nothing).
func allocate(f *os.File, size int64) error {
	err := unix.Fallocate(int(f.Fd()), 0, 0, size)
	if err == nil || !errors.Is(err, unix.EOPNOTSUPP) {
		return err
	}
	zeros := make([]byte, 1<<20)
	for left := size; left > 0; left -= int64(len(zeros)) {
		n := min(left, int64(len(zeros)))
		if _, err := f.Write(zeros[:n]); err != nil {
			return err
		}
	}
	_, err = f.Seek(0, io.SeekStart)
	return err
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Bytes writes a size for a person: "12 MiB".
func Bytes(n uint64) string { return humanize.IBytes(n) }
