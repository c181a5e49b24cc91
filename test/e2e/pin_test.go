package e2e

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/blocknat/blocknat/test/harness"
	"github.com/blocknat/blocknat/test/netns"
)

const hostBPFFS = "/sys/fs/bpf"

// prepareHostPinEnv is prepareEnv with the pins where the README's lab
// puts them: under the host's /sys/fs/bpf, in a directory of the test's
// own, which an agent started by `ip netns exec` cannot see without the
// work this test is about. The cleanup removes the data plane and the
// directory, and unmounts the host's bpffs again if there was none before
// and nobody else pinned anything on it since, leaving the machine as it
// was found.
func prepareHostPinEnv(t *testing.T, prefix string) *env {
	t.Helper()
	netns.RequirePrivileged(t)
	topo := netns.NewTestTopology(t, prefix)
	hadBPFFS := harness.IsBPFFS(hostBPFFS)
	dir := t.TempDir()
	e := &env{topo: topo, cfgPath: filepath.Join(dir, "blocknat.yaml"), stateDir: filepath.Join(dir, "state"),
		pinDir: filepath.Join(hostBPFFS, netns.TestPrefix(prefix))}
	if _, err := os.Stat(e.pinDir); err == nil {
		t.Fatalf("%s exists before the test", e.pinDir)
	}
	if err := os.WriteFile(e.cfgPath, harness.Config(topo, e.stateDir, e.pinDir, ""), 0o600); err != nil {
		t.Fatal(err)
	}
	e.ifaces = append(append([]string{}, topo.InsideIfaces...), topo.OutsideIface)
	t.Cleanup(func() {
		if e.agent != nil {
			if err := e.agent.Stop(); err != nil {
				t.Errorf("stop blocknatd: %v\n%s", err, e.agent.Log())
			}
			if t.Failed() {
				t.Logf("blocknatd log:\n%s", e.agent.Log())
			}
		}
		if err := harness.RemoveHostPins(e.pinDir, hadBPFFS); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return e
}

// TestPinsOutliveAgentUnderNetnsExec: blocknatd started under `ip netns
// exec`, as the README's lab starts it, with bpffs_dir under /sys/fs/bpf,
// pins into the host's bpffs (mounting one there if the host has none)
// rather than into one that lives in its private mount namespace. `kill
// -9` then leaves XDP attached: a long TCP connection never sees a reset
// and a UDP mapping keeps its public port, while the agent is dead and
// after it starts again. `blocknatd detach`, also under ip netns exec,
// finds the same pins and removes them.
func TestPinsOutliveAgentUnderNetnsExec(t *testing.T) {
	e := prepareHostPinEnv(t, "bn-e2epin")
	hadBPFFS := harness.IsBPFFS(hostBPFFS)
	e.start(t)
	if !hadBPFFS && !strings.Contains(e.agent.Log(), "mounted a bpffs in the host's mount namespace") {
		t.Errorf("the host had no bpffs at %s and the agent did not say it mounted one:\n%s", hostBPFFS, e.agent.Log())
	}
	if !strings.Contains(e.agent.Log(), "bpffs shared from the host's mount namespace") || !strings.Contains(e.agent.Log(), "path="+hostBPFFS) {
		t.Errorf("the agent did not say it shares the host's bpffs:\n%s", e.agent.Log())
	}
	// The test runs in the host's mount namespace: the pins are here.
	if links, _ := filepath.Glob(filepath.Join(e.pinDir, "links", "*")); len(links) != len(e.ifaces) {
		t.Fatalf("the host sees links %v under %s, want one per interface %v", links, e.pinDir, e.ifaces)
	}

	held := holdTraffic(t, e)
	tcpSrv, udpSrv, tcp, udp, udpPort := held.tcpSrv, held.udpSrv, held.tcp, held.udp, held.udpPort
	if !e.topo.Pool.Contains(udpPort.Addr()) {
		t.Fatalf("the UDP server sees %s, want a pool address", udpPort)
	}
	tcp.waitEchoes(t, 10, 5*time.Second)

	if err := e.agent.Kill(); err != nil {
		t.Fatal(err)
	}
	// The agent's mount namespace died with it; the host's bpffs holds
	// the links, so the programs stay attached.
	if !harness.XDPAttached(t.Context(), e.topo.Router, e.ifaces) {
		t.Fatal("kill -9 detached XDP: the pins died with the agent's mount namespace")
	}
	tcp.waitEchoes(t, 20, 5*time.Second)
	if err := udp.roundTrip("while down"); err != nil {
		t.Fatalf("UDP while blocknatd is dead: %v", err)
	}
	if got := lastPort(t, udpSrv); got != udpPort {
		t.Errorf("UDP mapping while the agent is dead: server sees %s, before %s", got, udpPort)
	}

	e.start(t)
	if strings.Contains(e.agent.Log(), "mounted a bpffs") {
		t.Errorf("the restart mounted a bpffs again instead of finding the host's:\n%s", e.agent.Log())
	}
	tcp.waitEchoes(t, 20, 5*time.Second)
	if err := udp.roundTrip("after"); err != nil {
		t.Fatalf("UDP after the restart: %v", err)
	}
	if got := lastPort(t, udpSrv); got != udpPort {
		t.Errorf("UDP mapping after the restart: server sees %s, before %s", got, udpPort)
	}
	if err := tcp.Stop(); err != nil {
		t.Errorf("the TCP connection broke across kill -9 and restart: %v", err)
	}
	if r := tcpSrv.Remotes(); len(r) != 1 {
		t.Errorf("the TCP server saw %d connections (%v), want the one that lived through the restart", len(r), r)
	}

	if err := e.agent.Stop(); err != nil {
		t.Fatalf("clean stop: %v\n%s", err, e.agent.Log())
	}
	e.agent = nil
	out, err := e.topo.Router.Exec(t.Context(), bins.Blocknatd, "detach", "--config", e.cfgPath)
	if err != nil {
		t.Fatalf("blocknatd detach under ip netns exec: %v\n%s", err, out)
	}
	for _, ifc := range e.ifaces {
		if harness.XDPAttached(t.Context(), e.topo.Router, []string{ifc}) {
			t.Errorf("%s still has an XDP program after detach under ip netns exec", ifc)
		}
	}
	if _, err := os.Stat(e.pinDir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("pin directory %s after detach under ip netns exec: %v", e.pinDir, err)
	}
}

// TestPinRefusedWhenBPFFSWouldVanish: under `ip netns exec`, a bpffs_dir
// outside /sys/fs/bpf that is on no bpffs would get one that lives only
// in the agent's private mount namespace. The agent refuses to start,
// saying so and how to fix it, and attaches nothing.
func TestPinRefusedWhenBPFFSWouldVanish(t *testing.T) {
	netns.RequirePrivileged(t)
	topo := netns.NewTestTopology(t, "bn-e2epinno")
	dir := t.TempDir()
	pinDir := filepath.Join(dir, "pins")
	cfgPath := filepath.Join(dir, "blocknat.yaml")
	if err := os.WriteFile(cfgPath, harness.Config(topo, filepath.Join(dir, "state"), pinDir, ""), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	out, err := topo.Router.Exec(ctx, bins.Blocknatd, "--config", cfgPath)
	if err == nil {
		t.Fatalf("blocknatd started with a bpffs that would vanish with it:\n%s", out)
	}
	for _, want := range []string{"bpffs_dir " + pinDir, "mount namespace of its own", "would vanish when blocknatd exits",
		"mount -t bpf bpf " + pinDir, "bpffs_dir under /sys/fs/bpf"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("the refusal does not say %q:\n%s", want, out)
		}
	}
	ifaces := append(append([]string{}, topo.InsideIfaces...), topo.OutsideIface)
	for _, ifc := range ifaces {
		if id := xdpProgID(t, topo.Router, ifc); id != "" {
			t.Errorf("a refused start left program %s on %s", id, ifc)
		}
	}
	if harness.IsBPFFS(pinDir) {
		t.Errorf("a refused start mounted a bpffs at %s", pinDir)
	}
}

// secondAgent writes a configuration for another agent on e's topology,
// with a state_dir of its own and the given bpffs_dir, and runs it in the
// router namespace, expecting it to exit soon.
func (e *env) secondAgent(t *testing.T, pinDir string) (stateDir, out string, took time.Duration, err error) {
	t.Helper()
	dir := t.TempDir()
	stateDir = filepath.Join(dir, "state-b")
	cfgPath := filepath.Join(dir, "blocknat-b.yaml")
	if err := os.WriteFile(cfgPath, harness.Config(e.topo, stateDir, pinDir, ""), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	start := time.Now()
	b, err := e.topo.Router.Exec(ctx, bins.Blocknatd, "--config", cfgPath)
	return stateDir, string(b), time.Since(start), err
}

// progIDs are the XDP program ids on e's interfaces.
func (e *env) progIDs(t *testing.T) map[string]string {
	t.Helper()
	ids := map[string]string{}
	for _, ifc := range e.ifaces {
		ids[ifc] = xdpProgID(t, e.topo.Router, ifc)
	}
	return ids
}

// TestSecondAgentSameBPFFSDirRefused: a second blocknatd with a state_dir
// of its own and the first one's bpffs_dir exits at once with an error
// naming the first (its pid, state_dir and configuration file), touching
// neither the programs nor its own state_dir; the first keeps recording;
// and after the first is killed with SIGKILL, it starts again unrefused.
func TestSecondAgentSameBPFFSDirRefused(t *testing.T) {
	e := startEnv(t, "bn-e2esecond")
	ids := e.progIDs(t)
	stateB, out, took, err := e.secondAgent(t, e.pinDir)
	if err == nil {
		t.Fatalf("a second agent on bpffs_dir %s started:\n%s", e.pinDir, out)
	}
	if took > 5*time.Second {
		t.Errorf("the second agent took %s to be refused", took)
	}
	t.Logf("the second agent was refused in %s", took.Round(time.Millisecond))
	for _, want := range []string{fmt.Sprintf("bpffs_dir %s is held by another blocknatd (pid %d", e.pinDir, e.agent.PID()),
		"state_dir " + e.stateDir, "config " + e.cfgPath, "one data plane has one agent"} {
		if !strings.Contains(out, want) {
			t.Errorf("the refusal does not say %q:\n%s", want, out)
		}
	}
	if got := e.progIDs(t); fmt.Sprint(got) != fmt.Sprint(ids) {
		t.Errorf("the refused agent changed the programs: %v, before %v", got, ids)
	}
	if _, err := os.Stat(stateB); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the refused agent made its state_dir %s: %v", stateB, err)
	}

	// The first agent still holds the ring buffer: an activation lands in
	// its store.
	srv, err := netns.StartUDPEcho(e.topo.Internet, netip.AddrPortFrom(e.topo.ServerAddrs[0], 9000))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	sub := e.topo.Subscribers[0]
	if _, err := netns.UDPRoundTrip(sub.NS, 0, srv.Addr, []byte("after the refusal"), 3*time.Second); err != nil {
		t.Fatalf("traffic after the refusal: %v", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(e.history(t, sub.Addr)) != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("the first agent recorded %d records for %s, want the activation", len(e.history(t, sub.Addr)), sub.Addr)
		}
		time.Sleep(50 * time.Millisecond)
	}

	if err := e.agent.Kill(); err != nil {
		t.Fatal(err)
	}
	e.start(t) // fails the test if refused
	if strings.Contains(e.agent.Log(), "is held by") {
		t.Errorf("the restart after kill -9 saw a holder:\n%s", e.agent.Log())
	}
}

// TestSecondAgentOtherBPFFSDirNamesInterface: a second blocknatd on the
// same interfaces with a bpffs_dir of its own finds the first one's
// programs foreign and is refused, naming the interface and the program.
func TestSecondAgentOtherBPFFSDirNamesInterface(t *testing.T) {
	e := startEnv(t, "bn-e2esecondif")
	ids := e.progIDs(t)
	otherPins := filepath.Join(filepath.Dir(e.pinDir), "blocknat-b")
	_, out, _, err := e.secondAgent(t, otherPins)
	if err == nil {
		t.Fatalf("a second agent on the same interfaces started:\n%s", out)
	}
	iface := e.topo.InsideIfaces[0]
	want := fmt.Sprintf("inside interface %s already has XDP program id %s", iface, ids[iface])
	if !strings.Contains(out, want) {
		t.Errorf("the refusal does not say %q:\n%s", want, out)
	}
	if got := e.progIDs(t); fmt.Sprint(got) != fmt.Sprint(ids) {
		t.Errorf("the refused agent changed the programs: %v, before %v", got, ids)
	}
	srv, err := netns.StartUDPEcho(e.topo.Internet, netip.AddrPortFrom(e.topo.ServerAddrs[0], 9000))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if _, err := netns.UDPRoundTrip(e.topo.Subscribers[0].NS, 0, srv.Addr, []byte("x"), 3*time.Second); err != nil {
		t.Fatalf("the first agent's translation after the refusal: %v", err)
	}
	if got := srv.Remotes()[0].Addr(); !e.topo.Pool.Contains(got) {
		t.Errorf("the server saw %s, want a pool address", got)
	}
}
