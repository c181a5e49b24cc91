package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/blocknat/blocknat/loader"
	"github.com/blocknat/blocknat/test/harness"
	"github.com/blocknat/blocknat/test/netns"
	"github.com/blocknat/blocknat/test/testutil"
)

// prepareEnv builds what startEnvWith builds, without starting blocknatd,
// for tests that start it their own way. A harness agent put in e.agent is
// stopped at cleanup.
func prepareEnv(t *testing.T, prefix, extra string) *env {
	t.Helper()
	netns.RequirePrivileged(t)
	return prepareEnvOn(t, netns.NewTestTopology(t, prefix), extra)
}

// prepareEnvOn is prepareEnv on a topology the test has built (and may
// have added to).
func prepareEnvOn(t *testing.T, topo *netns.Topology, extra string) *env {
	t.Helper()
	netns.RequireTools(t, "curl")
	dir := t.TempDir()
	unmount, err := harness.MountBPFFS(filepath.Join(dir, "bpf"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := unmount(); err != nil {
			t.Errorf("cleanup bpffs: %v", err)
		}
	})
	e := &env{topo: topo, cfgPath: filepath.Join(dir, "blocknat.yaml"), pinDir: filepath.Join(dir, "bpf", "blocknat"),
		stateDir: filepath.Join(dir, "state")}
	if err := os.WriteFile(e.cfgPath, harness.Config(topo, e.stateDir, e.pinDir, extra), 0o600); err != nil {
		t.Fatal(err)
	}
	e.ifaces = append(append([]string{}, topo.InsideIfaces...), topo.OutsideIface)
	t.Cleanup(func() {
		if e.agent == nil {
			return
		}
		if err := e.agent.Stop(); err != nil {
			t.Errorf("stop blocknatd: %v\n%s", err, e.agent.Log())
		}
		if t.Failed() {
			t.Logf("blocknatd log:\n%s", e.agent.Log())
			if p, err := loader.OpenPinned(e.pinDir); err == nil {
				st, _ := p.Stats()
				t.Logf("data plane counters: %v", st)
				p.Close()
			}
		}
	})
	return e
}

// daemon is a blocknatd started with arguments of the test's choosing.
type daemon struct {
	out  testutil.Buffer // its stdout and stderr
	proc *os.Process
	done chan struct{}
	err  error
}

func (d *daemon) Log() string { return d.out.String() }

// startDaemon runs argv in the router namespace and waits until it
// translates on every interface.
func (e *env) startDaemon(t *testing.T, argv ...string) *daemon {
	t.Helper()
	d := &daemon{done: make(chan struct{})}
	cmd := e.topo.Router.Command(context.WithoutCancel(t.Context()), argv...)
	cmd.Stdout, cmd.Stderr = &d.out, &d.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d.proc = cmd.Process
	go func() {
		d.err = cmd.Wait()
		close(d.done)
	}()
	t.Cleanup(func() { d.stop(t) })
	deadline := time.Now().Add(20 * time.Second)
	for !harness.XDPAttached(t.Context(), e.topo.Router, e.ifaces) || !strings.Contains(d.Log(), "msg=translating") {
		select {
		case <-d.done:
			t.Fatalf("%s exited before translating (%v):\n%s", strings.Join(argv, " "), d.err, d.Log())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not translate within 20s:\n%s", strings.Join(argv, " "), d.Log())
		}
	}
	return d
}

// stop sends SIGTERM and waits for a clean exit.
func (d *daemon) stop(t *testing.T) {
	t.Helper()
	select {
	case <-d.done:
		return
	default:
	}
	d.proc.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
		if d.err != nil {
			t.Errorf("blocknatd exited with %v:\n%s", d.err, d.Log())
		}
	case <-time.After(15 * time.Second):
		d.proc.Kill()
		<-d.done
		t.Errorf("blocknatd ignored SIGTERM for 15s")
	}
}

// metricsText scrapes the agent's /metrics from inside the router
// namespace, where it listens on loopback.
func (e *env) metricsText(t *testing.T, listen string) string {
	t.Helper()
	out, err := e.topo.Router.Exec(t.Context(), "curl", "--noproxy", "*", "-sS", "-m", "5", "http://"+listen+"/metrics")
	if err != nil {
		t.Fatalf("scrape metrics: %v", err)
	}
	return string(out)
}

