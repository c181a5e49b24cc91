package config

import (
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// Replicate is the replicate section: a copy of every block record, lease,
// epoch and audit entry in the site's PostgreSQL log server
// (userspace/replicate), so that a year of records survives the loss of
// this router's disk and a fleet service answers across routers. Absent,
// the router keeps its records on its own disk only, as before.
type Replicate struct {
	// Postgres is the connection string (a libpq keyword/value string or
	// a postgres:// URL) of a role that may only call blocknat's ingest
	// functions (docs/operator-guide.md, "Replication"). Keep its password
	// in a passfile (passfile=…) rather than here: the configuration is
	// readable by whoever may read the router's settings.
	Postgres string `yaml:"postgres"`
	// Router is the name this router's records carry in the database and
	// in a fleet's answers; unique in the fleet.
	Router string `yaml:"router"`
	// MaxLag raises the alarm (reason replication) when the oldest change
	// not yet in the database is older than this (default 5m).
	MaxLag Duration `yaml:"max_lag"`
	// Batch is how many changes one transaction carries (default 1000).
	Batch int `yaml:"batch"`
}

// Defaults of the replicate section.
const (
	DefaultReplicateMaxLag = 5 * time.Minute
	DefaultReplicateBatch  = 1000
	// MaxReplicateBatch bounds a transaction, whose changes travel as one
	// JSON array: a catch-up after a day offline is many transactions,
	// not one the database must hold in memory.
	MaxReplicateBatch = 50000
)

// FleetRouterPrefix starts the name a fleet service's own audit log is
// replicated under; a router's name cannot hold its ':'
// (ValidateRouterName), so no router may take it.
const FleetRouterPrefix = "fleet:"

var routerName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// Enabled reports whether the router replicates.
func (r Replicate) Enabled() bool { return r.Postgres != "" }

func replicateDefaults() Replicate {
	return Replicate{MaxLag: Duration(DefaultReplicateMaxLag), Batch: DefaultReplicateBatch}
}

// UnmarshalYAML fills the defaults before decoding, so that a field left
// out takes its default and one written, even as 0, is checked as written.
func (r *Replicate) UnmarshalYAML(unmarshal func(any) error) error {
	type plain Replicate
	v := plain(replicateDefaults())
	if err := unmarshal(&v); err != nil {
		return err
	}
	*r = Replicate(v)
	return nil
}

// ReplicateSettings is the replicate section with its defaults, also when
// the Config was built without Parse.
func (c *Config) ReplicateSettings() Replicate {
	r, d := c.Replicate, replicateDefaults()
	if r.MaxLag == 0 {
		r.MaxLag = d.MaxLag
	}
	if r.Batch == 0 {
		r.Batch = d.Batch
	}
	return r
}

// ValidateRouterName checks a router's name as the database and the
// fleet's answers carry it; field names the setting at fault.
func ValidateRouterName(field, name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%s: missing: name this router as the fleet will know it (letters, digits, '.', '_', '-')", field)
	case !routerName.MatchString(name):
		return fmt.Errorf("%s: %q is not 1 to 63 letters, digits, '.', '_' or '-' starting with a letter or digit", field, name)
	}
	return nil
}

// ValidatePostgresDSN checks that a connection string parses, without
// echoing it: it may hold a password.
func ValidatePostgresDSN(field, dsn string) error {
	if _, err := pgconn.ParseConfig(dsn); err != nil {
		// pgconn's message quotes the string it could not parse; say
		// only what kind of mistake it is.
		msg := err.Error()
		if i := strings.LastIndex(msg, ": "); i >= 0 {
			msg = msg[i+2:]
		}
		return fmt.Errorf("%s: not a PostgreSQL connection string (%s)", field, msg)
	}
	return nil
}

func (c *Config) validateReplicate() []error {
	r := c.Replicate
	var errs []error
	if r.MaxLag <= 0 {
		errs = append(errs, fmt.Errorf("replicate.max_lag: must be a positive duration"))
	}
	if r.Batch < 1 || r.Batch > MaxReplicateBatch {
		errs = append(errs, fmt.Errorf("replicate.batch: %d, want 1 to %d", r.Batch, MaxReplicateBatch))
	}
	if !r.Enabled() {
		if r.Router != "" {
			errs = append(errs, fmt.Errorf("replicate.router: %q is set but replicate.postgres is not: say where to replicate, or leave the section out", r.Router))
		}
		return errs
	}
	if err := ValidatePostgresDSN("replicate.postgres", r.Postgres); err != nil {
		errs = append(errs, err)
	}
	if err := ValidateRouterName("replicate.router", r.Router); err != nil {
		errs = append(errs, err)
	}
	return errs
}
