// Package e2e runs the real blocknatd in network namespaces and talks
// through it with real clients.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/blocknat/blocknat/loader"
	"github.com/blocknat/blocknat/test/harness"
	"github.com/blocknat/blocknat/test/netns"
	"github.com/blocknat/blocknat/userspace/mapping"
)

var bins harness.Binaries

func TestMain(m *testing.M) {
	if os.Geteuid() == 0 {
		dir, err := os.MkdirTemp("", "blocknat-e2e-bin")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		// Other uids run the CLI too (the role tests).
		if err := os.Chmod(dir, 0o755); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		bins, err = harness.Build(context.Background(), dir)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		code := m.Run()
		os.RemoveAll(dir)
		os.Exit(code)
	}
	os.Exit(m.Run())
}

// env is one topology with blocknatd running on its router.
type env struct {
	topo     *netns.Topology
	agent    *harness.Agent
	cfgPath  string
	pinDir   string
	stateDir string
	ifaces   []string
}

func startEnv(t *testing.T, prefix string) *env {
	t.Helper()
	return startEnvWith(t, prefix, "")
}

// startEnvWith starts blocknatd with extra configuration lines.
func startEnvWith(t *testing.T, prefix, extra string) *env {
	t.Helper()
	e := prepareEnv(t, prefix, extra)
	e.start(t)
	return e
}

