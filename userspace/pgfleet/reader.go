package pgfleet

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/blocknat/blocknat/userspace/store"
)

// ErrReadOnly is returned by ApplyLeases: the fleet database takes lease
// events only from the routers' outboxes.
var ErrReadOnly = fmt.Errorf("the fleet database is a read-only copy of the routers' stores: %w", errors.ErrUnsupported)

// ReaderOptions configure a Reader.
type ReaderOptions struct {
	// Now is the clock: an open record covers [Start, Now], and a current
	// lease whose expiry is before Now reads as ended. nil means time.Now.
	Now func() time.Time
	// Timeout bounds each read (api.Store's methods take no context);
	// zero means one minute. An export is one read.
	Timeout time.Duration
}

// Reader answers the fleet service's questions across every router, with
// the router store's semantics: closed intervals, open records covering
// [Start, now], a current lease ending at its expiry, day partitions
// clamped at the oldest retained day, and answers ordered as the store
// orders them, then by router. Every Record, Lease and Epoch names its
// Router. It satisfies api.Store.
type Reader struct {
	db      *DB
	now     func() time.Time
	timeout time.Duration
}

// Reader returns a Reader on db, which must be connected as the owner.
func (db *DB) Reader(opts ReaderOptions) *Reader {
	r := &Reader{db: db, now: opts.Now, timeout: opts.Timeout}
	if r.now == nil {
		r.now = time.Now
	}
	if r.timeout <= 0 {
		r.timeout = time.Minute
	}
	return r
}

const (
	nsPerDay = int64(24 * time.Hour)
	msPerDay = nsPerDay / int64(time.Millisecond)
	nsPerMS  = int64(time.Millisecond)
)

func dayOf(ns int64) int32 { return int32(ns / nsPerDay) }

func dayStart(day int32) time.Time { return time.Unix(int64(day)*86400, 0).UTC() }

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && a < 0 {
		q--
	}
	return q
}

func ceilDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && a > 0 {
		q++
	}
	return q
}

func addrString(a netip.Addr, field string) (string, error) {
	a = a.Unmap()
	if !a.Is4() {
		return "", fmt.Errorf("%s: %v is not an IPv4 address", field, a)
	}
	return a.String(), nil
}

// days returns the day partitions that hold every record (or lease)
// meeting [lo, hi]: days before the oldest retained one are answered by
// it, where everything that outlived the cutoff has a copy.
func days(lo, hi int64, oldest int32) (from, to int32, ok bool) {
	if hi < 0 {
		return 1, 0, false // BETWEEN 1 AND 0 matches nothing
	}
	from, to = dayOf(max(lo, 0)), dayOf(hi)
	return max(from, oldest), max(to, oldest), true
}

// snap is one read: a repeatable-read transaction, so every query of it
// sees one state of the database, and the meta row as of that state.
type snap struct {
	tx                         pgx.Tx
	recordsOldest, leaseOldest int32
	width                      int
	now                        int64
}

func (r *Reader) read(what string, fn func(ctx context.Context, s *snap) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), r.timeout)
	defer cancel()
	opts := pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}
	err := pgx.BeginTxFunc(ctx, r.db.pool, opts, func(tx pgx.Tx) error {
		s := &snap{tx: tx, now: store.ClampNS(r.now())}
		err := tx.QueryRow(ctx, `SELECT records_oldest_day, leases_oldest_day,
			(SELECT coalesce(max(width), 0) FROM blocknat.widths) FROM blocknat.meta`).
			Scan(&s.recordsOldest, &s.leaseOldest, &s.width)
		if err != nil {
			return fmt.Errorf("read meta: %w", err)
		}
		return fn(ctx, s)
	})
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

const (
	recordCols = "router, subscriber, inside, public, port_lo, port_hi, start_ms, end_ms, epoch, flags"
	openCols   = "router, subscriber, inside, public, port_lo, port_hi, start_ms, NULL::bigint, epoch, flags"
)

func scanRecord(row pgx.CollectableRow) (store.Record, error) {
	var (
		rec               store.Record
		sub, epoch, flags int64
		inside, public    netip.Prefix
		lo, hi            int32
		start             int64
		end               *int64
	)
	if err := row.Scan(&rec.Router, &sub, &inside, &public, &lo, &hi, &start, &end, &epoch, &flags); err != nil {
		return rec, err
	}
	rec.Subscriber, rec.Epoch, rec.Flags = uint32(sub), uint32(epoch), store.Flags(flags)
	rec.Inside, rec.Public = inside.Addr(), public.Addr()
	rec.PortLo, rec.PortHi = uint16(lo), uint16(hi)
	rec.Start = time.Unix(0, start*nsPerMS).UTC()
	if end != nil {
		rec.End = time.Unix(0, *end*nsPerMS).UTC()
	}
	return rec, nil
}

