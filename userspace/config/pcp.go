package config

import (
	"fmt"
	"math"
	"time"

	"github.com/blocknat/blocknat/userspace/mapping"
)

// PCP is the pcp section: the Port Control Protocol server (RFC 6887),
// which also answers NAT-PMP (RFC 6886), through which a subscriber's
// home router opens inbound ports. A subscriber is only ever given ports
// of its own block, so the records and lookups are those of traffic.
type PCP struct {
	// Enabled starts the server on every inside interface (default
	// false: nobody can open a port).
	Enabled bool `yaml:"enabled"`
	// MaxLifetime and MinLifetime bound the lifetime a mapping is
	// granted; a request for more or less is clamped (RFC 6887 §15). The
	// wire carries whole seconds, so both must be whole seconds.
	MaxLifetime Duration `yaml:"max_lifetime"`
	MinLifetime Duration `yaml:"min_lifetime"`
	// MaxMappings is how many explicit mappings one subscriber may hold
	// at once (RFC 6887 §17.2's quota), 1 to MaxPCPMappings and no more
	// than the ports of its block.
	MaxMappings int `yaml:"max_mappings"`
	// Rate and Burst are a token bucket per subscriber: requests a
	// second, and how many may come at once. A request beyond them is
	// answered NO_RESOURCES without being processed.
	Rate  float64 `yaml:"rate"`
	Burst int     `yaml:"burst"`
}

// Defaults of the pcp section.
const (
	// DefaultPCPMaxLifetime is two hours: long enough that a client's
	// refreshes (at half the lifetime) cost nothing, short enough that a
	// mapping whose router went away without deleting it ends the same
	// evening.
	DefaultPCPMaxLifetime = 2 * time.Hour
	// DefaultPCPMinLifetime is the 120 seconds RFC 6887 §15 recommends
	// as the least lifetime a server assigns.
	DefaultPCPMinLifetime = 2 * time.Minute
	DefaultPCPMaxMappings = 16
	DefaultPCPRate        = 5.0
	DefaultPCPBurst       = 10
)

// MaxPCPMappings bounds pcp.max_mappings: the server keeps each mapping in
// memory and in the kernel's tables, and a subscriber needing more is
// better served by a port forward the operator configures.
const MaxPCPMappings = 1024

// maxPCPLifetime is the largest lifetime the 32-bit Lifetime field of a
// PCP response holds (RFC 6887 §7.2).
const maxPCPLifetime = time.Duration(math.MaxUint32) * time.Second

func pcpDefaults() PCP {
	return PCP{
		MaxLifetime: Duration(DefaultPCPMaxLifetime),
		MinLifetime: Duration(DefaultPCPMinLifetime),
		MaxMappings: DefaultPCPMaxMappings,
		Rate:        DefaultPCPRate,
		Burst:       DefaultPCPBurst,
	}
}

// UnmarshalYAML fills the defaults before decoding, so that a field left
// out takes its default and one written, even as 0, is checked as written.
func (p *PCP) UnmarshalYAML(unmarshal func(any) error) error {
	type plain PCP
	v := plain(pcpDefaults())
	if err := unmarshal(&v); err != nil {
		return err
	}
	*p = PCP(v)
	return nil
}

// PCPSettings is the pcp section with its defaults, also when the section
// is absent or the Config was built without Parse: a parsed configuration
// never holds a zero limit, so a zero here means "not set".
func (c *Config) PCPSettings() PCP {
	p, d := c.PCP, pcpDefaults()
	if p.MaxLifetime == 0 {
		p.MaxLifetime = d.MaxLifetime
	}
	if p.MinLifetime == 0 {
		p.MinLifetime = d.MinLifetime
	}
	if p.MaxMappings == 0 {
		p.MaxMappings = d.MaxMappings
	}
	if p.Rate == 0 {
		p.Rate = d.Rate
	}
	if p.Burst == 0 {
		p.Burst = d.Burst
	}
	return p
}

// validatePCP checks the limits whether or not the server is enabled, so
// that turning it on never reveals an error written long before; only the
// comparison with the block size waits for enabled, since a small block
// must not make a configuration without PCP invalid.
func (c *Config) validatePCP(m *mapping.Mapping) []error {
	var errs []error
	p := c.PCP
	for _, l := range []struct {
		field string
		v     Duration
	}{{"pcp.max_lifetime", p.MaxLifetime}, {"pcp.min_lifetime", p.MinLifetime}} {
		switch v := time.Duration(l.v); {
		case v <= 0:
			errs = append(errs, fmt.Errorf("%s: must be a positive duration", l.field))
		case v%time.Second != 0:
			errs = append(errs, fmt.Errorf("%s: %s is not whole seconds, which is all a PCP lifetime carries", l.field, l.v))
		case v > maxPCPLifetime:
			errs = append(errs, fmt.Errorf("%s: %s is more than a PCP lifetime holds (%d seconds)", l.field, l.v, uint32(math.MaxUint32)))
		}
	}
	if p.MinLifetime > 0 && p.MaxLifetime > 0 && p.MinLifetime > p.MaxLifetime {
		errs = append(errs, fmt.Errorf("pcp.min_lifetime: %s is more than pcp.max_lifetime %s", p.MinLifetime, p.MaxLifetime))
	}
	if p.MaxMappings < 1 || p.MaxMappings > MaxPCPMappings {
		errs = append(errs, fmt.Errorf("pcp.max_mappings: %d, want 1 to %d", p.MaxMappings, MaxPCPMappings))
	} else if p.Enabled && m != nil && p.MaxMappings > int(m.BlockSize) {
		errs = append(errs, fmt.Errorf("pcp.max_mappings: %d is more than the %d ports of a subscriber's block (ports.block_size), the only ports PCP gives out", p.MaxMappings, m.BlockSize))
	}
	// NaN fails every comparison, so "not above 0" refuses it too.
	if !(p.Rate > 0) || math.IsInf(p.Rate, 0) {
		errs = append(errs, fmt.Errorf("pcp.rate: %v, want a number of requests a second above 0", p.Rate))
	}
	if p.Burst < 1 {
		errs = append(errs, fmt.Errorf("pcp.burst: %d, want at least 1", p.Burst))
	}
	return errs
}
