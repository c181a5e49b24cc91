package config

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const valid = `
inside:
  interfaces: [eth1, eth2]
  prefixes: [100.64.0.0/24, 100.64.8.0/30]
outside:
  interfaces: [eth0]
  pool: [198.51.100.10/31, 203.0.113.5]
ports:
  range: 2000-60000
  block_size: 200
xdp_mode: generic
state_dir: /srv/blocknat
bpffs_dir: /sys/fs/bpf/bn
max_flows: 200000
`

const minimal = `
inside: {interfaces: [eth1], prefixes: [100.64.0.0/24]}
outside: {interfaces: [eth0], pool: [198.51.100.10/31]}
`

func TestParseValid(t *testing.T) {
	c, err := Parse([]byte(valid))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if got := strings.Join(c.Inside.Interfaces, ","); got != "eth1,eth2" {
		t.Errorf("inside.interfaces = %s", got)
	}
	if c.XDPMode != "generic" || c.StateDir != "/srv/blocknat" || c.BPFFSDir != "/sys/fs/bpf/bn" || c.MaxFlows != 200000 {
		t.Errorf("scalars not decoded: %+v", c)
	}
	lo, hi, err := c.PortRange()
	if err != nil || lo != 2000 || hi != 60000 {
		t.Errorf("PortRange = %d, %d, %v", lo, hi, err)
	}
	m, err := c.Mapping()
	if err != nil {
		t.Fatalf("Mapping: %v", err)
	}
	// 256+4 subscribers on 3 addresses (the bare address is a /32).
	wantPool := []netip.Addr{netip.MustParseAddr("198.51.100.10"), netip.MustParseAddr("198.51.100.11"), netip.MustParseAddr("203.0.113.5")}
	if m.Subscribers != 260 || len(m.Pool) != 3 || m.Pool[2] != wantPool[2] || m.Ratio != 87 || m.BlockSize != 200 || m.PortLo != 2000 || m.PortHi != 60000 {
		t.Errorf("mapping = N=%d pool=%v C=%d B=%d range=%d-%d", m.Subscribers, m.Pool, m.Ratio, m.BlockSize, m.PortLo, m.PortHi)
	}
	// The second prefix continues the numbering after the first.
	if i, ok := m.SubscriberOf(netip.MustParseAddr("100.64.8.2")); !ok || i != 258 {
		t.Errorf("SubscriberOf(100.64.8.2) = %d, %v", i, ok)
	}
}

func TestParseDefaults(t *testing.T) {
	c, err := Parse([]byte(minimal))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	want := withDefaults()
	if c.Ports != want.Ports || c.XDPMode != DefaultXDPMode || c.StateDir != DefaultStateDir || c.BPFFSDir != DefaultBPFFSDir || c.MaxFlows != 256*504*3 {
		t.Fatalf("defaults not applied: %+v", c)
	}
	m, err := c.Mapping()
	if err != nil {
		t.Fatalf("Mapping: %v", err)
	}
	if m.PortLo != 1024 || m.PortHi != 65535 || m.BlockSize != 504 {
		t.Errorf("default range gives %d-%d B=%d", m.PortLo, m.PortHi, m.BlockSize)
	}
}

func TestDefaultYAML(t *testing.T) {
	c, err := Parse(Default)
	if err != nil {
		t.Fatalf("embedded default.yaml: %v", err)
	}
	if strings.Join(c.Inside.Interfaces, ",") != "bn-in0,bn-in1" || strings.Join(c.Outside.Interfaces, ",") != "bn-out" {
		t.Errorf("interfaces = %v / %v", c.Inside.Interfaces, c.Outside.Interfaces)
	}
	if c.StateDir == DefaultStateDir || c.BPFFSDir == DefaultBPFFSDir {
		t.Errorf("the demo must not share state or pins with a real install: %s, %s", c.StateDir, c.BPFFSDir)
	}
	if _, err := c.Mapping(); err != nil {
		t.Errorf("Mapping: %v", err)
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "blocknat.yaml")
	if err := os.WriteFile(path, []byte(minimal), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(path); err != nil {
		t.Fatalf("Load: %v", err)
	}
	missing := filepath.Join(dir, "missing.yaml")
	_, err := Load(missing)
	if !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), missing) {
		t.Fatalf("Load(missing) = %v, want ErrNotExist naming the path", err)
	}
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte(minimal+"xdp_mode: turbo\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(bad); err == nil || !strings.Contains(err.Error(), bad) || !strings.Contains(err.Error(), "xdp_mode") {
		t.Fatalf("Load(bad) = %v, want an error naming the path and xdp_mode", err)
	}
}