func (s *snap) records(ctx context.Context, sql string, args ...any) ([]store.Record, error) {
	rows, err := s.tx.Query(ctx, sql, args...)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, scanRecord)
}

type recordID struct {
	router string
	public netip.Addr
	portLo uint16
	sub    uint32
	start  int64
}

func idOf(r *store.Record) recordID {
	return recordID{r.Router, r.Public, r.PortLo, r.Subscriber, r.Start.UnixNano()}
}

// keepOnce drops the copies of a record found in several day partitions,
// and an open record that shares a closed one's key (closed first, as the
// store reads them).
func keepOnce(closed, open []store.Record) []store.Record {
	seen := make(map[recordID]struct{}, len(closed)+len(open))
	out := make([]store.Record, 0, len(closed)+len(open))
	for _, list := range [][]store.Record{closed, open} {
		for _, r := range list {
			id := idOf(&r)
			if _, dup := seen[id]; dup {
				continue
			}
			seen[id] = struct{}{}
			out = append(out, r)
		}
	}
	return out
}

// compareRecords is the store's order, then router.
func compareRecords(a, b store.Record) int {
	return cmp.Or(
		a.Start.Compare(b.Start),
		a.Public.Compare(b.Public),
		cmp.Compare(a.PortLo, b.PortLo),
		cmp.Compare(a.Subscriber, b.Subscriber),
		cmp.Compare(a.Router, b.Router),
	)
}

// LookupInterval returns every router's records of the block holding
// ip:port whose interval meets [from, to] (both inclusive), ordered by
// start.
func (r *Reader) LookupInterval(ip netip.Addr, port uint16, from, to time.Time) ([]store.Record, error) {
	pub, err := store.CheckIPv4(ip, "lookup ip")
	if err != nil {
		return nil, err
	}
	lo, hi, err := store.CheckRange("lookup", from, to)
	if err != nil {
		return nil, err
	}
	loMS, hiMS := ceilDiv(lo, nsPerMS), floorDiv(hi, nsPerMS)
	var closed, open []store.Record
	err = r.read(fmt.Sprintf("lookup %s:%d", ip, port), func(ctx context.Context, s *snap) error {
		if s.width == 0 {
			return nil // nothing was ever activated
		}
		floor := max(int(port)-s.width+1, 0)
		var err error
		if dFrom, dTo, ok := days(lo, hi, s.recordsOldest); ok {
			closed, err = s.records(ctx, `SELECT `+recordCols+` FROM blocknat.records
				WHERE day BETWEEN $1 AND $2 AND public = $3::inet AND port_lo BETWEEN $4 AND $5 AND port_hi >= $5
				  AND start_ms <= $6 AND end_ms >= $7`,
				dFrom, dTo, pub.String(), floor, int(port), hiMS, loMS)
			if err != nil {
				return err
			}
		}
		if s.now < lo {
			return nil
		}
		open, err = s.records(ctx, `SELECT `+openCols+` FROM blocknat.open_records
			WHERE public = $1::inet AND port_lo BETWEEN $2 AND $3 AND port_hi >= $3 AND start_ms <= $4`,
			pub.String(), floor, int(port), hiMS)
		return err
	})
	if err != nil {
		return nil, err
	}
	out := keepOnce(closed, open)
	slices.SortFunc(out, compareRecords)
	return out, nil
}

