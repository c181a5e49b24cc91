package config

import (
	"strings"
	"testing"
)

func TestOverflowConfig(t *testing.T) {
	base := "outside: {interfaces: [eth0], pool: [198.51.100.10/31]}\ninside: {interfaces: [eth1], prefixes: [100.64.0.0/24]}\n"
	c, err := Parse([]byte(base + "ports: {range: 1024-65535, overflow: {pool: [203.0.113.0/30]}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	o, err := c.OverflowLayout()
	if err != nil || o == nil {
		t.Fatalf("overflow layout %+v, %v", o, err)
	}
	m, _ := c.Mapping()
	// Defaults: the own blocks' size, one block a subscriber.
	if o.BlockSize != m.BlockSize || o.MaxBlocks != 1 || len(o.Pool) != 4 || o.PerAddr != 64512/uint32(m.BlockSize) {
		t.Errorf("layout %+v with own block size %d", o, m.BlockSize)
	}
	c, err = Parse([]byte(base + "ports: {overflow: {pool: [203.0.113.9], block_size: 1000, max_blocks: 3}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if o, _ := c.OverflowLayout(); o.BlockSize != 1000 || o.MaxBlocks != 3 || o.Count() != 64 {
		t.Errorf("layout %+v, want 64 blocks of 1000 ports, 3 a subscriber", o)
	}
	c, _ = Parse([]byte(base))
	if o, err := c.OverflowLayout(); o != nil || err != nil {
		t.Errorf("without ports.overflow: %+v, %v", o, err)
	}
}

func TestOverflowConfigRefused(t *testing.T) {
	base := "outside: {interfaces: [eth0], pool: [198.51.100.8/29]}\ninside:\n  interfaces: [eth1]\n  prefixes: [100.64.0.0/24]\n  public: [192.0.2.128/25]\nnat_exempt: [203.0.113.53]\n"
	for _, tc := range []struct{ ports, want string }{
		{"{overflow: {pool: [198.51.100.12]}}", "ports.overflow.pool[0] 198.51.100.12/32 overlaps outside.pool[0] 198.51.100.8/29"},
		{"{overflow: {pool: [100.64.0.0/30]}}", "ports.overflow.pool[0] 100.64.0.0/30 overlaps inside.prefixes[0] 100.64.0.0/24"},
		{"{overflow: {pool: [192.0.2.130]}}", "overlaps inside.public[0] 192.0.2.128/25"},
		{"{overflow: {pool: [203.0.113.53]}}", "overlaps nat_exempt[0] 203.0.113.53/32"},
		{"{overflow: {pool: []}}", "ports.overflow.pool: at least one entry is required"},
		{"{overflow: {pool: [203.0.113.9], max_blocks: 0}}", "ports.overflow.max_blocks: 0, want 1 to 4"},
		{"{overflow: {pool: [203.0.113.9], max_blocks: 5}}", "ports.overflow.max_blocks: 5, want 1 to 4"},
		{"{range: 1024-2047, overflow: {pool: [203.0.113.9], block_size: 2000}}", "ports.overflow.block_size: 2000 ports per block, more than the 1024 of ports.range"},
		{"{overflow: {pool: [203.0.113.9], blocks: 3}}", "blocks"},
	} {
		_, err := Parse([]byte(base + "ports: " + tc.ports + "\n"))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ports: %s: error %v, want %q", tc.ports, err, tc.want)
		}
	}
}
