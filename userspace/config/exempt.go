package config

import (
	"errors"
	"fmt"
	"net/netip"
)

// ExemptPrefixLimit is how many prefixes nat_exempt and inside.public may
// each hold: the size of the data plane's tries (enum exempt_limits in
// bpf/types.h; the loader refuses more).
const ExemptPrefixLimit = 1024

// Exemptions is the traffic that leaves untranslated: subscribers' packets
// to Destinations (nat_exempt), and everything from and to Public
// (inside.public), addresses of their own that the router only routes.
// Neither makes a mapping or a record.
type Exemptions struct {
	Destinations []netip.Prefix
	Public       []netip.Prefix
}

// Exemptions returns nat_exempt and inside.public, parsed.
func (c *Config) Exemptions() (Exemptions, error) {
	if c.parsed != nil {
		return c.parsed.exempt, nil
	}
	ex, errs := c.parseExemptions()
	return ex, errors.Join(errs...)
}

// parseExemptions parses both lists and refuses the overlaps that cannot
// work, naming both sides:
//   - a nat_exempt destination in the pool or in the inside prefixes: a
//     pool address is a subscriber's public side (hairpin), and an inside
//     address is never reached through an outside interface;
//   - an inside.public prefix in the inside prefixes (an address cannot be
//     both translated and left alone) or in the pool (the NAT's own
//     addresses);
//   - 0.0.0.0/0 in either, which would leave nothing translated.
func (c *Config) parseExemptions() (Exemptions, []error) {
	var (
		ex   Exemptions
		errs []error
	)
	inside, _ := parsePrefixes("inside.prefixes", c.Inside.Prefixes)
	pool, _ := parsePrefixes("outside.pool", c.Outside.Pool)
	lists := []struct {
		field   string
		entries []string
		out     *[]netip.Prefix
	}{
		{"nat_exempt", c.NATExempt, &ex.Destinations},
		{"inside.public", c.Inside.Public, &ex.Public},
	}
	for _, l := range lists {
		if len(l.entries) == 0 {
			continue
		}
		if len(l.entries) > ExemptPrefixLimit {
			errs = append(errs, fmt.Errorf("%s: %d prefixes, at most %d", l.field, len(l.entries), ExemptPrefixLimit))
			continue
		}
		parsed, perrs := parsePrefixes(l.field, l.entries)
		errs = append(errs, perrs...)
		for i, p := range parsed {
			if p.Bits() == 0 {
				errs = append(errs, fmt.Errorf("%s[%d]: %s would leave every packet untranslated", l.field, i, p))
				continue
			}
			clash := false
			for _, other := range []struct {
				field string
				list  []netip.Prefix
			}{{"outside.pool", pool}, {"inside.prefixes", inside}} {
				for j, q := range other.list {
					if p.Overlaps(q) {
						errs = append(errs, fmt.Errorf("%s[%d] %s overlaps %s[%d] %s: %s", l.field, i, p, other.field, j, q, overlapWhy(l.field, other.field)))
						clash = true
					}
				}
			}
			if !clash {
				*l.out = append(*l.out, p)
			}
		}
	}
	return ex, errs
}

func overlapWhy(field, other string) string {
	switch {
	case other == "outside.pool" && field == "nat_exempt":
		return "a pool address is a subscriber's public side, reached through the NAT (hairpin), never untranslated"
	case other == "outside.pool":
		return "the pool's addresses are the NAT's own and cannot be a subscriber's"
	case field == "nat_exempt":
		return "an inside address is never reached through an outside interface"
	}
	return "an address is either translated (inside.prefixes) or routed untouched (inside.public), not both"
}
