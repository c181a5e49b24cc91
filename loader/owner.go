package loader

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// ownerPin is the one-entry map under the pin directory that names the
// agent holding the data plane, for the message that refuses another.
const ownerPin = "owner"

// OwnerInfo names an agent.
type OwnerInfo struct {
	PID      int
	Started  time.Time
	StateDir string
	Config   string // the configuration file, "" when not started from one
}

func (o OwnerInfo) String() string {
	s := fmt.Sprintf("pid %d, state_dir %s", o.PID, o.StateDir)
	if o.Config != "" {
		s += ", config " + o.Config
	}
	if !o.Started.IsZero() {
		s += ", running since " + o.Started.UTC().Format(time.RFC3339)
	}
	return s
}

// Owner is an agent's hold on the data plane under a pin directory: an
// exclusive flock on the directory itself. The lock is on the bpffs
// inode, so every agent that pins there meets it, whatever its network
// or mount namespace, and the kernel drops it when the holder exits,
// even by kill -9, so a restart is never refused by a dead owner.
type Owner struct {
	dir *os.File
}

// HeldError refuses a second agent on a data plane, naming the first.
type HeldError struct {
	Dir    string
	Holder OwnerInfo
	// Unknown is set when the holder could not be read (it is still
	// starting, or wrote nothing).
	Unknown error
}

func (e *HeldError) Error() string {
	who := "another blocknatd (" + e.Holder.String() + ")"
	if e.Unknown != nil {
		who = fmt.Sprintf("another blocknatd, which does not say who it is (%v)", e.Unknown)
	}
	return fmt.Sprintf("bpffs_dir %s is held by %s: one data plane has one agent; stop that agent, or give this one its own bpffs_dir and interfaces", e.Dir, who)
}

// ClaimDataPlane takes the data plane under pinDir for the agent me, or
// refuses with a *HeldError naming the agent that holds it. pinDir must
// already be on a bpffs (PrepareBPFFS). Release gives it up; exiting
// does too.
func ClaimDataPlane(pinDir string, me OwnerInfo) (*Owner, error) {
	if err := os.MkdirAll(pinDir, 0o700); err != nil {
		return nil, fmt.Errorf("bpffs_dir %s: %w", pinDir, err)
	}
	// O_CLOEXEC (os.Open's default) keeps the lock out of any child.
	dir, err := os.Open(pinDir)
	if err != nil {
		return nil, fmt.Errorf("bpffs_dir %s: %w", pinDir, err)
	}
	if err := unix.Flock(int(dir.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		dir.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, heldBy(pinDir)
		}
		return nil, fmt.Errorf("bpffs_dir %s: lock: %w", pinDir, err)
	}
	if err := writeOwner(pinDir, me); err != nil {
		dir.Close()
		return nil, err
	}
	return &Owner{dir: dir}, nil
}

// heldBy names the holder of a lock this process was refused. A holder
// that has just taken the lock may not have written its record yet, and
// until it does the record names its dead predecessor, so a record that
// cannot be read or names no running process is read again for a while.
func heldBy(pinDir string) *HeldError {
	var holder OwnerInfo
	var err error
	for range 20 {
		holder, err = ReadOwner(pinDir)
		if err == nil && unix.Kill(holder.PID, 0) != unix.ESRCH {
			break
		}
		time.Sleep(25 * time.Millisecond)
	}
	return &HeldError{Dir: pinDir, Holder: holder, Unknown: err}
}

// Release gives the data plane up. The pinned objects stay.
func (o *Owner) Release() error {
	if o == nil || o.dir == nil {
		return nil
	}
	err := o.dir.Close()
	o.dir = nil
	return err
}

// ownerRecord is the owner map's value: fixed size, so that the map is
// created the same way by every agent.
type ownerRecord struct {
	PID      uint32
	_        uint32
	Started  int64 // Unix nanoseconds
	StateDir [496]byte
	Config   [496]byte
}

var ownerSpec = ebpf.MapSpec{
	Name:       "blocknat_owner",
	Type:       ebpf.Array,
	KeySize:    4,
	ValueSize:  uint32(binary.Size(ownerRecord{})),
	MaxEntries: 1,
}

func writeOwner(pinDir string, me OwnerInfo) error {
	path := filepath.Join(pinDir, ownerPin)
	m, err := ebpf.LoadPinnedMap(path, nil)
	if err == nil {
		if info, ierr := m.Info(); ierr != nil || info.ValueSize != ownerSpec.ValueSize {
			// A record of another shape: the lock is ours, so replace it.
			m.Close()
			m = nil
			if err := os.Remove(path); err != nil {
				return fmt.Errorf("replace %s: %w", path, err)
			}
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("open %s: %w", path, err)
	}
	if m == nil {
		if m, err = ebpf.NewMap(&ownerSpec); err != nil {
			return fmt.Errorf("create owner map: %w", err)
		}
		if err := m.Pin(path); err != nil {
			m.Close()
			return fmt.Errorf("pin %s: %w", path, err)
		}
	}
	defer m.Close()
	rec := ownerRecord{PID: uint32(me.PID)}
	if !me.Started.IsZero() {
		rec.Started = me.Started.UnixNano()
	}
	copy(rec.StateDir[:len(rec.StateDir)-1], me.StateDir)
	copy(rec.Config[:len(rec.Config)-1], me.Config)
	var buf bytes.Buffer
	binary.Write(&buf, binary.NativeEndian, &rec)
	if err := m.Update(uint32(0), buf.Bytes(), ebpf.UpdateAny); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// ReadOwner reads who last claimed the data plane under pinDir. It says
// nothing about whether that agent still runs: only the lock does.
func ReadOwner(pinDir string) (OwnerInfo, error) {
	path := filepath.Join(pinDir, ownerPin)
	m, err := ebpf.LoadPinnedMap(path, &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		return OwnerInfo{}, fmt.Errorf("open %s: %w", path, err)
	}
	defer m.Close()
	raw := make([]byte, ownerSpec.ValueSize)
	if err := m.Lookup(uint32(0), raw); err != nil {
		return OwnerInfo{}, fmt.Errorf("read %s: %w", path, err)
	}
	var rec ownerRecord
	if len(raw) != binary.Size(rec) {
		return OwnerInfo{}, fmt.Errorf("read %s: %d bytes, want %d", path, len(raw), binary.Size(rec))
	}
	if err := binary.Read(bytes.NewReader(raw), binary.NativeEndian, &rec); err != nil {
		return OwnerInfo{}, fmt.Errorf("read %s: %w", path, err)
	}
	if rec.PID == 0 {
		return OwnerInfo{}, fmt.Errorf("%s names no agent", path)
	}
	o := OwnerInfo{PID: int(rec.PID), StateDir: cString(rec.StateDir[:]), Config: cString(rec.Config[:])}
	if rec.Started != 0 {
		o.Started = time.Unix(0, rec.Started)
	}
	return o, nil
}

func cString(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}
