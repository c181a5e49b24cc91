package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/blocknat/blocknat/userspace/config"
	"github.com/blocknat/blocknat/userspace/mapping"
)

// writeConfig writes the embedded demo configuration, optionally with
// extra YAML appended, and returns its path.
func writeConfig(t *testing.T, extra string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "blocknat.yaml")
	if err := os.WriteFile(path, append(bytes.Clone(config.Default), extra...), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

type result struct {
	code           int
	stdout, stderr string
}

func runCLI(args ...string) result {
	var stdout, stderr bytes.Buffer
	code := run(args, &stdout, &stderr)
	return result{code, stdout.String(), stderr.String()}
}

// demoMapping is the mapping the tests expect the CLI to compute, built
// through the library rather than written down.
func demoMapping(t *testing.T) *mapping.Mapping {
	t.Helper()
	c, err := config.Parse(config.Default)
	if err != nil {
		t.Fatal(err)
	}
	m, err := c.Mapping()
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func decodeBlock(t *testing.T, out string) mapping.Block {
	t.Helper()
	if !strings.HasSuffix(out, "}\n") || strings.Count(out, "\n") != 1 {
		t.Fatalf("want one JSON object and a newline, got %q", out)
	}
	var b mapping.Block
	dec := json.NewDecoder(strings.NewReader(out))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&b); err != nil {
		t.Fatalf("decode %q: %v", out, err)
	}
	return b
}

func TestForwardHuman(t *testing.T) {
	cfg := writeConfig(t, "")
	want, err := demoMapping(t).Forward(netip.MustParseAddr("100.64.0.7"))
	if err != nil {
		t.Fatal(err)
	}
	wantLine := fmt.Sprintf("100.64.0.7 -> %s ports %d-%d (subscriber 7)\n", want.Public, want.PortLo, want.PortHi)
	// Flags before and after the positional argument.
	for _, args := range [][]string{
		{"mapping", "forward", "--config", cfg, "100.64.0.7"},
		{"mapping", "forward", "100.64.0.7", "--config", cfg},
		{"mapping", "forward", "-config=" + cfg, "--", "100.64.0.7"},
	} {
		r := runCLI(args...)
		if r.code != 0 || r.stdout != wantLine || r.stderr != "" {
			t.Errorf("%v: code %d stdout %q stderr %q; want %q", args, r.code, r.stdout, r.stderr, wantLine)
		}
	}
	// The default demo values, worked by hand: C=128, B=504.
	if wantLine != "100.64.0.7 -> 198.51.100.10 ports 4552-5055 (subscriber 7)\n" {
		t.Errorf("demo mapping changed: %q", wantLine)
	}
}

func TestForwardJSON(t *testing.T) {
	cfg := writeConfig(t, "")
	r := runCLI("mapping", "forward", "100.64.0.200", "--json", "--config", cfg)
	if r.code != 0 {
		t.Fatalf("code %d, stderr %q", r.code, r.stderr)
	}
	want, _ := demoMapping(t).Forward(netip.MustParseAddr("100.64.0.200"))
	if got := decodeBlock(t, r.stdout); got != want {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	for _, key := range []string{`"subscriber":200`, `"inside":"100.64.0.200"`, `"public":"198.51.100.11"`, `"port_lo":`, `"port_hi":`} {
		if !strings.Contains(r.stdout, key) {
			t.Errorf("JSON %q lacks %s", r.stdout, key)
		}
	}
}

func TestReverse(t *testing.T) {
	cfg := writeConfig(t, "")
	want, err := demoMapping(t).Reverse(netip.MustParseAddr("198.51.100.10"), 15123)
	if err != nil {
		t.Fatal(err)
	}
	r := runCLI("mapping", "reverse", "--config", cfg, "198.51.100.10:15123")
	if r.code != 0 {
		t.Fatalf("code %d, stderr %q", r.code, r.stderr)
	}
	wantLine := fmt.Sprintf("198.51.100.10:15123 -> %s (subscriber %d, block %s ports %d-%d)\n", want.Inside, want.Subscriber, want.Public, want.PortLo, want.PortHi)
	if r.stdout != wantLine {
		t.Fatalf("stdout %q, want %q", r.stdout, wantLine)
	}
	// Address and port as two arguments, JSON output.
	r = runCLI("mapping", "reverse", "--json", "198.51.100.10", "15123", "--config", cfg)
	if r.code != 0 {
		t.Fatalf("code %d, stderr %q", r.code, r.stderr)
	}
	if got := decodeBlock(t, r.stdout); got != want {
		t.Fatalf("got %+v, want %+v", got, want)
	}
}

// TestRoundTrip sends every demo subscriber forward and reverses the
// first and last port of its block, all through the command line.
func TestRoundTrip(t *testing.T) {
	cfg := writeConfig(t, "")
	for i := range 256 {
		inside := fmt.Sprintf("100.64.0.%d", i)
		r := runCLI("mapping", "forward", "--json", "--config", cfg, inside)
		if r.code != 0 {
			t.Fatalf("forward %s: code %d, stderr %q", inside, r.code, r.stderr)
		}
		fwd := decodeBlock(t, r.stdout)
		if fwd.Inside.String() != inside || fwd.Subscriber != uint32(i) {
			t.Fatalf("forward %s = %+v", inside, fwd)
		}
		for _, port := range []uint16{fwd.PortLo, fwd.PortHi} {
			target := netip.AddrPortFrom(fwd.Public, port).String()
			r := runCLI("mapping", "reverse", "--json", "--config", cfg, target)
			if r.code != 0 {
				t.Fatalf("reverse %s: code %d, stderr %q", target, r.code, r.stderr)
			}
			if rev := decodeBlock(t, r.stdout); rev != fwd {
				t.Fatalf("reverse %s = %+v, want %+v", target, rev, fwd)
			}
		}
	}
}

func TestErrors(t *testing.T) {
	cfg := writeConfig(t, "")
	// block_size 500 leaves ports 65024-65535 outside every block.
	leftover := filepath.Join(t.TempDir(), "leftover.yaml")
	if err := os.WriteFile(leftover, bytes.Replace(config.Default, []byte("block_size: 0"), []byte("block_size: 500"), 1), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(t.TempDir(), "missing.yaml")
	badConfig := writeConfig(t, "surprise: 1\n")
	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantErr  []string
	}{
		{"no command", nil, 2, []string{"usage"}},
		{"unknown command", []string{"mappings"}, 2, []string{`unknown command "mappings"`}},
		{"missing verb", []string{"mapping"}, 2, []string{"missing verb"}},
		{"unknown verb", []string{"mapping", "sideways"}, 2, []string{`unknown verb "sideways"`}},
		{"unknown flag", []string{"mapping", "forward", "--yaml", "100.64.0.7"}, 2, []string{"yaml"}},
		{"bad inside address", []string{"mapping", "forward", "--config", cfg, "100.64.0.300"}, 2, []string{`inside address "100.64.0.300"`}},
		{"no inside address", []string{"mapping", "forward", "--config", cfg}, 2, []string{"one inside address"}},
		{"two inside addresses", []string{"mapping", "forward", "--config", cfg, "100.64.0.1", "100.64.0.2"}, 2, []string{"one inside address"}},
		{"reverse without port", []string{"mapping", "reverse", "--config", cfg, "198.51.100.10"}, 2, []string{"ADDRESS:PORT"}},
		{"reverse bad port", []string{"mapping", "reverse", "--config", cfg, "198.51.100.10:99999"}, 2, []string{"198.51.100.10:99999"}},
		{"reverse bad separate port", []string{"mapping", "reverse", "--config", cfg, "198.51.100.10", "http"}, 2, []string{`port "http"`}},
		{"not a subscriber", []string{"mapping", "forward", "--config", cfg, "100.64.1.7"}, 1, []string{"100.64.1.7", mapping.ErrNotSubscriber.Error()}},
		{"not in pool", []string{"mapping", "reverse", "--config", cfg, "198.51.100.12:2000"}, 1, []string{"198.51.100.12", mapping.ErrNotInPool.Error()}},
		{"port below range", []string{"mapping", "reverse", "--config", cfg, "198.51.100.10:80"}, 1, []string{"198.51.100.10:80", mapping.ErrPortNotInBlock.Error()}},
		{"port past the last block", []string{"mapping", "reverse", "--config", leftover, "198.51.100.11:65100"}, 1, []string{mapping.ErrPortNotInBlock.Error()}},
		{"missing config", []string{"mapping", "forward", "--config", missing, "100.64.0.7"}, 1, []string{missing}},
		{"invalid config", []string{"mapping", "forward", "--config", badConfig, "100.64.0.7"}, 1, []string{badConfig, "surprise"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := runCLI(tt.args...)
			if r.code != tt.wantCode {
				t.Errorf("exit code %d, want %d (stderr %q)", r.code, tt.wantCode, r.stderr)
			}
			if r.stdout != "" {
				t.Errorf("stdout %q, want nothing", r.stdout)
			}
			for _, want := range tt.wantErr {
				if !strings.Contains(r.stderr, want) {
					t.Errorf("stderr %q lacks %q", r.stderr, want)
				}
			}
		})
	}
}

func TestHelp(t *testing.T) {
	for _, args := range [][]string{{"help"}, {"--help"}, {"mapping", "help"}} {
		r := runCLI(args...)
		if r.code != 0 || !strings.Contains(r.stdout, "usage: blocknat") {
			t.Errorf("%v: code %d stdout %q", args, r.code, r.stdout)
		}
	}
	r := runCLI("mapping", "forward", "-h")
	if r.code != 0 || !strings.Contains(r.stderr, "-config") {
		t.Errorf("forward -h: code %d stderr %q", r.code, r.stderr)
	}
}

func TestDefaultConfigFlag(t *testing.T) {
	// Without --config the CLI reads DefaultConfigPath; the error names it.
	if _, err := os.Stat(DefaultConfigPath); err == nil {
		t.Skipf("%s exists on this machine", DefaultConfigPath)
	}
	r := runCLI("mapping", "forward", "100.64.0.7")
	if r.code != 1 || !strings.Contains(r.stderr, DefaultConfigPath) {
		t.Fatalf("code %d stderr %q, want a failure naming %s", r.code, r.stderr, DefaultConfigPath)
	}
}
