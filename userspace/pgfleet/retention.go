package pgfleet

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/blocknat/blocknat/userspace/audit"
)

// Retention is how long each kind of row is kept: the router's settings
// (userspace/config Retention: records, audit), so that the copy keeps
// what the router keeps.
type Retention struct {
	Records time.Duration
	// Leases is how long ended leases are kept; zero means Records, as
	// the router's store sweeps leases with its records.
	Leases time.Duration
	Audit  time.Duration
}

// The day-partitioned tables and the meta column holding each one's
// oldest retained day.
var partitioned = []struct{ table, oldest string }{
	{"records", "records_oldest_day"},
	{"leases", "leases_oldest_day"},
	{"audit", "audit_oldest_day"},
}

type partition struct {
	name string
	day  int32
}

// partitions lists parent's day partitions in order of day. Their names
// are parent_YYYYMMDD, as blocknat.ensure_partition creates them.
func partitions(ctx context.Context, q interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}, parent string) ([]partition, error) {
	rows, err := q.Query(ctx, `SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
		WHERE i.inhparent = $1::regclass`, "blocknat."+parent)
	if err != nil {
		return nil, fmt.Errorf("list partitions of %s: %w", parent, err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("list partitions of %s: %w", parent, err)
	}
	out := make([]partition, 0, len(names))
	for _, n := range names {
		date, ok := strings.CutPrefix(n, parent+"_")
		t, err := time.Parse("20060102", date)
		if !ok || err != nil {
			return nil, fmt.Errorf("partition %s of %s: not named %s_YYYYMMDD", n, parent, parent)
		}
		out = append(out, partition{name: n, day: int32(t.Unix() / 86400)})
	}
	slices.SortFunc(out, func(a, b partition) int { return int(a.day - b.day) })
	return out, nil
}

// DropExpired drops, for each of records, leases and audit, the day
// partitions whose day ends at or before now minus that kind's retention,
// makes the first kept day the kind's oldest retained day (so that no
// later ingest writes into a dropped day), and returns the names of the
// partitions dropped, schema-qualified. It takes the meta row for update,
// so it waits for the batches being ingested and they for it, and drops
// whole tables in one transaction: never a row-by-row delete.
func (db *DB) DropExpired(ctx context.Context, ret Retention, now time.Time) (dropped []string, err error) {
	if ret.Leases == 0 {
		ret.Leases = ret.Records
	}
	keep := map[string]time.Duration{"records": ret.Records, "leases": ret.Leases, "audit": ret.Audit}
	for _, p := range partitioned {
		if keep[p.table] <= 0 {
			return nil, fmt.Errorf("drop expired: retention of %s: %s: must be positive (keeping forever is not allowed)", p.table, keep[p.table])
		}
	}
	err = pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
		dropped = nil
		if _, err := tx.Exec(ctx, "SELECT FROM blocknat.meta FOR UPDATE"); err != nil {
			return fmt.Errorf("lock meta: %w", err)
		}
		for _, p := range partitioned {
			cutoff := now.Add(-keep[p.table]).UnixNano()
			if cutoff < 0 {
				continue
			}
			// Day d ends at (d+1)·86400 s, at or before the cutoff for
			// every d below the cutoff's day.
			first := dayOf(cutoff)
			parts, err := partitions(ctx, tx, p.table)
			if err != nil {
				return err
			}
			for _, part := range parts {
				if part.day >= first {
					break
				}
				if _, err := tx.Exec(ctx, "DROP TABLE blocknat."+pgx.Identifier{part.name}.Sanitize()); err != nil {
					return fmt.Errorf("drop %s: %w", part.name, err)
				}
				dropped = append(dropped, "blocknat."+part.name)
			}
			_, err = tx.Exec(ctx, "UPDATE blocknat.meta SET "+p.oldest+" = greatest("+p.oldest+", $1)", first)
			if err != nil {
				return fmt.Errorf("set %s: %w", p.oldest, err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("drop expired in %s: %w", db.target, err)
	}
	return dropped, nil
}

// RouterState is where one router's replication stands.
type RouterState struct {
	Name         string
	Store, Audit uint64
	LastIngest   time.Time
	// Retired is when the router was retired (RetireRouter); zero for a
	// router in service.
	Retired time.Time
}

// InService reports whether the fleet expects the router's deliveries: it
// was never retired, or it delivered again after its retirement.
func (r RouterState) InService() bool { return r.Retired.IsZero() || r.LastIngest.After(r.Retired) }

// Routers lists every router that has replicated to the database.
func (db *DB) Routers(ctx context.Context) ([]RouterState, error) {
	rows, err := db.pool.Query(ctx, `SELECT p.router,
			coalesce(max(p.last_seq) FILTER (WHERE p.stream = 'store'), 0),
			coalesce(max(p.last_seq) FILTER (WHERE p.stream = 'audit'), 0),
			max(p.updated), max(r.retired)
		FROM blocknat.progress p LEFT JOIN blocknat.retired_routers r ON r.router = p.router
		GROUP BY p.router ORDER BY p.router`)
	if err != nil {
		return nil, fmt.Errorf("routers in %s: %w", db.target, err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (RouterState, error) {
		var r RouterState
		var st, au int64
		var retired *time.Time
		err := row.Scan(&r.Name, &st, &au, &r.LastIngest, &retired)
		r.Store, r.Audit, r.LastIngest = uint64(st), uint64(au), r.LastIngest.UTC()
		if retired != nil {
			r.Retired = retired.UTC()
		}
		return r, err
	})
	if err != nil {
		return nil, fmt.Errorf("routers in %s: %w", db.target, err)
	}
	return out, nil
}

// RetireRouter marks a router that has left the fleet for good, so that
// the fleet no longer expects its deliveries; what it replicated stays
// until retention drops it. It returns the router's state; a name that
// never replicated here is refused, as it is most likely a typing error.
func (db *DB) RetireRouter(ctx context.Context, router string) (RouterState, error) {
	if err := checkRouter(router); err != nil {
		return RouterState{}, fmt.Errorf("retire: %w", err)
	}
	tag, err := db.pool.Exec(ctx, `INSERT INTO blocknat.retired_routers (router)
		SELECT $1 WHERE EXISTS (SELECT 1 FROM blocknat.progress WHERE router = $1)
		ON CONFLICT (router) DO UPDATE SET retired = now(), by_role = session_user`, router)
	if err != nil {
		return RouterState{}, fmt.Errorf("retire router %s in %s: %w", router, db.target, err)
	}
	if tag.RowsAffected() == 0 {
		return RouterState{}, fmt.Errorf("retire router %s: it has never replicated to %s (the names that have are in blocknat status)", router, db.target)
	}
	routers, err := db.Routers(ctx)
	if err != nil {
		return RouterState{}, err
	}
	for _, r := range routers {
		if r.Name == router {
			return r, nil
		}
	}
	return RouterState{}, fmt.Errorf("retire router %s: gone from %s while retiring it", router, db.target)
}

// AuditCopy returns up to limit entries of router's replicated audit log
// from seq fromSeq on, in order, exactly as the router wrote them (their
// hashes verify). Entries of dropped days are gone.
func (db *DB) AuditCopy(ctx context.Context, router string, fromSeq uint64, limit int) ([]audit.Entry, error) {
	if err := checkRouter(router); err != nil {
		return nil, fmt.Errorf("audit copy: %w", err)
	}
	if limit <= 0 {
		return nil, fmt.Errorf("audit copy of router %s: limit %d: must be positive", router, limit)
	}
	rows, err := db.pool.Query(ctx, `SELECT seq, entry::text FROM blocknat.audit
		WHERE router = $1 AND seq >= $2 ORDER BY seq LIMIT $3`, router, int64(min(fromSeq, 1<<63-1)), limit)
	if err != nil {
		return nil, fmt.Errorf("audit copy of router %s: %w", router, err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (audit.Entry, error) {
		var seq int64
		var text string
		if err := row.Scan(&seq, &text); err != nil {
			return audit.Entry{}, err
		}
		var e audit.Entry
		if err := json.Unmarshal([]byte(text), &e); err != nil {
			return e, fmt.Errorf("entry seq %d: %w", seq, err)
		}
		return e, nil
	})
	if err != nil {
		return nil, fmt.Errorf("audit copy of router %s: %w", router, err)
	}
	return out, nil
}
