package config

import (
	"strings"
	"testing"
	"time"
)

const pcpBase = "outside: {interfaces: [eth0], pool: [198.51.100.10/31]}\ninside: {interfaces: [eth1], prefixes: [100.64.0.0/24]}\n"

func TestPCPDefaults(t *testing.T) {
	want := PCP{
		Enabled:     false,
		MaxLifetime: Duration(2 * time.Hour),
		MinLifetime: Duration(2 * time.Minute),
		MaxMappings: 16,
		Rate:        5,
		Burst:       10,
	}
	for _, section := range []string{"", "pcp:\n", "pcp: {}\n"} {
		c, err := Parse([]byte(pcpBase + section))
		if err != nil {
			t.Fatalf("%q: %v", section, err)
		}
		if got := c.PCPSettings(); got != want {
			t.Errorf("%q: settings %+v, want %+v", section, got, want)
		}
	}
	// Enabling it keeps the other defaults.
	c, err := Parse([]byte(pcpBase + "pcp: {enabled: true}\n"))
	if err != nil {
		t.Fatal(err)
	}
	on := want
	on.Enabled = true
	if got := c.PCPSettings(); got != on {
		t.Errorf("enabled: settings %+v, want %+v", got, on)
	}
	// A Config built in code, never parsed, still hands out the defaults.
	if got := (&Config{}).PCPSettings(); got != want {
		t.Errorf("unparsed config: settings %+v, want %+v", got, want)
	}
}

func TestPCPFields(t *testing.T) {
	// Four subscribers an address: blocks of 16128 ports.
	roomy := "outside: {interfaces: [eth0], pool: [198.51.100.0/26]}\ninside: {interfaces: [eth1], prefixes: [100.64.0.0/24]}\n"
	c, err := Parse([]byte(roomy + "pcp:\n  enabled: true\n  max_lifetime: 24h\n  min_lifetime: 1m\n  max_mappings: 1024\n  rate: 0.5\n  burst: 1\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := PCP{Enabled: true, MaxLifetime: Duration(24 * time.Hour), MinLifetime: Duration(time.Minute), MaxMappings: 1024, Rate: 0.5, Burst: 1}
	if got := c.PCPSettings(); got != want {
		t.Errorf("settings %+v, want %+v", got, want)
	}
	// Equal bounds grant one lifetime, whatever is asked.
	if _, err := Parse([]byte(pcpBase + "pcp: {min_lifetime: 10m, max_lifetime: 10m}\n")); err != nil {
		t.Errorf("min_lifetime = max_lifetime: %v", err)
	}
}

func TestPCPRefused(t *testing.T) {
	for _, tc := range []struct{ pcp, want string }{
		{"{min_lifetime: 0s}", "pcp.min_lifetime: must be a positive duration"},
		{"{min_lifetime: -1m}", "pcp.min_lifetime: must be a positive duration"},
		{"{max_lifetime: 0s}", "pcp.max_lifetime: must be a positive duration"},
		{"{min_lifetime: 3h}", "pcp.min_lifetime: 3h0m0s is more than pcp.max_lifetime 2h0m0s"},
		{"{min_lifetime: 10m, max_lifetime: 5m}", "pcp.min_lifetime: 10m0s is more than pcp.max_lifetime 5m0s"},
		{"{min_lifetime: 2500ms}", "pcp.min_lifetime: 2.5s is not whole seconds"},
		{"{max_lifetime: 100000d}", "pcp.max_lifetime: 100000d is more than a PCP lifetime holds"},
		{"{max_lifetime: soon}", "pcp.max_lifetime"},
		{"{max_mappings: 0}", "pcp.max_mappings: 0, want 1 to 1024"},
		{"{max_mappings: -3}", "pcp.max_mappings: -3, want 1 to 1024"},
		{"{max_mappings: 1025}", "pcp.max_mappings: 1025, want 1 to 1024"},
		{"{max_mappings: many}", "pcp.max_mappings: many is not a whole number from 1 to 1024"},
		{"{rate: 0}", "pcp.rate: 0, want a number of requests a second above 0"},
		{"{rate: -1}", "pcp.rate: -1, want"},
		{"{rate: .nan}", "pcp.rate: NaN, want"},
		{"{rate: .inf}", "pcp.rate: +Inf, want"},
		{"{burst: 0}", "pcp.burst: 0, want at least 1"},
		{"{burst: -1}", "pcp.burst: -1, want at least 1"},
		{"{enabled: yes please}", "pcp.enabled"},
		{"{lifetime: 1h}", `pcp.lifetime: unknown field "lifetime"`},
		{"{enable: true}", `pcp.enable: unknown field "enable"`},
	} {
		_, err := Parse([]byte(pcpBase + "pcp: " + tc.pcp + "\n"))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("pcp: %s: error %v, want %q", tc.pcp, err, tc.want)
		}
	}
}

// TestPCPMaxMappingsWithinBlock: PCP gives out only ports of the
// subscriber's own block, so a quota above its size is refused once the
// server is on, and a small block does not break a configuration that
// leaves PCP off.
func TestPCPMaxMappingsWithinBlock(t *testing.T) {
	small := pcpBase + "ports: {range: 1024-65535, block_size: 8}\n"
	if _, err := Parse([]byte(small)); err != nil {
		t.Fatalf("8-port blocks without pcp: %v", err)
	}
	_, err := Parse([]byte(small + "pcp: {enabled: true}\n"))
	if want := "pcp.max_mappings: 16 is more than the 8 ports of a subscriber's block (ports.block_size)"; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("enabled with 8-port blocks: error %v, want %q", err, want)
	}
	if _, err := Parse([]byte(small + "pcp: {enabled: true, max_mappings: 8}\n")); err != nil {
		t.Errorf("max_mappings equal to the block size: %v", err)
	}
	// A derived block size counts too: 128 subscribers an address cut
	// the range into blocks of 504 ports.
	_, err = Parse([]byte(pcpBase + "pcp: {enabled: true, max_mappings: 505}\n"))
	if want := "pcp.max_mappings: 505 is more than the 504 ports"; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("505 mappings in derived 504-port blocks: error %v, want %q", err, want)
	}
	if _, err := Parse([]byte(pcpBase + "pcp: {enabled: true, max_mappings: 504}\n")); err != nil {
		t.Errorf("504 mappings in derived 504-port blocks: %v", err)
	}
}
