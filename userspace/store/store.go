package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// Options configure Open. The zero value uses the disk, slog.Default and
// time.Now.
type Options struct {
	// FS is the file system; nil means the disk (Pebble's default, vfs.Default
	// with disk-health checks). Tests use vfs.NewMem or vfs.NewCrashableMem.
	FS vfs.FS
	// Logger receives the store's and Pebble's messages; nil means slog.Default.
	Logger *slog.Logger
	// Now is the clock: it decides which records are open "now", bounds record
	// times, and sets the retention cutoff. nil means time.Now.
	Now func() time.Time
	// Writable is asked before every write (Apply, ApplyLeases, PutEpoch,
	// Sweep); an error refuses the write with that error, before anything
	// reaches Pebble. The agent refuses writes while state_dir is short of
	// space (userspace/diskspace), because Pebble ends the process when a
	// write-ahead log write fails. nil allows every write.
	Writable func() error
	// Outbox keeps an outbox of every change (Apply, ApplyLeases,
	// EndExpiredLeases and Sweep's lease endings, PutEpoch), written in
	// the batch of the change, for replication (Outbox, AckOutbox).
	// Turning it on for a store that holds data backfills the outbox
	// once, in Open (which fails if Writable refuses it). Default false:
	// no outbox, and no cost. Turning it
	// off on a store that kept one makes the next write forget that, so
	// that turning it on again backfills again.
	Outbox bool
}

// Store is the block-record store. Its methods are safe for concurrent use.
type Store struct {
	dir      string
	fs       vfs.FS
	log      *slog.Logger
	now      func() time.Time
	writable func() error

	// writeMu serialises Apply, PutEpoch and Sweep, and guards open.
	writeMu sync.Mutex
	open    map[openID]Record

	// dbMu is held shared by every use of db and exclusively to replace it.
	dbMu sync.RWMutex
	db   *pebble.DB

	// swept is the oldest retained day partition; reads of older days are
	// answered from it. It is stored before the sweep batch commits, so a
	// read that sees the deletion also sees the new value.
	swept atomic.Uint32
	// maxWidth is the widest block ever stored. It only grows, and is raised
	// before the batch that needs it commits.
	maxWidth  atomic.Uint32
	openCount atomic.Int64
	unmatched atomic.Uint64
	rotations uint64 // guarded by writeMu

	// leases holds the current lease of each address; guarded by writeMu.
	leases         map[[4]byte]heldLease
	leaseHeld      atomic.Int64
	leaseUnmatched atomic.Uint64

	// outbox is Options.Outbox once the outbox holds every change; set
	// in Open. outboxForget (guarded by writeMu) is true while the
	// outbox is off but meta still says it holds every change.
	outbox       bool
	outboxForget bool
	// outboxLast is the seq of the newest event committed, written
	// under writeMu; outboxAcked the highest seq acknowledged.
	outboxLast  atomic.Uint64
	outboxAcked atomic.Uint64
}

