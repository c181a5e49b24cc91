package config

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/blocknat/blocknat/userspace/mapping"
)

// Overflow is ports.overflow: a pool of extra port blocks, lent to a
// subscriber whose own block has no free port (RFC 7422's dynamic
// allocation; every vendor's "port block allocation" has one). A claimed
// block is recorded like a subscriber's own and released after
// timeouts.block_idle without a mapping.
type Overflow struct {
	// Pool are the addresses whose ports.range is cut into overflow
	// blocks; none may be in outside.pool.
	Pool []string `yaml:"pool"`
	// BlockSize is the ports of each overflow block; 0 takes the size of
	// the subscribers' own blocks.
	BlockSize uint16 `yaml:"block_size"`
	// MaxBlocks is how many overflow blocks one subscriber may hold.
	MaxBlocks uint32 `yaml:"max_blocks"`
}

// DefaultOverflowMaxBlocks is ports.overflow.max_blocks when absent.
const DefaultOverflowMaxBlocks = 1

// UnmarshalYAML fills the defaults before decoding, so that a field left
// out takes its default and one written, even as 0, is checked as written.
func (o *Overflow) UnmarshalYAML(unmarshal func(any) error) error {
	type plain Overflow
	p := plain{MaxBlocks: DefaultOverflowMaxBlocks}
	if err := unmarshal(&p); err != nil {
		return err
	}
	*o = Overflow(p)
	return nil
}

// OverflowLayout is ports.overflow's layout; nil when it is off.
func (c *Config) OverflowLayout() (*mapping.Overflow, error) {
	if c.parsed != nil {
		return c.parsed.overflow, nil
	}
	m, errs := c.buildMapping()
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	o, errs := c.parseOverflow(m)
	return o, errors.Join(errs...)
}

// parseOverflow builds the overflow layout over ports.range, and refuses a
// pool address that is also a pool address, an inside address, a public
// customer's or an exempt destination: each would be two things at once.
func (c *Config) parseOverflow(m *mapping.Mapping) (*mapping.Overflow, []error) {
	ov := c.Ports.Overflow
	if ov == nil {
		return nil, nil
	}
	pool, errs := parsePrefixes("ports.overflow.pool", ov.Pool)
	if len(errs) > 0 || m == nil {
		return nil, errs
	}
	others := []struct {
		field   string
		entries []string
	}{{"outside.pool", c.Outside.Pool}, {"inside.prefixes", c.Inside.Prefixes}, {"inside.public", c.Inside.Public}, {"nat_exempt", c.NATExempt}}
	for _, o := range others {
		list, _ := parsePrefixesOptional(o.field, o.entries)
		for i, p := range pool {
			for j, q := range list {
				if p.Overlaps(q) {
					errs = append(errs, fmt.Errorf("ports.overflow.pool[%d] %s overlaps %s[%d] %s: an overflow address is lent to subscribers and can be nothing else", i, p, o.field, j, q))
				}
			}
		}
	}
	if len(errs) > 0 {
		return nil, errs
	}
	size := ov.BlockSize
	if size == 0 {
		size = m.BlockSize
	}
	o, err := mapping.NewOverflow(pool, m.PortLo, m.PortHi, size, ov.MaxBlocks)
	if err != nil {
		return nil, []error{err}
	}
	return o, nil
}

// parsePrefixesOptional is parsePrefixes for a list that may be empty.
func parsePrefixesOptional(field string, entries []string) ([]netip.Prefix, []error) {
	if len(entries) == 0 {
		return nil, nil
	}
	return parsePrefixes(field, entries)
}