// History returns every router's records of the inside address whose
// interval meets [from, to], ordered by start. Inside addresses are each
// router's own, so records of different routers are different
// subscribers; each names its router.
func (r *Reader) History(inside netip.Addr, from, to time.Time) ([]store.Record, error) {
	in, err := store.CheckIPv4(inside, "history inside")
	if err != nil {
		return nil, err
	}
	if from.IsZero() || to.IsZero() || to.Before(from) {
		return nil, fmt.Errorf("history range: [%s, %s]: %w", from, to, store.ErrInvalid)
	}
	lo, hi := store.ClampNS(from), store.ClampNS(to)
	loMS, hiMS := ceilDiv(lo, nsPerMS), floorDiv(hi, nsPerMS)
	var closed, open []store.Record
	err = r.read(fmt.Sprintf("history %s", inside), func(ctx context.Context, s *snap) error {
		var err error
		if dFrom, dTo, ok := days(lo, hi, s.recordsOldest); ok {
			closed, err = s.records(ctx, `SELECT `+recordCols+` FROM blocknat.records
				WHERE day BETWEEN $1 AND $2 AND inside = $3::inet AND start_ms <= $4 AND end_ms >= $5`,
				dFrom, dTo, in.String(), hiMS, loMS)
			if err != nil {
				return err
			}
		}
		if s.now < lo {
			return nil
		}
		open, err = s.records(ctx, `SELECT `+openCols+` FROM blocknat.open_records
			WHERE inside = $1::inet AND start_ms <= $2`, in.String(), hiMS)
		return err
	})
	if err != nil {
		return nil, err
	}
	out := keepOnce(closed, open)
	slices.SortFunc(out, compareRecords)
	return out, nil
}