// edit returns minimal with the line holding old replaced.
func edit(old, new string) string {
	if !strings.Contains(minimal, old) {
		panic("edit: " + old + " not in minimal")
	}
	return strings.Replace(minimal, old, new, 1)
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want []string // every substring must appear in the error
	}{
		{"empty file", "", []string{"empty"}},
		{"only comments", "# nothing\n", []string{"empty"}},
		{"null document", "~\n", []string{"empty"}},
		{"two documents", minimal + "---\n" + minimal, []string{"more than one YAML document"}},
		{"not a mapping", "- eth0\n", []string{"mapping"}},
		{"syntax error", "inside: [eth0\n", []string{"line 1"}},
		{"unknown top-level field", minimal + "max_flow: 5000\n", []string{"max_flow", `unknown field "max_flow"`, "line 4"}},
		{"unknown nested field", minimal + "ports:\n  range: 1024-65535\n  blocksize: 8\n", []string{"ports.blocksize", "line 6"}},
		{"unknown field in flow mapping", edit("interfaces: [eth0]", "interface: [eth0]"), []string{"outside.interface"}},
		{"duplicate key", minimal + "xdp_mode: native\nxdp_mode: generic\n", []string{"xdp_mode", "already defined"}},
		{"wrong type", minimal + "max_flows: lots\n", []string{"max_flows", "line 4"}},
		{"negative block size", minimal + "ports: {block_size: -1}\n", []string{"ports.block_size"}},
		{"scalar where list expected", edit("interfaces: [eth1]", "interfaces: eth1"), []string{"inside.interfaces"}},
		{"no inside interface", edit("interfaces: [eth1]", "interfaces: []"), []string{"inside.interfaces: at least one"}},
		{"no outside interface", edit("interfaces: [eth0]", "interfaces: []"), []string{"outside.interfaces: at least one"}},
		{"interface name too long", edit("[eth1]", "[eth1, abcdefghijklmnop]"), []string{"inside.interfaces[1]", "15"}},
		{"interface name with slash", edit("[eth0]", "[eth/0]"), []string{"outside.interfaces[0]"}},
		{"interface name with colon", edit("[eth0]", "[eth0:1]"), []string{"outside.interfaces[0]"}},
		{"interface name with space", edit("[eth0]", `["eth 0"]`), []string{"outside.interfaces[0]"}},
		{"interface listed twice", edit("[eth1]", "[eth1, eth1]"), []string{"inside.interfaces[1]", "inside.interfaces[0]"}},
		{"interface inside and outside", edit("[eth0]", "[eth1]"), []string{"outside.interfaces[0]", "inside.interfaces[0]"}},
		{"bad prefix", edit("[100.64.0.0/24]", "[100.64.0.0/33]"), []string{"inside.prefixes[0]"}},
		{"IPv6 prefix", edit("[100.64.0.0/24]", `[100.64.0.0/24, "2001:db8::/64"]`), []string{"inside.prefixes[1]", "IPv4"}},
		{"host bits set", edit("[100.64.0.0/24]", "[100.64.0.1/24]"), []string{"inside.prefixes[0]", "100.64.0.0/24"}},
		{"no prefixes", edit("[100.64.0.0/24]", "[]"), []string{"inside.prefixes"}},
		{"overlapping prefixes", edit("[100.64.0.0/24]", "[100.64.0.0/24, 100.64.0.128/25]"), []string{"inside.prefixes[1]", "overlaps"}},
		{"bad pool entry", edit("[198.51.100.10/31]", "[198.51.100.10/31, pool-address]"), []string{"outside.pool[1]"}},
		{"duplicate pool address", edit("[198.51.100.10/31]", "[198.51.100.10/31, 198.51.100.11]"), []string{"outside.pool[1]"}},
		{"pool inside the inside prefixes", edit("[198.51.100.10/31]", "[100.64.0.9]"), []string{"outside.pool[0]", "inside.prefixes[0]"}},
		{"range not lo-hi", minimal + "ports: {range: 1024}\n", []string{"ports.range", "lo-hi"}},
		{"range with words", minimal + "ports: {range: low-high}\n", []string{"ports.range"}},
		{"range above 65535", minimal + "ports: {range: 1024-65536}\n", []string{"ports.range"}},
		{"range from port 0", minimal + "ports: {range: 0-65535}\n", []string{"ports.range", "port 0"}},
		{"lo above hi", minimal + "ports: {range: 5000-4000}\n", []string{"ports.range", "above its end"}},
		{"range too small for the ratio", minimal + "ports: {range: 1024-1100}\n", []string{"ports.range", "too few"}},
		{"block size too large", minimal + "ports: {block_size: 1000}\n", []string{"ports.block_size"}},
		{"bad xdp_mode", minimal + "xdp_mode: turbo\n", []string{"xdp_mode", "turbo"}},
		{"empty xdp_mode", minimal + "xdp_mode: ''\n", []string{"xdp_mode"}},
		{"relative state_dir", minimal + "state_dir: var/lib/blocknat\n", []string{"state_dir", "absolute"}},
		{"relative bpffs_dir", minimal + "bpffs_dir: blocknat\n", []string{"bpffs_dir", "absolute"}},
		{"max_flows too small", minimal + "max_flows: 1000\n", []string{"max_flows", "1000"}},
		{"max_flows too large", minimal + "max_flows: 16777217\n", []string{"max_flows"}},
		{"several problems reported together", minimal + "xdp_mode: turbo\nstate_dir: rel\nmax_flows: 1\n", []string{"xdp_mode", "state_dir", "max_flows"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse([]byte(tt.yaml))
			if err == nil {
				t.Fatalf("Parse succeeded: %+v", c)
			}
			for _, want := range tt.want {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not contain %q", err, want)
				}
			}
		})
	}
}