// Open opens or creates the store in dir.
func Open(dir string, opts Options) (*Store, error) {
	if dir == "" {
		return nil, fmt.Errorf("open store: dir: empty: %w", ErrInvalid)
	}
	s := &Store{
		dir:      dir,
		fs:       opts.FS,
		log:      opts.Logger,
		now:      opts.Now,
		writable: opts.Writable,
		open:     make(map[openID]Record),
		leases:   make(map[[4]byte]heldLease),
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.now == nil {
		s.now = time.Now
	}
	db, err := pebble.Open(dir, s.pebbleOptions())
	if err != nil {
		return nil, fmt.Errorf("open store: pebble at %s: %w", dir, err)
	}
	s.db = db
	if err := s.upgrade(); err != nil {
		return nil, errors.Join(err, db.Close())
	}
	if err := s.load(); err != nil {
		return nil, errors.Join(err, db.Close())
	}
	if err := s.openOutbox(opts.Outbox); err != nil {
		return nil, errors.Join(err, s.db.Close())
	}
	return s, nil
}

const (
	blockCacheBytes = 8 << 20
	// memTableReserve is what Pebble's memtables hold of the block
	// cache at most: MemTableStopWritesThreshold (2) memtables of
	// MemTableSize (4 MiB), the defaults.
	memTableReserve = 2 * 4 << 20
)

// pebbleOptions returns a fresh set of options on every call because Pebble
// keeps state in some of them (the event listener, the cache reference).
func (s *Store) pebbleOptions() *pebble.Options {
	o := &pebble.Options{
		// FS: default vfs.Default wrapped with disk-health checks. Left nil for
		// the disk so that Pebble adds that wrapper.
		FS: s.fs,
		// FormatMajorVersion: default FormatMinSupported, the oldest format
		// this Pebble can read. A new store starts on the newest stable format,
		// whose columnar blocks prefix-compress the big-endian keys (most of a
		// key is shared with its neighbour); Open ratchets an older store up.
		FormatMajorVersion: pebble.FormatNewest,
		// Logger: default writes to the Go log package on stderr, and its
		// Fatalf exits the process; ours goes to slog and panics instead.
		Logger: pebbleLogger{log: s.log},
		// DisableWAL: default false. Written out because durability rests on
		// it: every commit is pebble.Sync, so an acknowledged batch is in the
		// WAL on stable storage before Apply returns.
		DisableWAL: false,
		// NumPrevManifest: default 1, and Pebble raises 0 to 1. Sweep counts
		// its two reopen rounds from this value: one for the current MANIFEST,
		// one for the previous one that Pebble keeps.
		NumPrevManifest: 1,
		// TargetByteDeletionRate: default 0, no pacing. Written out because
		// retention relies on obsolete SSTables leaving the disk as soon as a
		// compaction releases them, not at a throttled rate.
		TargetByteDeletionRate: 0,
		// CacheSize: default 8 MiB. Pebble reserves every memtable's
		// full size in the block cache (it counts them against the
		// cache rather than beside it), so with the default a writing
		// store, with a 4 MiB memtable filling and another flushing,
		// has no room left for blocks: every lookup read and
		// decompressed its index and data blocks again (the cache held
		// nothing, hits 0). The blocks get the 8 MiB the default meant,
		// beside the memtables it reserves.
		CacheSize: blockCacheBytes + memTableReserve,
		// Left at their defaults, on purpose:
		//  - Cleaner (DeleteCleaner): obsolete files are unlinked. WAL
		//    recycling stays on; Sweep's reopen removes recycled WALs.
		//  - MemTableSize (4 MiB), MemTableStopWritesThreshold (2),
		//    L0CompactionThreshold (4), L0StopWritesThreshold (12),
		//    LBaseMaxBytes (64 MiB): a day's records are a few MB.
		//  - MaxOpenFiles (1000).
		//  - MaxManifestFileSize (128 MiB): Sweep rotates the MANIFEST itself.
		//  - WALBytesPerSync (0) and BytesPerSync (512 KiB): every commit syncs.
	}
	// Levels[*].Compression: default Snappy on every level. Pebble's
	// fastest profile instead: MinLZ at its fastest level on amd64, whose
	// decompression is as quick as Snappy's and which takes a tenth off
	// what Snappy leaves of a record (TestBytesPerRecord: 31.0 -> 27.6 B);
	// Snappy on arm64, where MinLZ has no assembly. zstd (DBCompressionGood)
	// would take off another fifth but costs every lookup that misses the
	// block cache about 15 us of decompression.
	o.ApplyCompressionSettings(func() pebble.DBCompressionSettings { return pebble.DBCompressionFastest })
	return o
}

// load reads the meta keys and the open records into memory.
func (s *Store) load() error {
	for _, m := range []struct {
		key []byte
		dst *atomic.Uint32
	}{{metaSwept, &s.swept}, {metaWidth, &s.maxWidth}} {
		v, closer, err := s.db.Get(m.key)
		if errors.Is(err, pebble.ErrNotFound) {
			continue
		}
		if err != nil {
			return fmt.Errorf("open store: read meta %q: %w", m.key, err)
		}
		if len(v) != 4 {
			closer.Close()
			return fmt.Errorf("open store: meta %q: length %d: %w", m.key, len(v), ErrCorrupt)
		}
		m.dst.Store(binary.BigEndian.Uint32(v))
		closer.Close()
	}
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixOpen}, UpperBound: []byte{prefixOpen + 1}})
	if err != nil {
		return fmt.Errorf("open store: iterate open records: %w", err)
	}
	for ok := it.First(); ok; ok = it.Next() {
		rec, err := decodeOpen(it)
		if err != nil {
			return errors.Join(fmt.Errorf("open store: load open records: %w", err), it.Close())
		}
		oid := openID{sub: rec.Subscriber, public: rec.Public.As4(), portLo: rec.PortLo}
		if prev, dup := s.open[oid]; dup {
			// Apply never writes two open records for one block and
			// subscriber; keep the earlier start if a store has them anyway.
			s.log.Warn("duplicate open record", logKeySubscriber, rec.Subscriber,
				logKeyPublic, rec.Public, logKeyPortLo, rec.PortLo, logKeyStart, rec.Start, logKeyOtherStart, prev.Start)
			if prev.Start.Before(rec.Start) {
				continue
			}
		}
		s.open[oid] = rec
	}
	if err := errors.Join(it.Error(), it.Close()); err != nil {
		return fmt.Errorf("open store: iterate open records: %w", err)
	}
	s.openCount.Store(int64(len(s.open)))
	return s.loadLeases()
}

func decodeOpen(it *pebble.Iterator) (Record, error) {
	id, err := parseOpenKey(it.Key())
	if err != nil {
		return Record{}, err
	}
	v, err := it.ValueAndErr()
	if err != nil {
		return Record{}, err
	}
	return decodeValue(v, id, false)
}

// startWrite takes the locks of a write (writeMu, and dbMu shared) and asks
// Options.Writable whether it may start; a refusal is wrapped with what the
// format names. On success the caller holds both locks until it calls done;
// on an error it holds neither.
func (s *Store) startWrite(format string, args ...any) (done func(), err error) {
	s.writeMu.Lock()
	s.dbMu.RLock()
	done = func() {
		s.dbMu.RUnlock()
		s.writeMu.Unlock()
	}
	if s.db == nil {
		done()
		return nil, ErrClosed
	}
	if err := s.mayWrite(); err != nil {
		done()
		return nil, fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), err)
	}
	return done, nil
}

// mayWrite asks Options.Writable whether a write may start.
func (s *Store) mayWrite() error {
	if s.writable == nil {
		return nil
	}
	return s.writable()
}

// Close closes the database. Later calls return ErrClosed.
func (s *Store) Close() error {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	s.dbMu.Lock()
	defer s.dbMu.Unlock()
	if s.db == nil {
		return ErrClosed
	}
	err := s.db.Close()
	s.db = nil
	if err != nil {
		return fmt.Errorf("close store: %w", err)
	}
	return nil
}
