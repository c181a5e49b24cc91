package config

import (
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Duration is a YAML duration: Go syntax ("300s", "5m", "2h4m") plus whole
// days ("365d"), because retention periods are set in days by law.
type Duration time.Duration

// UnmarshalText accepts what ParseDuration accepts.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := ParseDuration(string(b))
	if err != nil {
		return badValueError{value: string(b), err: err}
	}
	*d = Duration(v)
	return nil
}

// MarshalText writes days when the value is whole days.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

func (d Duration) String() string {
	v := time.Duration(d)
	if v > 0 && v%(24*time.Hour) == 0 {
		return strconv.FormatInt(int64(v/(24*time.Hour)), 10) + "d"
	}
	return v.String()
}

// badValueError is a scalar the decoder reported without a position;
// Parse finds the field that holds the value so the error can name it.
type badValueError struct {
	value string
	err   error
}

func (e badValueError) Error() string { return e.err.Error() }
func (e badValueError) Unwrap() error { return e.err }

// ParseDuration parses "365d" or any Go duration.
func ParseDuration(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.ParseUint(days, 10, 32)
		if err != nil {
			return 0, fmt.Errorf("%q: want whole days like 365d", s)
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%q: want a duration like 300s, 5m or 365d", s)
	}
	return v, nil
}

// Retention says how long records and audit entries are kept.
type Retention struct {
	// Records is how long block records are kept: one year in Denmark
	// (retsplejeloven § 786 f), which is the default. It cannot be turned
	// off: zero or a negative value is refused, since keeping records
	// forever is what GDPR art. 5(1)(c) forbids.
	Records Duration `yaml:"records"`
	// Audit is how long audit entries are kept (default 365d).
	Audit Duration `yaml:"audit"`
}

// Timeouts are how long an idle mapping lives, by kind (RFC 4787 REQ-5,
// RFC 5382 REQ-5, RFC 5508), and how long an idle block stays active.
type Timeouts struct {
	UDP            Duration `yaml:"udp"`
	TCPEstablished Duration `yaml:"tcp_established"`
	TCPTransitory  Duration `yaml:"tcp_transitory"`
	ICMP           Duration `yaml:"icmp"`
	// BlockIdle: a block whose last flow expired this long ago is
	// released, which closes its record.
	BlockIdle Duration `yaml:"block_idle"`
	// UDPInboundRefresh lets inbound packets keep a UDP mapping alive
	// (RFC 4787 REQ-6 allows it; the default, false, lets only the
	// subscriber's own packets do so).
	UDPInboundRefresh bool `yaml:"udp_inbound_refresh"`
}

// Filtering behaviours (RFC 4787 REQ-8).
const (
	FilteringEndpointIndependent = "endpoint-independent"
	FilteringAddressPort         = "address-and-port-dependent"
)

// API is where the query API listens.
type API struct {
	Socket string `yaml:"socket"`
	TLS    *TLS   `yaml:"tls"`
}

// TLS is the optional TCP listener; operators are known by their client
// certificate's subject common name.
type TLS struct {
	Listen   string `yaml:"listen"`
	Cert     string `yaml:"cert"`
	Key      string `yaml:"key"`
	ClientCA string `yaml:"client_ca"`
}

// Members grants a role to local users (by uid, as SO_PEERCRED reports
// them) and to TLS clients (by certificate common name).
type Members struct {
	UIDs      []uint32 `yaml:"uids"`
	CertNames []string `yaml:"cert_names"`
}

// Roles maps operators to what they may do: investigators look up,
// auditors read and verify the audit log, admins read status, and the DHCP
// server's hook (dhcp) adds lease events and nothing else.
type Roles struct {
	Investigator Members `yaml:"investigator"`
	Auditor      Members `yaml:"auditor"`
	Admin        Members `yaml:"admin"`
	DHCP         Members `yaml:"dhcp"`
}

// Leases configures the DHCP lease history.
type Leases struct {
	// Spool is the directory where `blocknat lease` queues events the
	// agent could not take; the agent delivers it when it starts. It must
	// be writable by the DHCP server's hook user.
	Spool string `yaml:"spool"`
}

// Audit configures the audit log's signed checkpoints.
type Audit struct {
	CheckpointEvery    int      `yaml:"checkpoint_every"`
	CheckpointInterval Duration `yaml:"checkpoint_interval"`
	// Key is the ed25519 signing key, created on first start.
	Key string `yaml:"key"`
}

// Intervals are how often the agent's periodic work runs.
type Intervals struct {
	Reconcile Duration `yaml:"reconcile"`
	Sweep     Duration `yaml:"sweep"`
	Retention Duration `yaml:"retention"`
}

