package fleet

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/goccy/go-yaml"
	"github.com/goccy/go-yaml/ast"
	"github.com/goccy/go-yaml/parser"

	"github.com/blocknat/blocknat/userspace/config"
)

// Config is the fleet service's configuration file. Decoding is strict,
// like a router's (userspace/config): an unknown field is refused, and
// every error names the field at fault as written in the file.
type Config struct {
	// Name names this fleet service; its own audit log is replicated to
	// the database as router "fleet:NAME".
	Name string `yaml:"name"`
	// Postgres is the connection string (libpq key=value or URL) of the
	// role that owns the blocknat schema: the fleet migrates it, reads
	// every router's copy and drops expired partitions.
	Postgres string `yaml:"postgres"`
	// StateDir holds the fleet's own audit chain and its signing key
	// (default DefaultStateDir).
	StateDir string `yaml:"state_dir"`
	// API is the unix socket (default DefaultSocket) and the optional TLS
	// listener, as on a router.
	API config.API `yaml:"api"`
	// Roles are who may look up (investigator), read the audit log
	// (auditor) and read the status (admin), as on a router. A fleet
	// takes no lease events, so roles.dhcp is refused.
	Roles config.Roles `yaml:"roles"`
	// Audit is the audit log's checkpoints and key, as on a router.
	Audit config.Audit `yaml:"audit"`
	// Retention is how long the database keeps records and leases
	// (records) and audit entries (audit): whole day partitions older
	// than that are dropped daily. Use the routers' retention.
	Retention config.Retention `yaml:"retention"`
	// ReplicateMaxLag is the lag of the fleet's own audit log's copy in
	// the database above which its status says it is behind (default
	// config.DefaultReplicateMaxLag).
	ReplicateMaxLag config.Duration `yaml:"replicate_max_lag"`
	// Metrics is the Prometheus endpoint, shaped as a router's
	// metrics.listen; unlike a router's it is off unless listen is set,
	// since a fleet service often shares a host with a router whose
	// endpoint holds the default port.
	Metrics config.Metrics `yaml:"metrics"`
	// StaleAfter is how long a router may go without an ingest before
	// the stale_router alarm holds for it (default DefaultStaleAfter).
	StaleAfter config.Duration `yaml:"stale_after"`
}

// Defaults of the fleet service's optional fields.
const (
	DefaultStateDir = "/var/lib/blocknat-fleet"
	// DefaultSocket differs from a router's so that both can run on one
	// host.
	DefaultSocket = "/run/blocknat-fleet/api.sock"
	// DefaultStaleAfter: every router re-records its mapping epoch daily
	// (RFC 7422 §3), and the epoch is a store change it replicates, so a
	// router that still replicates ingests at least once a day however
	// idle its subscribers are. Two hours above a day leave room for
	// replicate.max_lag and a slow catch-up without alarming on a router
	// that is merely quiet.
	DefaultStaleAfter = 26 * time.Hour
)

// RouterName is the name the fleet's own audit log has in the database.
func (c *Config) RouterName() string { return config.FleetRouterPrefix + c.Name }

// AuditKeyPath is the signing key's path, defaulting into state_dir.
func (c *Config) AuditKeyPath() string {
	if c.Audit.Key != "" {
		return c.Audit.Key
	}
	return filepath.Join(c.StateDir, "audit.key")
}

// AuditDir is where the fleet's audit log lives.
func (c *Config) AuditDir() string { return filepath.Join(c.StateDir, "audit") }

func withDefaults() *Config {
	return &Config{
		StateDir: DefaultStateDir,
		API:      config.API{Socket: DefaultSocket},
		Audit: config.Audit{CheckpointEvery: config.DefaultCheckpointEvery,
			CheckpointInterval: config.Duration(config.DefaultCheckpointInterval)},
		Retention: config.Retention{Records: config.Duration(config.DefaultRecordRetention),
			Audit: config.Duration(config.DefaultAuditRetention)},
		ReplicateMaxLag: config.Duration(config.DefaultReplicateMaxLag),
		StaleAfter:      config.Duration(DefaultStaleAfter),
	}
}

