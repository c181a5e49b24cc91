package store

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// Flags describe how a record came to be.
type Flags uint32

const (
	// FlagRecovered marks a record found by the reconciler in the kernel's
	// subscriber table rather than announced by the ring buffer.
	FlagRecovered Flags = 1 << iota
)

// Record is one subscriber's use of one port block of one public address.
type Record struct {
	Subscriber     uint32
	Inside         netip.Addr // the subscriber's inside IPv4 address
	Public         netip.Addr // IPv4
	PortLo, PortHi uint16
	Start          time.Time // block became active
	End            time.Time // zero while the record is open
	Epoch          uint32
	Flags          Flags
}

// Open reports whether the block is still held.
func (r Record) Open() bool { return r.End.IsZero() }

// Epoch is one mapping configuration and the time it took effect (RFC 7422 §3).
type Epoch struct {
	ID                        uint32
	Start                     time.Time // took effect
	Recorded                  time.Time // when this copy was written; epochs are re-written daily
	Prefixes                  []netip.Prefix
	Pool                      []netip.Addr
	PortLo, PortHi, BlockSize uint16
	Ratio                     uint32
	Hash                      [32]byte
}

// OpKind says what an Op does.
type OpKind uint8

const (
	// OpActivate writes an open record (Record.End must be zero). Activating a
	// block the same subscriber already holds open keeps the earlier Start, so
	// the ring buffer and the reconciler may both report a block.
	OpActivate OpKind = iota + 1
	// OpRelease closes the open record of Record.Subscriber for the block
	// (Record.Public, Record.PortLo) at Record.End, and adds Record.Flags.
	// Other fields come from the open record. A release that matches no open
	// record is logged, counted in Stats.UnmatchedReleases and skipped.
	OpRelease
	// OpCanary writes Op.Canary, the agent's self-check record, in a
	// keyspace of its own that no lookup, history, export or open-record
	// scan reads; canaries older than canaryKeep are deleted with it.
	OpCanary
)

func (k OpKind) String() string {
	switch k {
	case OpActivate:
		return "activate"
	case OpRelease:
		return "release"
	case OpCanary:
		return "canary"
	}
	return fmt.Sprintf("OpKind(%d)", uint8(k))
}

// Op is one change given to Apply.
type Op struct {
	Kind   OpKind
	Record Record
	Canary Canary // OpCanary only
}

var (
	// ErrClosed is returned by every method after Close, or after Sweep failed
	// to reopen the database.
	ErrClosed = errors.New("store closed")
	// ErrInvalid wraps errors about arguments.
	ErrInvalid = errors.New("invalid argument")
	// ErrNotFound is returned by EpochAt when no epoch was in force.
	ErrNotFound = errors.New("not found")
	// ErrCorrupt wraps errors about entries that cannot be decoded.
	ErrCorrupt = errors.New("corrupt entry")
)

// maxClockSkew bounds how far after the store's clock a record time may lie.
// Times further ahead are a broken clock, and would make a release write a
// copy into every day partition up to that time.
const maxClockSkew = 24 * time.Hour

// maxDay is the day of the largest time that Unix nanoseconds can express.
const maxDay = uint32(math.MaxInt64 / nsPerDay)

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
}

// Stats summarise the store for status and metrics. They cost a few seeks,
// never a scan of the records.
type Stats struct {
	OpenRecords       int
	Epochs            int
	Partitions        int       // day partitions holding records
	OldestPartition   time.Time // start of the oldest day partition holding records; zero if none
	OldestRetained    time.Time // start of the oldest day answered in full since the last Sweep; zero before the first
	UnmatchedReleases uint64    // releases that found no open record, since Open
	DiskBytes         uint64    // every file of the store, including WAL and not yet deleted files
	RecordBytes       uint64    // estimated bytes of the r keyspace
	IndexBytes        uint64    // estimated bytes of the s keyspace
	OpenBytes         uint64    // estimated bytes of the o and p keyspaces
	// LeaseOpen counts the current leases (one per address), including
	// those whose expiry has passed since the last Sweep: reads answer
	// those as ended, and Sweep moves them to the day partitions.
	LeaseOpen              int
	LeaseBytes             uint64 // estimated bytes of the L, M, N and O keyspaces
	UnmatchedLeaseReleases uint64 // lease releases skipped since Open: no current lease of that device, or late
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
	if err := s.load(); err != nil {
		return nil, errors.Join(err, db.Close())
	}
	return s, nil
}