// metricValue returns the value of the sample named exactly sample (name
// and labels as exposed), or fails.
func metricValue(t *testing.T, text, sample string) float64 {
	t.Helper()
	f, found, err := findSample(text, sample)
	if err != nil {
		t.Fatal(err)
	}
	if !found {
		t.Fatalf("no sample %s in:\n%s", sample, text)
	}
	return f
}

func findSample(text, sample string) (value float64, found bool, err error) {
	for _, line := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(line, sample+" "); ok {
			if _, err := fmt.Sscan(v, &value); err != nil {
				return 0, true, fmt.Errorf("%s: %q: %v", sample, v, err)
			}
			return value, true, nil
		}
	}
	return 0, false, nil
}

// waitMetric polls the agent's /metrics at listen until sample is at
// least min, where a test would otherwise sleep for the agent to get
// there (a commit, a self-check).
func (e *env) waitMetric(t *testing.T, listen, sample string, min float64, within time.Duration) {
	t.Helper()
	testutil.Eventually(t, within, func() bool {
		v, found, err := findSample(e.metricsText(t, listen), sample)
		return err == nil && found && v >= min
	}, "%s >= %v", sample, min)
}

// startTCPEcho starts a netns.TCPEcho the test closes at cleanup.
func startTCPEcho(t *testing.T, ns *netns.NS, addr netip.AddrPort) *netns.TCPEcho {
	t.Helper()
	s, err := netns.StartTCPEcho(ns, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// stream is a netns.Stream the test stops at cleanup.
type stream struct{ *netns.Stream }

func startStream(t *testing.T, ns *netns.NS, to netip.AddrPort, interval time.Duration) *stream {
	t.Helper()
	s, err := netns.StartStream(ns, netip.Addr{}, to, interval, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Stop() })
	return &stream{s}
}

// waitEchoes waits until the stream has had n more echoes than now.
func (s *stream) waitEchoes(t *testing.T, n uint64, within time.Duration) {
	t.Helper()
	target := s.Echoed() + n
	deadline := time.Now().Add(within)
	for s.Echoed() < target {
		if ended, err := s.Ended(); ended {
			t.Fatalf("the TCP stream ended after %d echoes: %v", s.Echoed(), err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("the TCP stream made %d echoes in %s, wanted %d more", s.Echoed(), within, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// udpClient is one UDP socket in a subscriber namespace, kept open so
// that every datagram uses the same mapping.
type udpClient struct {
	conn *net.UDPConn
}

func newUDPClient(t *testing.T, ns *netns.NS, to netip.AddrPort) *udpClient {
	t.Helper()
	c := &udpClient{}
	if err := ns.Do(func() (err error) {
		c.conn, err = net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(to))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.conn.Close() })
	return c
}

func (c *udpClient) roundTrip(payload string) error {
	c.conn.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.conn.Write([]byte(payload)); err != nil {
		return err
	}
	buf := make([]byte, 256)
	n, err := c.conn.Read(buf)
	if err != nil {
		return err
	}
	if string(buf[:n]) != payload {
		return errors.New("wrong echo " + string(buf[:n]))
	}
	return nil
}

// heldTraffic is what the restart tests keep going through the NAT while
// the agent stops, dies or starts: a TCP stream from the first subscriber
// and a UDP mapping of the second, with the public address and port the
// UDP server saw it from.
type heldTraffic struct {
	tcpSrv  *netns.TCPEcho
	udpSrv  *netns.UDPEcho
	tcp     *stream
	udp     *udpClient
	udpPort netip.AddrPort
}

func holdTraffic(t *testing.T, e *env) *heldTraffic {
	t.Helper()
	h := &heldTraffic{tcpSrv: startTCPEcho(t, e.topo.Internet, netip.AddrPortFrom(e.topo.ServerAddrs[0], 7001))}
	var err error
	if h.udpSrv, err = netns.StartUDPEcho(e.topo.Internet, netip.AddrPortFrom(e.topo.ServerAddrs[1], 9000)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.udpSrv.Close() })
	h.tcp = startStream(t, e.topo.Subscribers[0].NS, h.tcpSrv.Addr, 20*time.Millisecond)
	h.udp = newUDPClient(t, e.topo.Subscribers[1].NS, h.udpSrv.Addr)
	if err := h.udp.roundTrip("before"); err != nil {
		t.Fatalf("UDP before: %v", err)
	}
	h.udpPort = lastPort(t, h.udpSrv)
	return h
}
