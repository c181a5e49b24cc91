package leasehook

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// Spool layout. Every queued event is one file named
//
//	<unix nanoseconds of Event.Time, 19 digits>-<pid>-<sequence>-<random>.json
//
// so that a directory listing is the delivery order. Files are written under a
// dot-name and renamed into place, so a reader never sees half an event; the
// "lock" file serialises deliveries between hook processes with flock(2); and
// files that do not decode go to "bad/" to be looked at by a person.
const (
	spoolLockName   = "lock"
	spoolBadDir     = "bad"
	spoolTempPrefix = ".tmp-"
	spoolSuffix     = ".json"
)

// spoolBatch bounds one send, so that a long outage's backlog reaches the
// agent in requests of a reasonable size.
const spoolBatch = 256

// DefaultLockWait is how long a Spool waits for another process's delivery
// before it gives up on ordering and queues without the lock.
const DefaultLockWait = 10 * time.Second

// staleTemp is the age after which a temporary file is taken to be the
// leftover of a crashed writer. A live writer holds one for milliseconds.
const staleTemp = 10 * time.Minute

// Spool is a directory of lease events that could not be delivered yet. Any
// number of processes may use one directory at once.
type Spool struct {
	dir string
	// LockWait bounds the wait for the spool lock; OpenSpool sets
	// DefaultLockWait.
	LockWait time.Duration
	seq      atomic.Uint64
}

// OpenSpool uses dir, creating it with mode 0700 if it is missing: the events
// name devices and their owners' addresses.
func OpenSpool(dir string) (*Spool, error) {
	if dir == "" {
		return nil, errors.New("open spool: no directory given")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("open spool: %w", err)
	}
	info, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("open spool: %w", err)
	}
	if !info.IsDir() {
		return nil, fmt.Errorf("open spool %s: not a directory", dir)
	}
	return &Spool{dir: dir, LockWait: DefaultLockWait}, nil
}

// Dir is the spool's directory.
func (s *Spool) Dir() string { return s.dir }

// Put queues one event durably: when Put returns nil the event survives a
// crash or power loss. It takes no lock, because a file that appears during
// another process's delivery is simply delivered by the next one.
func (s *Spool) Put(ev Event) error {
	return s.putAll([]Event{ev})
}

func (s *Spool) putAll(events []Event) error {
	for _, ev := range events {
		if err := ev.Validate(); err != nil {
			return fmt.Errorf("spool put: %w", err)
		}
	}
	for _, ev := range events {
		if err := s.writeEvent(ev); err != nil {
			return fmt.Errorf("spool put: %w", err)
		}
	}
	// One directory sync makes all the renames durable.
	if err := syncDir(s.dir); err != nil {
		return fmt.Errorf("spool put: %w", err)
	}
	return nil
}

func (s *Spool) writeEvent(ev Event) (err error) {
	data, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(s.dir, spoolTempPrefix+"*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if _, err = tmp.Write(append(data, '\n')); err != nil {
		return err
	}
	if err = tmp.Sync(); err != nil {
		return err
	}
	if err = tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), filepath.Join(s.dir, s.name(ev)))
}

func (s *Spool) name(ev Event) string {
	nanos := max(ev.Time.UnixNano(), 0)
	var random [4]byte
	rand.Read(random[:])
	return fmt.Sprintf("%019d-%08x-%08x-%s%s", nanos, os.Getpid(), s.seq.Add(1), hex.EncodeToString(random[:]), spoolSuffix)
}

// CorruptError reports spool files that did not decode into a valid Event.
// They are kept in Dir for a person to read; the rest of the queue was
// delivered past them.
type CorruptError struct {
	Dir   string
	Files []string
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("spool: %d files did not decode and were moved to %s: %s", len(e.Files), e.Dir, strings.Join(e.Files, ", "))
}

// Deliver sends the queued events, oldest first, in batches, and removes each
// batch's files only after send returned nil. If send fails, Deliver stops and
// the unsent events stay queued in order. Delivery is at least once: a crash
// between send and removal sends that batch again. Concurrent Deliver calls,
// in one process or many, never send one file twice.
//
// n counts events delivered. A *CorruptError means everything decodable was
// delivered.
func (s *Spool) Deliver(send func([]Event) error) (n int, err error) {
	unlock, err := s.lock()
	if err != nil {
		return 0, fmt.Errorf("spool deliver: %w", err)
	}
	defer unlock()
	return s.deliverLocked(send)
}