// ParseConfig decodes a fleet configuration strictly, applies defaults
// and validates it.
func ParseConfig(data []byte) (*Config, error) {
	file, err := parser.ParseBytes(data, 0)
	if err != nil {
		return nil, fmt.Errorf("parse fleet config: %s", config.DescribeYAMLError(err, nil))
	}
	var body ast.Node
	for _, doc := range file.Docs {
		if doc.Body != nil {
			if body != nil {
				return nil, errors.New("parse fleet config: the file holds more than one YAML document")
			}
			body = doc.Body
		}
	}
	if body == nil || body.Type() == ast.NullType {
		return nil, errors.New("parse fleet config: the file is empty; at least name and postgres are required")
	}
	c := withDefaults()
	if err := yaml.NodeToValue(body, c, yaml.Strict()); err != nil {
		return nil, fmt.Errorf("parse fleet config: %s", config.DescribeYAMLError(err, body))
	}
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("invalid fleet config: %w", err)
	}
	return c, nil
}

// LoadConfig reads and parses the fleet configuration file at path.
func LoadConfig(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load fleet config %s: %w", path, err)
	}
	c, err := ParseConfig(data)
	if err != nil {
		return nil, fmt.Errorf("load fleet config %s: %w", path, err)
	}
	return c, nil
}

// Validate reports every problem found, joined, each naming its field.
func (c *Config) Validate() error {
	var errs []error
	// The name is part of a router name in the database ("fleet:NAME"),
	// so it follows the routers' rule.
	if err := config.ValidateRouterName("name", c.Name); err != nil {
		errs = append(errs, err)
	}
	if c.Postgres == "" {
		errs = append(errs, errors.New("postgres: missing: the connection string of the role that owns the blocknat schema"))
	} else if err := config.ValidatePostgresDSN("postgres", c.Postgres); err != nil {
		errs = append(errs, err)
	}
	if !filepath.IsAbs(c.StateDir) {
		errs = append(errs, fmt.Errorf("state_dir: %q is not an absolute path", c.StateDir))
	}
	if !filepath.IsAbs(c.API.Socket) {
		errs = append(errs, fmt.Errorf("api.socket: %q is not an absolute path", c.API.Socket))
	}
	if t := c.API.TLS; t != nil {
		for _, f := range []struct{ field, v string }{{"listen", t.Listen}, {"cert", t.Cert}, {"key", t.Key}, {"client_ca", t.ClientCA}} {
			if f.v == "" {
				errs = append(errs, fmt.Errorf("api.tls.%s: required when api.tls is set", f.field))
			}
		}
	}
	if d := c.Roles.DHCP; len(d.UIDs) > 0 || len(d.CertNames) > 0 {
		errs = append(errs, errors.New("roles.dhcp: a fleet service takes no lease events (each router's DHCP hook reports to its router, which replicates them); remove it"))
	}
	if c.Audit.CheckpointEvery < 1 {
		errs = append(errs, errors.New("audit.checkpoint_every: must be at least 1"))
	}
	if c.Audit.CheckpointInterval <= 0 {
		errs = append(errs, errors.New("audit.checkpoint_interval: must be a positive duration"))
	}
	if c.Audit.Key != "" && !filepath.IsAbs(c.Audit.Key) {
		errs = append(errs, fmt.Errorf("audit.key: %q is not an absolute path", c.Audit.Key))
	}
	if c.Retention.Records <= 0 {
		errs = append(errs, errors.New("retention.records: must be a positive duration (default 365d); records cannot be kept forever"))
	}
	if c.Retention.Audit <= 0 {
		errs = append(errs, errors.New("retention.audit: must be a positive duration"))
	}
	if time.Duration(c.ReplicateMaxLag) <= 0 {
		errs = append(errs, errors.New("replicate_max_lag: must be a positive duration"))
	}
	if l := c.Metrics.Listen; l != "" {
		if err := config.CheckListen(l); err != nil {
			errs = append(errs, fmt.Errorf("metrics.listen: %q: %w", l, err))
		}
	}
	if time.Duration(c.StaleAfter) <= 0 {
		errs = append(errs, errors.New("stale_after: must be a positive duration (default 26h: every router replicates its epoch daily)"))
	}
	return errors.Join(errs...)
}