// start (re)starts blocknatd.
func (e *env) start(t *testing.T) {
	t.Helper()
	var err error
	e.agent, err = harness.StartAgent(t.Context(), e.topo.Router, bins.Blocknatd, e.cfgPath, e.pinDir, e.ifaces, 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
}

// forward asks the real CLI where a subscriber's block is.
func (e *env) forward(t *testing.T, inside netip.Addr) mapping.Block {
	t.Helper()
	var b mapping.Block
	e.cli(t, &b, "mapping", "forward", "--config", e.cfgPath, "--json", inside.String())
	return b
}

func (e *env) reverse(t *testing.T, public netip.AddrPort) mapping.Block {
	t.Helper()
	var b mapping.Block
	e.cli(t, &b, "mapping", "reverse", "--config", e.cfgPath, "--json", public.String())
	return b
}

func (e *env) cli(t *testing.T, into any, args ...string) {
	t.Helper()
	out, err := runCmd(t.Context(), bins.Blocknat, args...)
	if err != nil {
		t.Fatalf("blocknat %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	if err := json.Unmarshal(out, into); err != nil {
		t.Fatalf("blocknat %s: bad JSON %q: %v", strings.Join(args, " "), out, err)
	}
}

// readPinned reads the running data plane's pinned maps with read.
func readPinned[T any](t *testing.T, e *env, read func(*loader.Pinned) (T, error)) T {
	t.Helper()
	p, err := loader.OpenPinned(e.pinDir)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	v, err := read(p)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func (e *env) stats(t *testing.T) loader.Stats {
	t.Helper()
	return readPinned(t, e, (*loader.Pinned).Stats)
}

// TestTranslateCurlAndUDP: two subscribers reach an HTTP server and a UDP
// echo server through blocknatd; the servers see the pool address and a
// port in the subscriber's own block, as `blocknat mapping` computes it.
func TestTranslateCurlAndUDP(t *testing.T) {
	e := startEnv(t, "bn-e2e")
	ctx := t.Context()
	httpAddr := netip.AddrPortFrom(e.topo.ServerAddrs[0], 8080)
	udpAddr := netip.AddrPortFrom(e.topo.ServerAddrs[1], 9000)
	httpSrv, err := netns.StartHTTPServer(e.topo.Internet, httpAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer httpSrv.Close()
	udpSrv, err := netns.StartUDPEcho(e.topo.Internet, udpAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer udpSrv.Close()

	for i, sub := range e.topo.Subscribers {
		out, err := sub.NS.Exec(ctx, "curl", "--noproxy", "*", "-sS", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}",
			"http://"+httpAddr.String()+"/")
		if err != nil || strings.TrimSpace(string(out)) != "200" {
			t.Fatalf("subscriber %d curl: %v %q", i, err, out)
		}
		payload := []byte(fmt.Sprintf("hello from subscriber %d", i))
		echo, err := netns.UDPRoundTrip(sub.NS, 0, udpAddr, payload, 3*time.Second)
		if err != nil {
			t.Fatalf("subscriber %d UDP: %v", i, err)
		}
		if !bytes.Equal(echo, payload) {
			t.Fatalf("subscriber %d UDP echo %q, want %q", i, echo, payload)
		}
	}

	for name, remotes := range map[string][]netip.AddrPort{"http": httpSrv.Remotes(), "udp": udpSrv.Remotes()} {
		if len(remotes) != len(e.topo.Subscribers) {
			t.Fatalf("%s server saw %d clients (%v), want %d", name, len(remotes), remotes, len(e.topo.Subscribers))
		}
		for i, sub := range e.topo.Subscribers {
			got := remotes[i]
			block := e.forward(t, sub.Addr)
			if got.Addr() != block.Public || got.Port() < block.PortLo || got.Port() > block.PortHi {
				t.Errorf("%s server saw subscriber %s as %s, want %s ports %d-%d", name, sub.Addr, got, block.Public, block.PortLo, block.PortHi)
			}
			if back := e.reverse(t, got); back.Inside != sub.Addr {
				t.Errorf("%s: reverse mapping of %s names %s, want %s", name, got, back.Inside, sub.Addr)
			}
		}
	}

	if err := e.topo.RouterHasNoNAT(ctx); err != nil {
		t.Error(err)
	}
	st := e.stats(t)
	// Per subscriber at least: SYN, ACK, request and a datagram out; SYN-ACK,
	// response and the echo in.
	if st["out_packets"] < 8 || st["in_packets"] < 6 {
		t.Errorf("XDP counted out=%d in=%d translated packets, want >= 8 and >= 6 (%v)", st["out_packets"], st["in_packets"], st)
	}
	if st["new_flows"] != 4 || st["block_activations"] != 2 {
		t.Errorf("new_flows=%d block_activations=%d, want 4 and 2", st["new_flows"], st["block_activations"])
	}
}

func runCmd(ctx context.Context, bin string, args ...string) ([]byte, error) {
	cmd := execCommand(ctx, bin, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		return append(out.Bytes(), errb.Bytes()...), err
	}
	return out.Bytes(), nil
}

// TestAgentMountsBPFFS: `ip netns exec` remounts /sys without bpffs; the
// agent must mount one itself to pin under /sys/fs/bpf, and still attach.
func TestAgentMountsBPFFS(t *testing.T) {
	netns.RequirePrivileged(t)
	topo := netns.NewTestTopology(t, "bn-e2ebpf")
	dir := t.TempDir()
	// Pins under /sys/fs/bpf go to the host's bpffs, which outlives the
	// test: a name of its own, removed at the end (with the bpffs, when
	// the agent brought it).
	hadBPFFS := harness.IsBPFFS("/sys/fs/bpf")
	pinDir := filepath.Join("/sys/fs/bpf", netns.TestPrefix("bn-e2ebpf"))
	t.Cleanup(func() {
		if err := harness.RemoveHostPins(pinDir, hadBPFFS); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	cfgPath := filepath.Join(dir, "blocknat.yaml")
	if err := os.WriteFile(cfgPath, harness.Config(topo, filepath.Join(dir, "state"), pinDir, ""), 0o600); err != nil {
		t.Fatal(err)
	}
	// The namespace's view of /sys/fs/bpf starts empty and not bpffs.
	out, err := topo.Router.Exec(t.Context(), "stat", "-f", "-c", "%T", "/sys/fs/bpf")
	if err == nil && strings.Contains(string(out), "bpf") {
		t.Fatalf("/sys/fs/bpf already bpffs inside ip netns exec: the test proves nothing")
	}
	ifaces := append(append([]string{}, topo.InsideIfaces...), topo.OutsideIface)
	agent, err := harness.StartAgent(t.Context(), topo.Router, bins.Blocknatd, cfgPath, pinDir, ifaces, 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := agent.Stop(); err != nil {
		t.Fatalf("stop: %v\n%s", err, agent.Log())
	}
}

// TestAgentRefusesBadConfig: a broken configuration stops the agent before
// it touches an interface, with an error naming the field.
func TestAgentRefusesBadConfig(t *testing.T) {
	netns.RequirePrivileged(t)
	topo := netns.NewTestTopology(t, "bn-e2ecfg")
	dir := t.TempDir()
	// A bpffs that outlives the agent, as on a router: the agent refuses
	// one that would vanish before it reads the interfaces.
	unmount, err := harness.MountBPFFS(filepath.Join(dir, "pins"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := unmount(); err != nil {
			t.Errorf("cleanup bpffs: %v", err)
		}
	})
	for _, tc := range []struct {
		name, extra, want string
	}{
		{"unknown field", "turbo: true\n", "turbo"},
		{"missing interface", "", "bn-nosuch"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := harness.Config(topo, filepath.Join(dir, "state"), filepath.Join(dir, "pins"), tc.extra)
			if tc.name == "missing interface" {
				cfg = bytes.Replace(cfg, []byte(topo.OutsideIface+"]"), []byte("bn-nosuch]"), 1)
			}
			cfgPath := filepath.Join(dir, "blocknat.yaml")
			if err := os.WriteFile(cfgPath, cfg, 0o600); err != nil {
				t.Fatal(err)
			}
			out, err := topo.Router.Exec(t.Context(), bins.Blocknatd, "--config", cfgPath)
			if err == nil || !strings.Contains(string(out), tc.want) {
				t.Fatalf("blocknatd with %s: err=%v, output %q, want a failure naming %q", tc.name, err, out, tc.want)
			}
			if harness.XDPAttached(t.Context(), topo.Router, topo.InsideIfaces[:1]) {
				t.Errorf("a refused start left XDP on %s", topo.InsideIfaces[0])
			}
		})
	}
}