func (s *Spool) deliverLocked(send func([]Event) error) (n int, err error) {
	names, err := s.queued()
	if err != nil {
		return 0, fmt.Errorf("spool deliver: %w", err)
	}
	var corrupt []string
	for len(names) > 0 {
		var batch []Event
		var files []string
		for len(names) > 0 && len(batch) < spoolBatch {
			name := names[0]
			names = names[1:]
			ev, err := s.read(name)
			switch {
			case errors.Is(err, fs.ErrNotExist):
				continue
			case errors.Is(err, errUndecodable):
				if err := s.moveAside(name); err != nil {
					return n, fmt.Errorf("spool deliver: %w", err)
				}
				corrupt = append(corrupt, name)
				continue
			case err != nil:
				return n, fmt.Errorf("spool deliver: %w", err)
			}
			batch = append(batch, ev)
			files = append(files, name)
		}
		if len(batch) == 0 {
			continue
		}
		if err := send(batch); err != nil {
			return n, fmt.Errorf("spool deliver %d queued events: %w", len(batch), err)
		}
		for _, name := range files {
			if err := os.Remove(filepath.Join(s.dir, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				// Left in place, the file would be sent a second time.
				return n, fmt.Errorf("spool deliver: remove delivered event: %w", err)
			}
		}
		n += len(batch)
		if err := syncDir(s.dir); err != nil {
			return n, fmt.Errorf("spool deliver: %w", err)
		}
	}
	if len(corrupt) > 0 {
		return n, &CorruptError{Dir: filepath.Join(s.dir, spoolBadDir), Files: corrupt}
	}
	return n, nil
}

// Len is the number of events waiting.
func (s *Spool) Len() (int, error) {
	names, err := s.queued()
	return len(names), err
}

// queued lists event files in delivery order and removes temporary files a
// crashed writer left behind.
func (s *Spool) queued() ([]string, error) {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, spoolTempPrefix) {
			if info, err := e.Info(); err == nil && time.Since(info.ModTime()) > staleTemp {
				os.Remove(filepath.Join(s.dir, name))
			}
			continue
		}
		if !e.Type().IsRegular() || strings.HasPrefix(name, ".") || !strings.HasSuffix(name, spoolSuffix) {
			continue
		}
		names = append(names, name)
	}
	return names, nil // os.ReadDir sorts by name
}

var errUndecodable = errors.New("not a lease event")

func (s *Spool) read(name string) (Event, error) {
	data, err := os.ReadFile(filepath.Join(s.dir, name))
	if err != nil {
		return Event{}, err
	}
	var ev Event
	if err := json.Unmarshal(bytes.TrimSpace(data), &ev); err != nil {
		return Event{}, fmt.Errorf("%s: %w: %v", name, errUndecodable, err)
	}
	if err := ev.Validate(); err != nil {
		return Event{}, fmt.Errorf("%s: %w: %v", name, errUndecodable, err)
	}
	return ev, nil
}

func (s *Spool) moveAside(name string) error {
	bad := filepath.Join(s.dir, spoolBadDir)
	if err := os.MkdirAll(bad, 0o700); err != nil {
		return err
	}
	if err := os.Rename(filepath.Join(s.dir, name), filepath.Join(bad, name)); err != nil {
		return err
	}
	if err := syncDir(bad); err != nil {
		return err
	}
	return syncDir(s.dir)
}

// lock takes the spool's flock, polling so that the wait is bounded: a hook
// stuck behind a hung delivery must still be able to queue its event and let
// the DHCP server go on. flock locks belong to an open file, so two
// goroutines of one process exclude each other as two processes do.
func (s *Spool) lock() (unlock func(), err error) {
	f, err := os.OpenFile(filepath.Join(s.dir, spoolLockName), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock spool: %w", err)
	}
	deadline := time.Now().Add(s.LockWait)
	pause := time.Millisecond
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if err != syscall.EWOULDBLOCK && err != syscall.EINTR {
			f.Close()
			return nil, fmt.Errorf("lock spool: %w", err)
		}
		if time.Now().After(deadline) {
			f.Close()
			return nil, fmt.Errorf("lock spool: still held by another process after %v", s.LockWait)
		}
		time.Sleep(pause)
		pause = min(2*pause, 50*time.Millisecond)
	}
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}
