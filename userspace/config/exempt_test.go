package config

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func TestExemptions(t *testing.T) {
	c, err := Parse([]byte(`
inside:
  interfaces: [eth1]
  prefixes: [100.64.0.0/24]
  public: [192.0.2.128/25, 192.0.2.7]
outside: {interfaces: [eth0], pool: [198.51.100.10/31]}
nat_exempt: [203.0.113.53, 10.0.0.0/8]
`))
	if err != nil {
		t.Fatal(err)
	}
	ex, err := c.Exemptions()
	if err != nil {
		t.Fatal(err)
	}
	wantDst := []netip.Prefix{netip.MustParsePrefix("203.0.113.53/32"), netip.MustParsePrefix("10.0.0.0/8")}
	wantPub := []netip.Prefix{netip.MustParsePrefix("192.0.2.128/25"), netip.MustParsePrefix("192.0.2.7/32")}
	if !slices.Equal(ex.Destinations, wantDst) || !slices.Equal(ex.Public, wantPub) {
		t.Errorf("exemptions %+v, want destinations %v and public %v", ex, wantDst, wantPub)
	}
	c, err = Parse([]byte(minimal))
	if err != nil {
		t.Fatal(err)
	}
	if ex, err := c.Exemptions(); err != nil || len(ex.Destinations)+len(ex.Public) != 0 {
		t.Errorf("minimal: %+v %v", ex, err)
	}
}

// TestExemptionsRefused: an exemption that cannot work is refused, naming
// both of the overlapping entries and why.
func TestExemptionsRefused(t *testing.T) {
	base := "outside: {interfaces: [eth0], pool: [198.51.100.8/29]}\ninside:\n  interfaces: [eth1]\n  prefixes: [100.64.0.0/24, 10.1.0.0/16]\n"
	for _, tc := range []struct{ extra, want string }{
		{"nat_exempt: [198.51.100.0/24]\n", "nat_exempt[0] 198.51.100.0/24 overlaps outside.pool[0] 198.51.100.8/29: a pool address is a subscriber's public side"},
		{"nat_exempt: [203.0.113.53, 10.1.2.0/24]\n", "nat_exempt[1] 10.1.2.0/24 overlaps inside.prefixes[1] 10.1.0.0/16: an inside address is never reached through an outside interface"},
		{"nat_exempt: [0.0.0.0/0]\n", "nat_exempt[0]: 0.0.0.0/0 would leave every packet untranslated"},
		{"nat_exempt: [203.0.113.1/24]\n", "nat_exempt[0]: \"203.0.113.1/24\" has host bits set"},
		{"nat_exempt: [2001:db8::1]\n", "nat_exempt[0]: \"2001:db8::1\" is not IPv4"},
		{"  public: [100.64.0.128/25]\n", "inside.public[0] 100.64.0.128/25 overlaps inside.prefixes[0] 100.64.0.0/24: an address is either translated (inside.prefixes) or routed untouched (inside.public), not both"},
		{"  public: [198.51.100.12/32]\n", "inside.public[0] 198.51.100.12/32 overlaps outside.pool[0] 198.51.100.8/29: the pool's addresses are the NAT's own"},
		{"  publics: [192.0.2.0/24]\n", "publics"},
	} {
		_, err := Parse([]byte(base + tc.extra))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want %q", tc.extra, err, tc.want)
		}
	}
	var many strings.Builder
	many.WriteString("nat_exempt: [")
	for i := range ExemptPrefixLimit + 1 {
		if i > 0 {
			many.WriteString(", ")
		}
		many.WriteString(netip.AddrFrom4([4]byte{203, 0, byte(i >> 8), byte(i)}).String())
	}
	many.WriteString("]\n")
	if _, err := Parse([]byte(base + many.String())); err == nil || !strings.Contains(err.Error(), "nat_exempt: 1025 prefixes, at most 1024") {
		t.Errorf("%d exempt prefixes: %v", ExemptPrefixLimit+1, err)
	}
}