// TestValidateJoins checks Validate returns one wrapped error per problem,
// so callers can list them all.
func TestValidateJoins(t *testing.T) {
	c := withDefaults()
	c.Inside.Interfaces = []string{"eth1"}
	c.Outside.Interfaces = []string{"eth1"}
	c.Inside.Prefixes = []string{"bogus"}
	c.Outside.Pool = []string{"198.51.100.1"}
	c.XDPMode = "offload"
	err := c.Validate()
	joined, ok := err.(interface{ Unwrap() []error })
	if !ok {
		t.Fatalf("Validate() = %v, not a joined error", err)
	}
	fields := map[string]bool{}
	for _, e := range joined.Unwrap() {
		field, _, _ := strings.Cut(e.Error(), ":")
		fields[field] = true
	}
	for _, want := range []string{"outside.interfaces[0]", "inside.prefixes[0]", "xdp_mode"} {
		if !fields[want] {
			t.Errorf("no error names %s; got %v", want, err)
		}
	}
	if len(fields) != 3 {
		t.Errorf("want exactly 3 problems, got %d: %v", len(fields), err)
	}
}

// TestMaxFlowsDerived: max_flows omitted or 0 is derived from the mapping
// (subscribers × block size × 3 protocols); an explicit value is kept when
// it holds that, and refused, naming the numbers, when it does not.
func TestMaxFlowsDerived(t *testing.T) {
	for _, tc := range []struct {
		name, extra string
		want        uint32
		wantErr     string
	}{
		{"omitted", "", 387072, ""},
		{"zero", "max_flows: 0\n", 387072, ""},
		{"exactly enough", "max_flows: 387072\n", 387072, ""},
		{"more than enough", "max_flows: 1000000\n", 1000000, ""},
		{"the old default", "max_flows: 262144\n", 0, "max_flows: 262144 cannot hold 256 subscribers × 504 ports × 3 protocols = 387072"},
		{"smaller blocks need less", "ports: {range: 1024-65535, block_size: 64}\n", 256 * 64 * 3, ""},
		{"a mapping no table holds", "", 0, "more than 16777216"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := minimal + tc.extra
			if tc.name == "a mapping no table holds" {
				cfg = "inside: {interfaces: [eth1], prefixes: [100.64.0.0/12]}\noutside: {interfaces: [eth0], pool: [198.51.100.0/24]}\n"
			}
			c, err := Parse([]byte(cfg))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Parse: %v, want an error with %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.MaxFlows != tc.want {
				t.Errorf("max_flows %d, want %d", c.MaxFlows, tc.want)
			}
		})
	}
}
