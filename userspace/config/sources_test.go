package config

import (
	"net/netip"
	"strings"
	"testing"
)

func TestSourceRules(t *testing.T) {
	c, err := Parse([]byte(`
inside:
  interfaces: [eth1, eth2]
  prefixes: [100.64.0.0/24]
  interface_prefixes: {eth1: [100.64.0.0/25], eth2: [100.64.0.128/25]}
  static_bindings: [{address: 100.64.0.200, mac: "02:00:00:00:00:c8"}]
  require_binding: [eth1]
outside: {interfaces: [eth0], pool: [198.51.100.10/31]}
`))
	if err != nil {
		t.Fatal(err)
	}
	r, err := c.SourceRules()
	if err != nil {
		t.Fatal(err)
	}
	if got := r.InterfacePrefixes["eth2"]; len(got) != 1 || got[0] != netip.MustParsePrefix("100.64.0.128/25") {
		t.Errorf("eth2 prefixes %v", got)
	}
	if mac := r.Static[netip.MustParseAddr("100.64.0.200")]; mac.String() != "02:00:00:00:00:c8" {
		t.Errorf("static binding %v", r.Static)
	}
	if !r.RequireBinding["eth1"] || r.RequireBinding["eth2"] {
		t.Errorf("require_binding %v", r.RequireBinding)
	}
	// Nothing configured: no rules, today's behaviour.
	c, err = Parse([]byte(minimal))
	if err != nil {
		t.Fatal(err)
	}
	if r, err := c.SourceRules(); err != nil || len(r.InterfacePrefixes)+len(r.Static)+len(r.RequireBinding) != 0 {
		t.Errorf("minimal: %+v %v", r, err)
	}
}

func TestSourceRulesRefused(t *testing.T) {
	base := "outside: {interfaces: [eth0], pool: [198.51.100.10/31]}\ninside:\n  interfaces: [eth1]\n  prefixes: [100.64.0.0/24]\n"
	for _, tc := range []struct{ extra, want string }{
		{"  interface_prefixes: {eth9: [100.64.0.0/25]}\n", "inside.interface_prefixes.eth9: eth9 is not one of inside.interfaces"},
		{"  interface_prefixes: {eth1: [10.0.0.0/8]}\n", "inside.interface_prefixes.eth1[0]: 10.0.0.0/8 lies outside inside.prefixes"},
		{"  interface_prefixes: {eth1: [100.64.0.1/25]}\n", "inside.interface_prefixes.eth1[0]: \"100.64.0.1/25\" has host bits set"},
		{"  static_bindings: [{address: 100.64.1.5, mac: \"02:00:00:00:00:01\"}]\n", "inside.static_bindings[0].address: 100.64.1.5 lies outside inside.prefixes"},
		{"  static_bindings: [{address: 100.64.0.5, mac: \"zz\"}]\n", "inside.static_bindings[0].mac"},
		{"  static_bindings: [{address: 100.64.0.5, mac: \"01:00:5e:00:00:01\"}]\n", "multicast"},
		{"  static_bindings: [{address: 100.64.0.5, mac: \"02:00:00:00:00:01\"}, {address: 100.64.0.5, mac: \"02:00:00:00:00:02\"}]\n", "inside.static_bindings[1].address: 100.64.0.5 is bound twice"},
		{"  require_binding: [eth0]\n", "inside.require_binding[0]: eth0 is not one of inside.interfaces"},
		{"  static_binding: []\n", "static_binding"},
	} {
		_, err := Parse([]byte(base + tc.extra))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want %q", tc.extra, err, tc.want)
		}
	}
}