// Defaults of the agent's optional fields.
const (
	DefaultUDPTimeout            = 300 * time.Second
	DefaultTCPEstablishedTimeout = 7440 * time.Second
	DefaultTCPTransitoryTimeout  = 240 * time.Second
	DefaultICMPTimeout           = 60 * time.Second
	DefaultBlockIdle             = 300 * time.Second
	DefaultRecordRetention       = 365 * 24 * time.Hour
	DefaultAuditRetention        = 365 * 24 * time.Hour
	DefaultSocket                = "/run/blocknat/api.sock"
	DefaultLeaseSpool            = "/var/spool/blocknat/leases"
	DefaultCheckpointEvery       = 100
	DefaultCheckpointInterval    = 5 * time.Minute
	DefaultReconcileInterval     = 60 * time.Second
	DefaultSweepInterval         = 10 * time.Second
	DefaultRetentionInterval     = 24 * time.Hour
)

func agentDefaults(c *Config) {
	c.Retention = Retention{Records: Duration(DefaultRecordRetention), Audit: Duration(DefaultAuditRetention)}
	c.Timeouts = Timeouts{
		UDP:            Duration(DefaultUDPTimeout),
		TCPEstablished: Duration(DefaultTCPEstablishedTimeout),
		TCPTransitory:  Duration(DefaultTCPTransitoryTimeout),
		ICMP:           Duration(DefaultICMPTimeout),
		BlockIdle:      Duration(DefaultBlockIdle),
	}
	c.API.Socket = DefaultSocket
	c.Leases.Spool = DefaultLeaseSpool
	c.Filtering = FilteringEndpointIndependent
	c.Audit.CheckpointEvery = DefaultCheckpointEvery
	c.Audit.CheckpointInterval = Duration(DefaultCheckpointInterval)
	c.Intervals = Intervals{
		Reconcile: Duration(DefaultReconcileInterval),
		Sweep:     Duration(DefaultSweepInterval),
		Retention: Duration(DefaultRetentionInterval),
	}
}

// AuditKeyPath is the signing key's path, defaulting into state_dir.
func (c *Config) AuditKeyPath() string {
	if c.Audit.Key != "" {
		return c.Audit.Key
	}
	return filepath.Join(c.StateDir, "audit.key")
}

func (c *Config) validateAgent() []error {
	var errs []error
	if c.Retention.Records <= 0 {
		errs = append(errs, errors.New("retention.records: must be a positive duration (default 365d); records cannot be kept forever"))
	}
	if c.Retention.Audit <= 0 {
		errs = append(errs, errors.New("retention.audit: must be a positive duration"))
	}
	// RFC 4787 REQ-5 (UDP >= 2 min), RFC 5382 REQ-5 (established >= 2h4m),
	// transitory >= 4 min; ICMP has no floor but must be positive.
	for _, tm := range []struct {
		field string
		v     Duration
		min   time.Duration
	}{
		{"timeouts.udp", c.Timeouts.UDP, 0},
		{"timeouts.tcp_established", c.Timeouts.TCPEstablished, 0},
		{"timeouts.tcp_transitory", c.Timeouts.TCPTransitory, 0},
		{"timeouts.icmp", c.Timeouts.ICMP, 0},
		{"timeouts.block_idle", c.Timeouts.BlockIdle, 0},
		{"intervals.reconcile", c.Intervals.Reconcile, 0},
		{"intervals.sweep", c.Intervals.Sweep, 0},
		{"intervals.retention", c.Intervals.Retention, 0},
		{"audit.checkpoint_interval", c.Audit.CheckpointInterval, 0},
	} {
		if time.Duration(tm.v) <= tm.min {
			errs = append(errs, fmt.Errorf("%s: must be a positive duration", tm.field))
		}
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
	if c.Filtering != FilteringEndpointIndependent && c.Filtering != FilteringAddressPort {
		errs = append(errs, fmt.Errorf("filtering: %q is not %q or %q", c.Filtering, FilteringEndpointIndependent, FilteringAddressPort))
	}
	if c.Audit.CheckpointEvery < 1 {
		errs = append(errs, errors.New("audit.checkpoint_every: must be at least 1"))
	}
	if !filepath.IsAbs(c.Leases.Spool) {
		errs = append(errs, fmt.Errorf("leases.spool: %q is not an absolute path", c.Leases.Spool))
	}
	if c.Audit.Key != "" && !filepath.IsAbs(c.Audit.Key) {
		errs = append(errs, fmt.Errorf("audit.key: %q is not an absolute path", c.Audit.Key))
	}
	return errs
}
