package pgfleet

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// DB is a pool of connections to the fleet database, as one role: a
// router's (Progress, Ingest, IngestAudit) or the owner's (everything).
type DB struct {
	pool *pgxpool.Pool
	// target names the database in errors: host, database and user,
	// never the password.
	target string
}

// Connect opens a pool on dsn (a libpq connection string or URL) and
// checks that the database answers.
func Connect(ctx context.Context, dsn string) (*DB, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		// pgx redacts the password from its parse errors; scrub the
		// whole string anyway, as a malformed one may not parse far
		// enough for pgx to find it.
		return nil, fmt.Errorf("postgres connection string: %s", scrub(err.Error(), dsn))
	}
	cc := cfg.ConnConfig
	target := fmt.Sprintf("postgres %s database %s as %s", cc.Host, cc.Database, cc.User)
	if _, ok := cc.RuntimeParams["application_name"]; !ok {
		cc.RuntimeParams["application_name"] = "blocknat"
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %s", target, scrub(err.Error(), cc.Password))
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("connect to %s: %s", target, scrub(err.Error(), cc.Password))
	}
	return &DB{pool: pool, target: target}, nil
}

// scrub removes secret from msg; errors are strings here so that no
// wrapped error can carry the connection string out.
func scrub(msg, secret string) string {
	if secret == "" {
		return msg
	}
	return strings.ReplaceAll(msg, secret, "xxxxx")
}

// Close closes every connection.
func (db *DB) Close() { db.pool.Close() }

// SchemaVersion is the version Migrate brings the schema to.
const SchemaVersion = 4

//go:embed migrations/*.sql
var migrationFiles embed.FS

type migration struct {
	version int
	name    string
	sql     string
}

// migrations returns the embedded migrations in order; file NNN_name.sql
// is version NNN, and the versions run 1, 2, … without a hole.
func migrations() ([]migration, error) {
	names, err := fs.Glob(migrationFiles, "migrations/*.sql")
	if err != nil {
		return nil, err
	}
	slices.Sort(names)
	var out []migration
	for i, path := range names {
		name := strings.TrimPrefix(path, "migrations/")
		num, _, _ := strings.Cut(name, "_")
		v, err := strconv.Atoi(num)
		if err != nil || v != i+1 {
			return nil, fmt.Errorf("migration %s: want version %d", name, i+1)
		}
		b, err := migrationFiles.ReadFile(path)
		if err != nil {
			return nil, err
		}
		out = append(out, migration{version: v, name: name, sql: string(b)})
	}
	if len(out) != SchemaVersion {
		return nil, fmt.Errorf("%d migrations embedded, SchemaVersion is %d", len(out), SchemaVersion)
	}
	return out, nil
}

// migrateLock is the advisory lock key migrations hold, so that two fleet
// services starting at once migrate one after the other.
const migrateLock = 0x626e6174_6d696772 // "bnatmigr"

// Migrate brings the schema to SchemaVersion and returns the version it
// found and the one it left. Each version is one transaction, so a
// failure leaves the schema at the last whole version. It runs as the
// owner role.
func (db *DB) Migrate(ctx context.Context, log *slog.Logger) (from, to int, err error) {
	return db.migrate(ctx, SchemaVersion, log)
}

// MigrateTo brings the schema to version, which may be below
// SchemaVersion (tests build the previous version with it), never down.
func (db *DB) MigrateTo(ctx context.Context, version int, log *slog.Logger) error {
	_, _, err := db.migrate(ctx, version, log)
	return err
}

func (db *DB) migrate(ctx context.Context, target int, log *slog.Logger) (from, to int, err error) {
	if log == nil {
		log = slog.Default()
	}
	ms, err := migrations()
	if err != nil {
		return 0, 0, fmt.Errorf("migrate: %w", err)
	}
	if target < 1 || target > len(ms) {
		return 0, 0, fmt.Errorf("migrate: version %d: this program knows versions 1 to %d", target, len(ms))
	}
	from = -1
	for {
		cur, done, err := db.migrateStep(ctx, ms, target)
		if from < 0 {
			from = cur
		}
		if err != nil {
			return from, cur, err
		}
		if done {
			return from, cur, nil
		}
		log.Info("fleet database migrated", "version", cur+1, "migration", ms[cur].name)
	}
}

// migrateStep applies the next migration towards target in one
// transaction, under the advisory lock, and returns the version it found.
func (db *DB) migrateStep(ctx context.Context, ms []migration, target int) (cur int, done bool, err error) {
	err = pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", int64(migrateLock)); err != nil {
			return fmt.Errorf("lock: %w", err)
		}
		_, err := tx.Exec(ctx, `CREATE SCHEMA IF NOT EXISTS blocknat;
			CREATE TABLE IF NOT EXISTS blocknat.schema_version (
				version integer PRIMARY KEY,
				applied timestamptz NOT NULL DEFAULT now())`)
		if err != nil {
			return fmt.Errorf("schema_version: %w", err)
		}
		if err := tx.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM blocknat.schema_version").Scan(&cur); err != nil {
			return fmt.Errorf("read schema_version: %w", err)
		}
		switch {
		case cur > len(ms):
			return fmt.Errorf("the database is at version %d, newer than this program's %d", cur, len(ms))
		case cur > target:
			return fmt.Errorf("the database is at version %d, above %d: migrations never go down", cur, target)
		case cur == target:
			done = true
			return nil
		}
		m := ms[cur]
		if _, err := tx.Exec(ctx, m.sql); err != nil {
			return fmt.Errorf("%s: %w", m.name, err)
		}
		if _, err := tx.Exec(ctx, "INSERT INTO blocknat.schema_version (version) VALUES ($1)", m.version); err != nil {
			return fmt.Errorf("%s: record version: %w", m.name, err)
		}
		return nil
	})
	if err != nil {
		return cur, false, fmt.Errorf("migrate %s from version %d: %w", db.target, cur, err)
	}
	return cur, done, nil
}

// pgCode is err's SQLSTATE, "" when it is no PostgreSQL error.
func pgCode(err error) string {
	if pe := asPgError(err); pe != nil {
		return pe.Code
	}
	return ""
}

func asPgError(err error) *pgconn.PgError {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe
	}
	return nil
}