// pebbleOptions returns a fresh set of options on every call because Pebble
// keeps state in some of them (the event listener, the cache reference).
func (s *Store) pebbleOptions() *pebble.Options {
	return &pebble.Options{
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
		// Left at their defaults, on purpose:
		//  - Cleaner (DeleteCleaner): obsolete files are unlinked. WAL
		//    recycling stays on; Sweep's reopen removes recycled WALs.
		//  - Levels[*].Compression (Snappy): records measure well under 100
		//    bytes each with it (see TestBytesPerRecord).
		//  - MemTableSize (4 MiB), MemTableStopWritesThreshold (2),
		//    L0CompactionThreshold (4), L0StopWritesThreshold (12),
		//    LBaseMaxBytes (64 MiB): a day's records are a few MB.
		//  - Cache (8 MiB), MaxOpenFiles (1000).
		//  - MaxManifestFileSize (128 MiB): Sweep rotates the MANIFEST itself.
		//  - WALBytesPerSync (0) and BytesPerSync (512 KiB): every commit syncs.
	}
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

// Apply writes a batch of activations and releases as one Pebble batch
// committed with pebble.Sync: when Apply returns nil, every op is on stable
// storage, and a crash leaves either all of them or none. If any op is
// invalid nothing is written. Addresses must be IPv4, and times after 1970
// and at most maxClockSkew (24h) after the store's clock.
func (s *Store) Apply(ops []Op) error {
	if len(ops) == 0 {
		return nil
	}
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	s.dbMu.RLock()
	defer s.dbMu.RUnlock()
	if s.db == nil {
		return ErrClosed
	}
	if err := s.mayWrite(); err != nil {
		return fmt.Errorf("apply %d ops: %w", len(ops), err)
	}
	now := s.now()
	swept := s.swept.Load()
	width := s.maxWidth.Load()

	// pending holds this batch's changes to the open set (nil: released)
	// until the commit succeeds.
	pending := make(map[openID]*Record)
	current := func(oid openID) (Record, bool) {
		if r, ok := pending[oid]; ok {
			if r == nil {
				return Record{}, false
			}
			return *r, true
		}
		r, ok := s.open[oid]
		return r, ok
	}
	var unmatched uint64
	b := s.db.NewBatch()
	defer b.Close()
	for i := range ops {
		op := &ops[i]
		switch op.Kind {
		case OpActivate:
			rec, id, inside, err := checkActivate(op.Record, now)
			if err != nil {
				return fmt.Errorf("apply op %d (activate subscriber %d): %w", i, op.Record.Subscriber, err)
			}
			oid := id.open()
			if cur, ok := current(oid); ok {
				confirms := rec.Start.Equal(cur.Start) && cur.Flags&FlagRecovered != 0 && rec.Flags&FlagRecovered == 0
				if !rec.Start.Before(cur.Start) && !confirms {
					continue // the block is already recorded as open from an earlier time
				}
				// Either a later report with an earlier start (the ring
				// buffer's event after the reconciler found the block
				// without knowing its start) widens the record to the true
				// start, or the ring buffer's event for exactly the
				// activation the reconciler recovered confirms it, and the
				// record is no longer marked recovered.
				curID, curInside := idOf(&cur)
				if err := errors.Join(b.Delete(openKey(curID), nil), b.Delete(openInsideKey(curInside, curID), nil)); err != nil {
					return fmt.Errorf("apply op %d: batch delete: %w", i, err)
				}
			}
			if err := errors.Join(
				b.Set(openKey(id), encodeValue(nil, &rec, inside, false), nil),
				b.Set(openInsideKey(inside, id), nil, nil),
			); err != nil {
				return fmt.Errorf("apply op %d: batch set: %w", i, err)
			}
			pending[oid] = &rec
			width = max(width, uint32(rec.PortHi-rec.PortLo)+1)
		case OpRelease:
			oid, endNS, err := checkRelease(op.Record, now)
			if err != nil {
				return fmt.Errorf("apply op %d (release subscriber %d): %w", i, op.Record.Subscriber, err)
			}
			cur, ok := current(oid)
			if !ok {
				unmatched++
				s.log.Warn("release matches no open record", logKeySubscriber, op.Record.Subscriber,
					logKeyPublic, op.Record.Public, logKeyPortLo, op.Record.PortLo, logKeyEnd, op.Record.End)
				continue
			}
			id, inside := idOf(&cur)
			if endNS < id.start {
				return fmt.Errorf("apply op %d (release subscriber %d): end %s before the open record's start %s: %w",
					i, op.Record.Subscriber, op.Record.End.UTC().Format(time.RFC3339Nano), cur.Start.Format(time.RFC3339Nano), ErrInvalid)
			}
			closed := cur
			closed.End = time.Unix(0, endNS).UTC()
			closed.Flags |= op.Record.Flags
			if err := errors.Join(b.Delete(openKey(id), nil), b.Delete(openInsideKey(inside, id), nil)); err != nil {
				return fmt.Errorf("apply op %d: batch delete: %w", i, err)
			}
			// The lazy carry: one copy per day the interval touched, from
			// the oldest retained day on.
			v := encodeValue(nil, &closed, inside, true)
			for day := max(dayOf(id.start), swept); day <= dayOf(endNS); day++ {
				if err := errors.Join(b.Set(recordKey(day, id), v, nil), b.Set(insideKey(day, inside, id), nil, nil)); err != nil {
					return fmt.Errorf("apply op %d: batch set: %w", i, err)
				}
			}
			pending[oid] = nil
		case OpCanary:
			if err := putCanary(b, op.Canary, now); err != nil {
				return fmt.Errorf("apply op %d (canary %d): %w", i, op.Canary.Seq, err)
			}
		default:
			return fmt.Errorf("apply op %d: kind %v: %w", i, op.Kind, ErrInvalid)
		}
	}
	if width > s.maxWidth.Load() {
		if err := b.Set(metaWidth, binary.BigEndian.AppendUint32(nil, width), nil); err != nil {
			return fmt.Errorf("apply: batch set width: %w", err)
		}
		s.maxWidth.Store(width) // a width larger than stored only widens scans
	}
	s.unmatched.Add(unmatched)
	if b.Empty() {
		return nil
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("apply: commit %d ops: %w", len(ops), err)
	}
	for oid, r := range pending {
		if r == nil {
			delete(s.open, oid)
		} else {
			s.open[oid] = *r
		}
	}
	s.openCount.Store(int64(len(s.open)))
	return nil
}

// checkActivate validates an activation and returns it normalised to UTC.
func checkActivate(r Record, now time.Time) (Record, recordID, [4]byte, error) {
	var id recordID
	public, err := addr4(r.Public, "public")
	if err != nil {
		return r, id, [4]byte{}, err
	}
	inside, err := addr4(r.Inside, "inside")
	if err != nil {
		return r, id, [4]byte{}, err
	}
	if r.PortLo > r.PortHi {
		return r, id, inside, fmt.Errorf("port_lo %d above port_hi %d: %w", r.PortLo, r.PortHi, ErrInvalid)
	}
	startNS, err := checkTime(r.Start, "start", now)
	if err != nil {
		return r, id, inside, err
	}
	if !r.End.IsZero() {
		return r, id, inside, fmt.Errorf("end: set on an activation (activations are open): %w", ErrInvalid)
	}
	r.Public, r.Inside = addrFrom4(public), addrFrom4(inside)
	r.Start = time.Unix(0, startNS).UTC()
	return r, recordID{public: public, portLo: r.PortLo, start: startNS, sub: r.Subscriber}, inside, nil
}

func checkRelease(r Record, now time.Time) (openID, int64, error) {
	public, err := addr4(r.Public, "public")
	if err != nil {
		return openID{}, 0, err
	}
	endNS, err := checkTime(r.End, "end", now)
	if err != nil {
		return openID{}, 0, err
	}
	return openID{sub: r.Subscriber, public: public, portLo: r.PortLo}, endNS, nil
}

func checkTime(t time.Time, field string, now time.Time) (int64, error) {
	switch {
	case t.IsZero():
		return 0, fmt.Errorf("%s: missing: %w", field, ErrInvalid)
	case t.Before(time.Unix(0, 0)):
		return 0, fmt.Errorf("%s: %s is before 1970: %w", field, t.Format(time.RFC3339Nano), ErrInvalid)
	case t.After(now.Add(maxClockSkew)):
		return 0, fmt.Errorf("%s: %s is more than %s after the store clock %s: %w",
			field, t.UTC().Format(time.RFC3339Nano), maxClockSkew, now.UTC().Format(time.RFC3339Nano), ErrInvalid)
	}
	return t.UnixNano(), nil
}

func addr4(a netip.Addr, field string) ([4]byte, error) {
	a = a.Unmap()
	if !a.Is4() {
		return [4]byte{}, fmt.Errorf("%s: %v is not an IPv4 address: %w", field, a, ErrInvalid)
	}
	return a.As4(), nil
}

func addrFrom4(b [4]byte) netip.Addr { return netip.AddrFrom4(b) }

// idOf returns the identity and inside address of a normalised record.
func idOf(r *Record) (recordID, [4]byte) {
	return recordID{public: r.Public.As4(), portLo: r.PortLo, start: r.Start.UnixNano(), sub: r.Subscriber}, r.Inside.As4()
}

// clampNS converts t to Unix nanoseconds, saturating outside 1970..2262.
func clampNS(t time.Time) int64 {
	switch {
	case t.Before(time.Unix(0, 0)):
		return -1
	case t.After(time.Unix(0, math.MaxInt64)):
		return math.MaxInt64
	}
	return t.UnixNano()
}

// overlaps reports whether r's interval meets [lo, hi]; an open record ends now.
func overlaps(r *Record, lo, hi, now int64) bool {
	end := now
	if !r.End.IsZero() {
		end = r.End.UnixNano()
	}
	return r.Start.UnixNano() <= hi && end >= lo
}

func compareRecords(a, b Record) int {
	return cmp.Or(
		a.Start.Compare(b.Start),
		a.Public.Compare(b.Public),
		cmp.Compare(a.PortLo, b.PortLo),
		cmp.Compare(a.Subscriber, b.Subscriber),
	)
}

// view is one consistent read of the store: a single Pebble iterator, which
// reads at the sequence number it was created with, moved between ranges by
// SetBounds.
type view struct {
	db    *pebble.DB
	it    *pebble.Iterator
	swept uint32
	width uint32
	now   int64
}

// read runs fn on a fresh view. swept and width are loaded after the
// iterator exists, so they are at least as new as the data it sees.
func (s *Store) read(what string, fn func(v *view) error) error {
	s.dbMu.RLock()
	defer s.dbMu.RUnlock()
	if s.db == nil {
		return ErrClosed
	}
	it, err := s.db.NewIter(nil)
	if err != nil {
		return fmt.Errorf("%s: new iterator: %w", what, err)
	}
	v := &view{db: s.db, it: it, swept: s.swept.Load(), width: s.maxWidth.Load(), now: clampNS(s.now())}
	err = fn(v)
	if cerr := it.Close(); cerr != nil && err == nil {
		err = fmt.Errorf("%s: close iterator: %w", what, cerr)
	}
	return err
}

// scan calls fn for every key in [lower, upper). The key and value are only
// valid during the call.
func (v *view) scan(lower, upper []byte, fn func(k, val []byte) error) error {
	v.it.SetBounds(lower, upper)
	for ok := v.it.First(); ok; ok = v.it.Next() {
		val, err := v.it.ValueAndErr()
		if err != nil {
			return err
		}
		if err := fn(v.it.Key(), val); err != nil {
			return err
		}
	}
	return v.it.Error()
}

// get returns key's value, valid until the view moves.
func (v *view) get(key []byte) ([]byte, bool, error) {
	v.it.SetBounds(key, append(key[:len(key):len(key)], 0))
	if !v.it.First() {
		return nil, false, v.it.Error()
	}
	val, err := v.it.ValueAndErr()
	return val, err == nil, err
}

// forEachDay calls fn for each day partition of keyspace p in [from, to] that
// holds at least one key, skipping absent days with one seek.
func (v *view) forEachDay(p byte, from, to uint32, fn func(day uint32) error) error {
	to = min(to, maxDay)
	if from == to {
		return fn(from)
	}
	for day := from; day <= to; {
		v.it.SetBounds(dayPrefix(p, day), dayPrefix(p, to+1))
		if !v.it.First() {
			return v.it.Error()
		}
		found := binary.BigEndian.Uint32(v.it.Key()[1:5])
		if err := fn(found); err != nil {
			return err
		}
		day = found + 1
	}
	return nil
}

// days returns the day partitions that hold every record meeting [lo, hi]:
// days older than the oldest retained one are answered by it, because a
// record that outlived the cutoff has a copy there.
func (v *view) days(lo, hi int64) (from, to uint32, ok bool) {
	if hi < 0 {
		return 0, 0, false
	}
	from, to = dayOf(max(lo, 0)), dayOf(hi)
	return max(from, v.swept), max(to, v.swept), true
}

// Lookup returns the records of the block holding ip:port whose interval
// meets [t-tolerance, t+tolerance], ordered by start. Each day partition the
// window touches costs one bounded seek, plus one in the open records.
func (s *Store) Lookup(ip netip.Addr, port uint16, t time.Time, tolerance time.Duration) ([]Record, error) {
	public, err := addr4(ip, "lookup ip")
	if err != nil {
		return nil, err
	}
	if t.IsZero() {
		return nil, fmt.Errorf("lookup time: missing: %w", ErrInvalid)
	}
	if tolerance < 0 {
		return nil, fmt.Errorf("lookup tolerance: %s is negative: %w", tolerance, ErrInvalid)
	}
	out, err := s.lookup(public, port, clampNS(t.Add(-tolerance)), clampNS(t.Add(tolerance)))
	if err != nil {
		return nil, fmt.Errorf("lookup %s:%d: %w", ip, port, err)
	}
	return out, nil
}

// LookupInterval returns the records of the block holding ip:port whose
// interval meets [from, to] (both inclusive), ordered by start. It costs
// what Lookup costs for the same window.
func (s *Store) LookupInterval(ip netip.Addr, port uint16, from, to time.Time) ([]Record, error) {
	public, err := addr4(ip, "lookup ip")
	if err != nil {
		return nil, err
	}
	lo, hi, err := checkRange("lookup", from, to)
	if err != nil {
		return nil, err
	}
	out, err := s.lookup(public, port, lo, hi)
	if err != nil {
		return nil, fmt.Errorf("lookup %s:%d: %w", ip, port, err)
	}
	return out, nil
}

// lookup is Lookup and LookupInterval over [lo, hi] in Unix nanoseconds.
func (s *Store) lookup(public [4]byte, port uint16, lo, hi int64) ([]Record, error) {
	var out []Record
	err := s.read("lookup", func(v *view) error {
		if v.width == 0 {
			return nil // nothing was ever activated
		}
		floor := uint16(max(int(port)-int(v.width)+1, 0))
		seen := make(map[recordID]struct{})
		keep := func(val []byte, id recordID, closed bool) error {
			if _, dup := seen[id]; dup {
				return nil
			}
			rec, err := decodeValue(val, id, closed)
			if err != nil {
				return err
			}
			if rec.PortHi < port || !overlaps(&rec, lo, hi, v.now) {
				return nil
			}
			seen[id] = struct{}{}
			out = append(out, rec)
			return nil
		}
		if from, to, ok := v.days(lo, hi); ok {
			err := v.forEachDay(prefixRecord, from, to, func(day uint32) error {
				return v.scan(blockPrefix(day, public, floor), keyAfter(blockPrefix(day, public, port)), func(k, val []byte) error {
					_, id, err := parseRecordKey(k)
					if err != nil {
						return err
					}
					return keep(val, id, true)
				})
			})
			if err != nil {
				return err
			}
		}
		return v.scan(openBlockPrefix(public, floor), keyAfter(openBlockPrefix(public, port)), func(k, val []byte) error {
			id, err := parseOpenKey(k)
			if err != nil {
				return err
			}
			return keep(val, id, false)
		})
	})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(out, compareRecords)
	return out, nil
}

// History returns the records of the subscriber with the inside address
// whose interval meets [from, to], ordered by start.
func (s *Store) History(inside netip.Addr, from, to time.Time) ([]Record, error) {
	in, err := addr4(inside, "history inside")
	if err != nil {
		return nil, err
	}
	if from.IsZero() || to.IsZero() || to.Before(from) {
		return nil, fmt.Errorf("history range: [%s, %s]: %w", from, to, ErrInvalid)
	}
	lo, hi := clampNS(from), clampNS(to)
	var out []Record
	err = s.read("history", func(v *view) error {
		type hit struct {
			day uint32
			id  recordID
		}
		var hits []hit
		seen := make(map[recordID]struct{})
		if dFrom, dTo, ok := v.days(lo, hi); ok {
			err := v.forEachDay(prefixInside, dFrom, dTo, func(day uint32) error {
				p := insidePrefix(day, in)
				return v.scan(p, keyAfter(p), func(k, _ []byte) error {
					_, id, err := parseInsideKey(k)
					if err != nil {
						return err
					}
					if _, dup := seen[id]; !dup && id.start <= hi {
						seen[id] = struct{}{}
						hits = append(hits, hit{day, id})
					}
					return nil
				})
			})
			if err != nil {
				return err
			}
		}
		var open []recordID
		p := append([]byte{prefixOpenInside}, in[:]...)
		err := v.scan(p, keyAfter(p), func(k, _ []byte) error {
			id, err := parseOpenInsideKey(k)
			if err == nil && id.start <= hi {
				open = append(open, id)
			}
			return err
		})
		if err != nil {
			return err
		}
		// The index only names the records; their values are in r and o,
		// read through the same view so both sides agree.
		fetch := func(key []byte, id recordID, closed bool) error {
			val, ok, err := v.get(key)
			if err != nil || !ok {
				if err == nil {
					err = fmt.Errorf("index entry without record %x: %w", key, ErrCorrupt)
				}
				return err
			}
			rec, err := decodeValue(val, id, closed)
			if err != nil {
				return err
			}
			if overlaps(&rec, lo, hi, v.now) {
				out = append(out, rec)
			}
			return nil
		}
		for _, h := range hits {
			if err := fetch(recordKey(h.day, h.id), h.id, true); err != nil {
				return err
			}
		}
		for _, id := range open {
			if err := fetch(openKey(id), id, false); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("history %s: %w", inside, err)
	}
	slices.SortFunc(out, compareRecords)
	return out, nil
}

// Export calls fn for every record whose interval meets [from, to], in order
// of start, reading one consistent view. fn must not call the Store. An error
// from fn stops the export and is returned.
func (s *Store) Export(from, to time.Time, fn func(Record) error) error {
	if from.IsZero() || to.IsZero() || to.Before(from) {
		return fmt.Errorf("export range: [%s, %s]: %w", from, to, ErrInvalid)
	}
	lo, hi := clampNS(from), clampNS(to)
	err := s.read("export", func(v *view) error { return v.export(lo, hi, fn) })
	if err != nil {
		return fmt.Errorf("export: %w", err)
	}
	return nil
}

// export is Export on a view: every record meeting [lo, hi] in order of
// start.
func (v *view) export(lo, hi int64, fn func(Record) error) error {
	var open []Record
	err := v.scan([]byte{prefixOpen}, []byte{prefixOpen + 1}, func(k, val []byte) error {
		id, err := parseOpenKey(k)
		if err != nil {
			return err
		}
		rec, err := decodeValue(val, id, false)
		if err == nil && overlaps(&rec, lo, hi, v.now) {
			open = append(open, rec)
		}
		return err
	})
	if err != nil {
		return err
	}
	slices.SortFunc(open, compareRecords)
	dFrom, dTo, ok := v.days(lo, hi)
	// A record is emitted from the first scanned partition it is in:
	// its start day, or the first day of the scan if it began earlier.
	// All records emitted from one day start before any emitted from a
	// later day, so sorting each day's group keeps global start order.
	emitDay := func(r *Record) uint32 { return max(dayOf(r.Start.UnixNano()), dFrom) }
	var group []Record
	flush := func(day uint32) error {
		for len(open) > 0 && emitDay(&open[0]) <= day {
			group = append(group, open[0])
			open = open[1:]
		}
		slices.SortFunc(group, compareRecords)
		for _, r := range group {
			if err := fn(r); err != nil {
				return err
			}
		}
		group = group[:0]
		return nil
	}
	if ok {
		cur, have := uint32(0), false
		err := v.scan(dayPrefix(prefixRecord, dFrom), dayPrefix(prefixRecord, min(dTo, maxDay)+1), func(k, val []byte) error {
			day, id, err := parseRecordKey(k)
			if err != nil {
				return err
			}
			if have && day != cur {
				if err := flush(cur); err != nil {
					return err
				}
			}
			cur, have = day, true
			rec, err := decodeValue(val, id, true)
			if err != nil {
				return err
			}
			if overlaps(&rec, lo, hi, v.now) && emitDay(&rec) == day {
				group = append(group, rec)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return flush(math.MaxUint32)
}

// OpenRecords returns every open record, ordered by public address and port.
func (s *Store) OpenRecords() ([]Record, error) {
	var out []Record
	err := s.read("open records", func(v *view) error {
		return v.scan([]byte{prefixOpen}, []byte{prefixOpen + 1}, func(k, val []byte) error {
			id, err := parseOpenKey(k)
			if err != nil {
				return err
			}
			rec, err := decodeValue(val, id, false)
			if err == nil {
				out = append(out, rec)
			}
			return err
		})
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// Stats returns counts and sizes for status and metrics.
func (s *Store) Stats() (Stats, error) {
	st := Stats{
		OpenRecords: int(s.openCount.Load()), UnmatchedReleases: s.unmatched.Load(),
		LeaseOpen: int(s.leaseHeld.Load()), UnmatchedLeaseReleases: s.leaseUnmatched.Load(),
	}
	err := s.read("stats", func(v *view) error {
		if v.swept > 0 {
			st.OldestRetained = dayStart(v.swept)
		}
		err := v.forEachDay(prefixRecord, 0, maxDay, func(day uint32) error {
			if st.Partitions == 0 {
				st.OldestPartition = dayStart(day)
			}
			st.Partitions++
			return nil
		})
		if err != nil {
			return err
		}
		err = v.scan([]byte{prefixEpoch}, []byte{prefixEpoch + 1}, func(_, _ []byte) error {
			st.Epochs++
			return nil
		})
		if err != nil {
			return err
		}
		st.DiskBytes = v.db.Metrics().DiskSpaceUsage()
		for _, r := range []struct {
			lo, hi byte
			dst    *uint64
		}{
			{prefixRecord, prefixRecord + 1, &st.RecordBytes},
			{prefixInside, prefixInside + 1, &st.IndexBytes},
			{prefixOpen, prefixOpenInside + 1, &st.OpenBytes},
			{prefixLease, prefixLeaseHeldMAC + 1, &st.LeaseBytes},
		} {
			n, err := v.db.EstimateDiskUsage([]byte{r.lo}, []byte{r.hi})
			if err != nil {
				return fmt.Errorf("estimate disk usage of %q: %w", r.lo, err)
			}
			*r.dst = n
		}
		return nil
	})
	return st, err
}