// NearestRecords returns, for the block (public, portLo) held by
// subscriber sub, the latest record that ended before from and the
// earliest that started after to, of any router (nil when none within
// the retained data). Routers that share a public address share the
// mapping too (RFC 7422 leaves nothing else), so sub means the same
// subscriber on each of them: a standby's record is the nearest as much
// as the active router's.
func (r *Reader) NearestRecords(sub uint32, public netip.Addr, portLo uint16, from, to time.Time) (before, after *store.Record, err error) {
	pub, err := store.CheckIPv4(public, "nearest records public")
	if err != nil {
		return nil, nil, err
	}
	lo, hi, err := store.CheckRange("nearest records", from, to)
	if err != nil {
		return nil, nil, err
	}
	first := func(list []store.Record) *store.Record {
		if len(list) == 0 {
			return nil
		}
		return &list[0]
	}
	what := fmt.Sprintf("nearest records of subscriber %d at %s:%d", sub, public, portLo)
	err = r.read(what, func(ctx context.Context, s *snap) error {
		if lo > 0 && dayOf(lo) >= s.recordsOldest {
			// end_ns < lo, in milliseconds.
			list, err := s.records(ctx, `SELECT `+recordCols+` FROM blocknat.records
				WHERE day BETWEEN $1 AND $2 AND public = $3::inet AND port_lo = $4 AND subscriber = $5
				  AND end_ms < $6
				ORDER BY end_ms DESC, start_ms, router LIMIT 1`,
				s.recordsOldest, dayOf(lo), pub.String(), int(portLo), int64(sub), ceilDiv(lo, nsPerMS))
			if err != nil {
				return err
			}
			before = first(list)
		}
		if hi == math.MaxInt64 {
			return nil // nothing starts after the end of time
		}
		// start_ns > hi, in milliseconds.
		hiMS := floorDiv(hi, nsPerMS)
		list, err := s.records(ctx, `SELECT `+recordCols+` FROM blocknat.records
			WHERE day >= $1 AND public = $2::inet AND port_lo = $3 AND subscriber = $4
			  AND start_ms > $5
			ORDER BY start_ms, router LIMIT 1`,
			max(dayOf(hi), s.recordsOldest), pub.String(), int(portLo), int64(sub), hiMS)
		if err != nil {
			return err
		}
		after = first(list)
		list, err = s.records(ctx, `SELECT `+openCols+` FROM blocknat.open_records
			WHERE public = $1::inet AND port_lo = $2 AND subscriber = $3 AND start_ms > $4
			ORDER BY start_ms, router LIMIT 1`,
			pub.String(), int(portLo), int64(sub), hiMS)
		if err != nil {
			return err
		}
		if o := first(list); o != nil && (after == nil || o.Start.Before(after.Start)) {
			after = o
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	return before, after, nil
}

// exportBatch is how many records an export fetches at a time.
const exportBatch = 1000

// exportRecords calls fn with every record meeting [lo, hi], in the
// store's order, a batch at a time from a cursor of the snapshot. A
// record copied into several days is taken from one: its start day, or
// the first day of the range if it began earlier.
func (s *snap) exportRecords(ctx context.Context, lo, hi int64, fn func(store.Record) error) error {
	dFrom, dTo, _ := days(lo, hi, s.recordsOldest)
	loMS, hiMS := ceilDiv(lo, nsPerMS), floorDiv(hi, nsPerMS)
	_, err := s.tx.Exec(ctx, `DECLARE export_records NO SCROLL CURSOR FOR
		SELECT `+recordCols+` FROM blocknat.records
		WHERE day BETWEEN $1 AND $2 AND day = greatest(start_ms / `+fmt.Sprint(msPerDay)+`, $1)
		  AND start_ms <= $3 AND end_ms >= $4
		UNION ALL
		SELECT `+openCols+` FROM blocknat.open_records WHERE $5 AND start_ms <= $3
		ORDER BY start_ms, public, port_lo, subscriber, router`,
		dFrom, dTo, hiMS, loMS, s.now >= lo)
	if err != nil {
		return fmt.Errorf("declare cursor: %w", err)
	}
	for {
		batch, err := s.records(ctx, fmt.Sprintf("FETCH %d FROM export_records", exportBatch))
		if err != nil {
			return fmt.Errorf("fetch: %w", err)
		}
		for _, rec := range batch {
			if err := fn(rec); err != nil {
				return err
			}
		}
		if len(batch) < exportBatch {
			break
		}
	}
	_, err = s.tx.Exec(ctx, "CLOSE export_records")
	return err
}

// Export calls fn for every record of every router whose interval meets
// [from, to], in order of start (then as the store orders, then router),
// reading one consistent snapshot. fn must not call the Reader. An error
// from fn stops the export and is returned.
func (r *Reader) Export(from, to time.Time, fn func(store.Record) error) error {
	if from.IsZero() || to.IsZero() || to.Before(from) {
		return fmt.Errorf("export range: [%s, %s]: %w", from, to, store.ErrInvalid)
	}
	lo, hi := store.ClampNS(from), store.ClampNS(to)
	return r.read("export", func(ctx context.Context, s *snap) error {
		return s.exportRecords(ctx, lo, hi, fn)
	})
}

// ExportWithLeases is Export with, for each record, the leases of its
// router that held its inside address during the part of its interval
// that lies in [from, to], read in the same snapshot.
func (r *Reader) ExportWithLeases(from, to time.Time, fn func(store.Record, []store.Lease) error) error {
	if from.IsZero() || to.IsZero() || to.Before(from) {
		return fmt.Errorf("export range: [%s, %s]: %w", from, to, store.ErrInvalid)
	}
	lo, hi := store.ClampNS(from), store.ClampNS(to)
	return r.read("export with leases", func(ctx context.Context, s *snap) error {
		// One connection runs one query at a time: a batch of the cursor
		// is fetched, then its leases are read in one query, then fn runs.
		var batch []store.Record
		flush := func() error {
			leases, err := s.leasesOfRecords(ctx, batch, lo, hi)
			if err != nil {
				return err
			}
			for i, rec := range batch {
				if err := fn(rec, leases[i]); err != nil {
					return err
				}
			}
			batch = batch[:0]
			return nil
		}
		err := s.exportRecords(ctx, lo, hi, func(rec store.Record) error {
			batch = append(batch, rec)
			if len(batch) == exportBatch {
				return flush()
			}
			return nil
		})
		if err != nil {
			return err
		}
		return flush()
	})
}

// leasesOfRecords returns, for each record, the leases of its router
// that held its inside address during the part of its interval in
// [lo, hi], ordered by Start (nil when none): leasesOf for a batch, in
// one query.
func (s *snap) leasesOfRecords(ctx context.Context, recs []store.Record, lo, hi int64) ([][]store.Lease, error) {
	if len(recs) == 0 {
		return nil, nil
	}
	routers := make([]string, len(recs))
	insides := make([]string, len(recs))
	los := make([]int64, len(recs))
	his := make([]int64, len(recs))
	for i, rec := range recs {
		rlo, rhi := max(rec.Start.UnixNano(), lo), hi
		if !rec.Open() {
			rhi = min(rec.End.UnixNano(), hi)
		}
		routers[i], insides[i], los[i], his[i] = rec.Router, rec.Inside.String(), rlo, max(rhi, rlo)
	}
	day := fmt.Sprint(nsPerDay)
	rows, err := s.tx.Query(ctx, `SELECT q.i, l.* FROM
		unnest($1::text[], $2::inet[], $3::bigint[], $4::bigint[]) WITH ORDINALITY AS q(router, inside, lo, hi, i)
		CROSS JOIN LATERAL (
			SELECT x.router, x.inside, x.mac, x.client_id, x.hostname, x.source, x.start_ns, x.end_ns, true
			FROM blocknat.leases x
			WHERE x.day BETWEEN greatest(q.lo / `+day+`, $5) AND greatest(q.hi / `+day+`, $5)
			  AND x.day = greatest(x.start_ns / `+day+`, q.lo / `+day+`, $5)
			  AND x.router = q.router AND x.inside = q.inside AND x.start_ns <= q.hi AND x.end_ns >= q.lo
			UNION ALL
			SELECT c.router, c.inside, c.mac, c.client_id, c.hostname, c.source, c.start_ns, c.expires_ns,
			       c.expires_ns IS NOT NULL AND c.expires_ns < $6
			FROM blocknat.current_leases c
			WHERE c.router = q.router AND c.inside = q.inside AND c.start_ns <= q.hi
			  AND (c.expires_ns IS NULL OR c.expires_ns >= q.lo)
		) l`, routers, insides, los, his, s.leaseOldest, s.now)
	if err != nil {
		return nil, fmt.Errorf("leases of the records: %w", err)
	}
	defer rows.Close()
	out := make([][]store.Lease, len(recs))
	for rows.Next() {
		var i int64
		l, err := scanLeaseInto(rows.Scan, &i)
		if err != nil {
			return nil, fmt.Errorf("leases of the records: %w", err)
		}
		if i < 1 || int(i) > len(recs) {
			return nil, fmt.Errorf("leases of the records: row for record %d of %d", i, len(recs))
		}
		out[i-1] = append(out[i-1], l)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("leases of the records: %w", err)
	}
	for _, ls := range out {
		slices.SortFunc(ls, compareLeases)
	}
	return out, nil
}

func scanLease(row pgx.CollectableRow) (store.Lease, error) { return scanLeaseInto(row.Scan) }

// scanLeaseInto scans a lease's columns after the columns of first.
func scanLeaseInto(scan func(dest ...any) error, first ...any) (store.Lease, error) {
	var (
		l                   store.Lease
		inside              netip.Prefix
		mac, cid, host, src []byte
		start               int64
		end                 *int64
		ended               bool
	)
	if err := scan(append(first, &l.Router, &inside, &mac, &cid, &host, &src, &start, &end, &ended)...); err != nil {
		return l, err
	}
	l.Inside = inside.Addr()
	l.MAC = net.HardwareAddr(mac)
	if len(cid) > 0 {
		l.ClientID = cid
	}
	l.Hostname, l.Source = string(host), string(src)
	l.Start = time.Unix(0, start).UTC()
	if end != nil {
		l.End = time.Unix(0, *end).UTC()
	}
	l.Ended = ended
	return l, nil
}

// leasesOf returns the leases meeting [lo, hi] whose column by ("inside"
// or "mac") equals key, of router ("" for every router), ordered by
// Start. A current lease whose expiry is before now reads as ended there.
func (s *snap) leasesOf(ctx context.Context, router, by string, key any, lo, hi int64) ([]store.Lease, error) {
	cast := "::inet"
	if by == "mac" {
		cast = "::bytea"
	}
	dFrom, dTo, _ := days(lo, hi, s.leaseOldest)
	rows, err := s.tx.Query(ctx, `SELECT router, inside, mac, client_id, hostname, source, start_ns, end_ns, true
		FROM blocknat.leases
		WHERE day BETWEEN $1 AND $2 AND day = greatest(start_ns / `+fmt.Sprint(nsPerDay)+`, $1)
		  AND `+by+` = $3`+cast+` AND start_ns <= $4 AND end_ns >= $5 AND ($6 = '' OR router = $6)
		UNION ALL
		SELECT router, inside, mac, client_id, hostname, source, start_ns, expires_ns, expires_ns IS NOT NULL AND expires_ns < $7
		FROM blocknat.current_leases
		WHERE `+by+` = $3`+cast+` AND start_ns <= $4 AND (expires_ns IS NULL OR expires_ns >= $5) AND ($6 = '' OR router = $6)`,
		dFrom, dTo, key, hi, lo, router, s.now)
	if err != nil {
		return nil, err
	}
	out, err := pgx.CollectRows(rows, scanLease)
	if err != nil || len(out) == 0 {
		return nil, err // nil when none, as the store answers
	}
	slices.SortFunc(out, compareLeases)
	return out, nil
}

// compareLeases is the store's order, then router.
func compareLeases(a, b store.Lease) int {
	return cmp.Or(a.Start.Compare(b.Start), a.Inside.Compare(b.Inside), bytes.Compare(a.MAC, b.MAC), cmp.Compare(a.Router, b.Router))
}

// LeasesOf returns every router's leases of the inside address whose
// interval meets [from, to] (both inclusive), ordered by Start.
func (r *Reader) LeasesOf(inside netip.Addr, from, to time.Time) ([]store.Lease, error) {
	in, err := store.CheckIPv4(inside, "leases of inside")
	if err != nil {
		return nil, err
	}
	lo, hi, err := store.CheckRange("leases of", from, to)
	if err != nil {
		return nil, err
	}
	var out []store.Lease
	err = r.read(fmt.Sprintf("leases of %s", inside), func(ctx context.Context, s *snap) error {
		out, err = s.leasesOf(ctx, "", "inside", in.String(), lo, hi)
		return err
	})
	return out, err
}

// maxMACLen is the store's bound on a hardware address.
const maxMACLen = 20

// LeasesByMAC returns every router's leases of the device with that MAC
// whose interval meets [from, to] (both inclusive), ordered by Start.
func (r *Reader) LeasesByMAC(mac net.HardwareAddr, from, to time.Time) ([]store.Lease, error) {
	if len(mac) == 0 || len(mac) > maxMACLen {
		return nil, fmt.Errorf("leases by mac: mac: %d bytes, want 1 to %d: %w", len(mac), maxMACLen, store.ErrInvalid)
	}
	lo, hi, err := store.CheckRange("leases by mac", from, to)
	if err != nil {
		return nil, err
	}
	var out []store.Lease
	err = r.read(fmt.Sprintf("leases by mac %s", mac), func(ctx context.Context, s *snap) error {
		out, err = s.leasesOf(ctx, "", "mac", []byte(mac), lo, hi)
		return err
	})
	return out, err
}

// ApplyLeases refuses: lease events reach the fleet only through the
// routers' outboxes.
func (r *Reader) ApplyLeases([]store.LeaseEvent) error {
	return fmt.Errorf("apply leases: %w", ErrReadOnly)
}

const epochCols = "router, start_ns, id, recorded_ns, prefixes, pool, port_lo, port_hi, block_size, ratio, hash, clock"

func scanEpoch(row pgx.CollectableRow) (store.Epoch, error) {
	var (
		e                          store.Epoch
		start, id, recorded, ratio int64
		prefixes, pool             []netip.Prefix
		lo, hi, bs                 int32
		hash, clock                []byte
	)
	if err := row.Scan(&e.Router, &start, &id, &recorded, &prefixes, &pool, &lo, &hi, &bs, &ratio, &hash, &clock); err != nil {
		return e, err
	}
	e.ID, e.Ratio = uint32(id), uint32(ratio)
	e.Start, e.Recorded = time.Unix(0, start).UTC(), time.Unix(0, recorded).UTC()
	e.PortLo, e.PortHi, e.BlockSize = uint16(lo), uint16(hi), uint16(bs)
	if len(hash) != len(e.Hash) {
		return e, fmt.Errorf("epoch %d of router %s: hash of %d bytes: %w", e.ID, e.Router, len(hash), store.ErrCorrupt)
	}
	copy(e.Hash[:], hash)
	e.Prefixes = prefixes
	if len(prefixes) == 0 {
		e.Prefixes = nil
	}
	for _, p := range pool {
		e.Pool = append(e.Pool, p.Addr())
	}
	if len(clock) > 0 {
		var w wireClock
		if err := json.Unmarshal(clock, &w); err != nil {
			return e, fmt.Errorf("epoch %d of router %s: clock: %v: %w", e.ID, e.Router, err, store.ErrCorrupt)
		}
		e.Clock = &store.EpochClock{Unreadable: w.Unreadable, Synchronised: w.Synchronised,
			EstimatedError: time.Duration(w.EstErrorUS) * time.Microsecond,
			MaxError:       time.Duration(w.MaxErrorUS) * time.Microsecond,
			ReadAt:         time.Unix(0, w.ReadAtNS).UTC()}
	}
	return e, nil
}

func (r *Reader) epochs(what, sql string, args ...any) ([]store.Epoch, error) {
	var out []store.Epoch
	err := r.read(what, func(ctx context.Context, s *snap) error {
		rows, err := s.tx.Query(ctx, sql, args...)
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, scanEpoch)
		return err
	})
	return out, err
}

// Epochs returns every router's epochs, ordered by Start, then router,
// then ID.
func (r *Reader) Epochs() ([]store.Epoch, error) {
	return r.epochs("epochs", `SELECT `+epochCols+` FROM blocknat.epochs ORDER BY start_ns, router, id`)
}

// EpochAt returns the epoch that took effect last at or before t on any
// router: the latest Start not after t, the highest ID of those, then the
// first router by name. Each router has its own epochs; RouterEpochAt
// answers for one.
func (r *Reader) EpochAt(t time.Time) (store.Epoch, error) {
	return r.epochAt("", t)
}

// RouterEpochAt returns router's epoch in force at t, as its store's
// EpochAt would.
func (r *Reader) RouterEpochAt(router string, t time.Time) (store.Epoch, error) {
	if err := checkRouter(router); err != nil {
		return store.Epoch{}, fmt.Errorf("epoch at %s: %v: %w", t, err, store.ErrInvalid)
	}
	return r.epochAt(router, t)
}

func (r *Reader) epochAt(router string, t time.Time) (store.Epoch, error) {
	ns := store.ClampNS(t)
	when := t.UTC().Format(time.RFC3339Nano)
	if ns < 0 {
		return store.Epoch{}, fmt.Errorf("epoch at %s: %w", when, store.ErrNotFound)
	}
	list, err := r.epochs("epoch at "+when, `SELECT `+epochCols+` FROM blocknat.epochs
		WHERE start_ns <= $1 AND ($2 = '' OR router = $2) ORDER BY start_ns DESC, id DESC, router LIMIT 1`, ns, router)
	if err != nil {
		return store.Epoch{}, err
	}
	if len(list) == 0 {
		if router != "" {
			return store.Epoch{}, fmt.Errorf("epoch of router %s at %s: %w", router, when, store.ErrNotFound)
		}
		return store.Epoch{}, fmt.Errorf("epoch at %s: %w", when, store.ErrNotFound)
	}
	return list[0], nil
}

// Stats returns the counts that make sense for the fleet database: open
// records, epochs and current leases across routers, the records' day
// partitions, the oldest retained day, and sizes as PostgreSQL counts
// them (tables with their TOAST, indexes apart for the records).
func (r *Reader) Stats() (store.Stats, error) {
	var st store.Stats
	err := r.read("stats", func(ctx context.Context, s *snap) error {
		if s.recordsOldest > 0 {
			st.OldestRetained = dayStart(s.recordsOldest)
		}
		var disk, recBytes, idxBytes, openBytes, leaseBytes int64
		err := s.tx.QueryRow(ctx, `SELECT
			(SELECT count(*) FROM blocknat.open_records),
			(SELECT count(*) FROM blocknat.epochs),
			(SELECT count(*) FROM blocknat.current_leases),
			pg_database_size(current_database()),
			(SELECT coalesce(sum(pg_table_size(inhrelid)), 0) FROM pg_inherits WHERE inhparent = 'blocknat.records'::regclass),
			(SELECT coalesce(sum(pg_indexes_size(inhrelid)), 0) FROM pg_inherits WHERE inhparent = 'blocknat.records'::regclass),
			pg_total_relation_size('blocknat.open_records'),
			(SELECT coalesce(sum(pg_total_relation_size(inhrelid)), 0) FROM pg_inherits WHERE inhparent = 'blocknat.leases'::regclass)
				+ pg_total_relation_size('blocknat.current_leases')`).
			Scan(&st.OpenRecords, &st.Epochs, &st.LeaseOpen, &disk, &recBytes, &idxBytes, &openBytes, &leaseBytes)
		if err != nil {
			return err
		}
		st.DiskBytes, st.RecordBytes, st.IndexBytes = uint64(disk), uint64(recBytes), uint64(idxBytes)
		st.OpenBytes, st.LeaseBytes = uint64(openBytes), uint64(leaseBytes)
		parts, err := partitions(ctx, s.tx, "records")
		if err != nil {
			return err
		}
		st.Partitions = len(parts)
		if len(parts) > 0 {
			st.OldestPartition = dayStart(parts[0].day)
		}
		return nil
	})
	return st, err
}
