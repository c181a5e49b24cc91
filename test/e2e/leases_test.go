package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/blocknat/blocknat/test/netns"
	"github.com/blocknat/blocknat/test/testutil"
	"github.com/blocknat/blocknat/userspace/wire"
)

// One address for the whole Wi-Fi: the second device can only get the
// address the first one gave back.
var wifiAddr = netip.MustParseAddr("100.64.0.100")

// device is a phone on the municipal Wi-Fi: a namespace of its own on a
// bridge that stands for the access point, behind the router's first inside
// interface.
type device struct {
	ns    *netns.NS
	mac   string
	iface string
	dir   string
}

// wifi turns the first subscriber's namespace into an access point: its
// link to the router is enslaved to a bridge, and each device is a
// namespace with a veth on that bridge, so every device shares one segment
// and, one after the other, one inside address.
func wifi(t *testing.T, e *env, macs ...string) []*device {
	t.Helper()
	ctx := t.Context()
	ap := e.topo.Subscribers[0]
	must := func(ns *netns.NS, argv ...string) {
		t.Helper()
		if out, err := ns.Exec(ctx, argv...); err != nil {
			t.Fatalf("%s: %s: %v\n%s", ns.Name, strings.Join(argv, " "), err, out)
		}
	}
	must(ap.NS, "ip", "addr", "flush", "dev", ap.Iface)
	must(ap.NS, "ip", "route", "flush", "table", "main")
	must(ap.NS, "ip", "link", "add", "br0", "type", "bridge")
	must(ap.NS, "ip", "link", "set", ap.Iface, "master", "br0")
	must(ap.NS, "ip", "link", "set", "br0", "up")
	// The router's side becomes an ordinary /24 instead of a point-to-point
	// /32: it reaches the Wi-Fi's addresses on that link, and Kea takes a
	// point-to-point interface's peer for its own address.
	router := e.topo.Router
	must(router, "ip", "addr", "flush", "dev", e.topo.InsideIfaces[0])
	must(router, "ip", "addr", "add", ap.Gateway.String()+"/24", "dev", e.topo.InsideIfaces[0])
	var devs []*device
	for i, mac := range macs {
		ns, err := netns.Create(fmt.Sprintf("%s-dev%d", ap.NS.Name, i))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := ns.Delete(); err != nil {
				t.Errorf("delete %s: %v", ns.Name, err)
			}
		})
		port := fmt.Sprintf("ap%d", i)
		must(ap.NS, "ip", "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns.Name)
		must(ap.NS, "ip", "link", "set", port, "master", "br0", "up")
		must(ns, "ip", "link", "set", "eth0", "address", mac, "up")
		must(ns, "ip", "link", "set", "lo", "up")
		// See netns.Topology.enableGRO: a translated frame must carry a
		// full checksum.
		must(ns, "ethtool", "-K", "eth0", "tx", "off")
		devs = append(devs, &device{ns: ns, mac: mac, iface: "eth0", dir: t.TempDir()})
	}
	return devs
}

// join asks for a lease, configures it as a phone's DHCP client would, and
// returns the address.
func (d *device) join(t *testing.T) netip.Addr {
	t.Helper()
	ctx := t.Context()
	sub := &netns.Subscriber{NS: d.ns, Iface: d.iface}
	leased, log := runDhclient(t, sub, d.dir, filepath.Join(d.dir, "leases"), 30*time.Second)
	if !leased.IsValid() {
		t.Fatalf("%s: no lease; dhclient:\n%s", d.mac, log)
	}
	for _, argv := range [][]string{
		{"ip", "addr", "add", leased.String() + "/24", "dev", d.iface},
		{"ip", "route", "add", "default", "via", "100.64.0.254", "dev", d.iface},
	} {
		if out, err := d.ns.Exec(ctx, argv...); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(argv, " "), err, out)
		}
	}
	return leased
}

// leave gives the address back (DHCPRELEASE) and unconfigures it.
func (d *device) leave(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	if out, err := d.ns.Exec(ctx, "dhclient", "-4", "-r", "-v", "-cf", "/dev/null", "-sf", "/bin/true",
		"-lf", filepath.Join(d.dir, "leases"), "-pf", filepath.Join(d.dir, "dhclient.pid"), d.iface); err != nil {
		t.Fatalf("dhclient -r: %v\n%s", err, out)
	}
	if out, err := d.ns.Exec(ctx, "ip", "addr", "flush", "dev", d.iface); err != nil {
		t.Fatalf("flush: %v\n%s", err, out)
	}
}

// browse fetches a page from the server and returns what the server saw,
// with the second it saw it in, as a server log states it.
func (d *device) browse(t *testing.T, srv *netns.HTTPServer) (netip.AddrPort, string) {
	t.Helper()
	before := len(srv.Remotes())
	if out, err := d.ns.Exec(t.Context(), "curl", "--noproxy", "*", "-sS", "-m", "5", "http://"+srv.Addr.String()+"/"); err != nil {
		t.Fatalf("%s: curl: %v %s", d.mac, err, out)
	}
	second := time.Now().UTC().Format(time.RFC3339)
	remotes := srv.Remotes()
	if len(remotes) != before+1 {
		t.Fatalf("server saw %d requests, want %d", len(remotes), before+1)
	}
	return remotes[before], second
}

// hookWrapper is the one-line script the guide shows for the DHCP server:
// absolute paths only, since Kea runs its script with an empty PATH.
func hookWrapper(t *testing.T, e *env, server, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "blocknat-lease-"+server)
	script := fmt.Sprintf("#!/bin/sh\nexec %s lease %s --config %s -- \"$@\"\n", bins.Blocknat, server, e.cfgPath)
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

func startDHCPServer(t *testing.T, e *env, server, dir, hook string) {
	t.Helper()
	switch server {
	case "dnsmasq":
		startDaemonLogged(t, e, "dnsmasq", nil, "DHCP, IP range",
			"dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0", "--log-facility=-", "--log-dhcp",
			"--interface="+e.topo.InsideIfaces[0], "--bind-interfaces",
			fmt.Sprintf("--dhcp-range=%s,%s,255.255.255.0,10m", wifiAddr, wifiAddr),
			"--dhcp-authoritative", "--no-ping", "--script-on-renewal",
			"--dhcp-script="+hook,
			"--dhcp-leasefile="+filepath.Join(dir, "dnsmasq.leases"),
			"--pid-file="+filepath.Join(dir, "dnsmasq.pid"))
	case "kea":
		lib := keaRunScript(t)
		run, lock := filepath.Join(dir, "run"), filepath.Join(dir, "lock")
		for _, d := range []string{run, lock} {
			if err := os.Mkdir(d, 0o700); err != nil {
				t.Fatal(err)
			}
		}
		conf := map[string]any{"Dhcp4": map[string]any{
			"interfaces-config": map[string]any{"interfaces": []string{e.topo.InsideIfaces[0]}},
			"lease-database":    map[string]any{"type": "memfile", "persist": true, "lfc-interval": 0, "name": filepath.Join(dir, "kea-leases4.csv")},
			"valid-lifetime":    600,
			"subnet4": []any{map[string]any{
				"id": 1, "subnet": "100.64.0.0/24", "interface": e.topo.InsideIfaces[0],
				"pools": []any{map[string]any{"pool": fmt.Sprintf("%s - %s", wifiAddr, wifiAddr)}},
			}},
			"hooks-libraries": []any{map[string]any{"library": lib, "parameters": map[string]any{"name": hook, "sync": false}}},
			"loggers": []any{map[string]any{"name": "kea-dhcp4", "severity": "INFO",
				"output_options": []any{map[string]any{"output": "stdout"}}}},
		}}
		data, _ := json.Marshal(conf)
		path := filepath.Join(dir, "kea-dhcp4.json")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		startDaemonLogged(t, e, "kea-dhcp4", []string{"KEA_PIDFILE_DIR=" + run, "KEA_LOCKFILE_DIR=" + lock}, "DHCP4_STARTED",
			"kea-dhcp4", "-c", path)
	default:
		t.Fatalf("unknown DHCP server %q", server)
	}
}

// keaRunScript finds Kea's run_script hook library.
func keaRunScript(t *testing.T) string {
	t.Helper()
	for _, pattern := range []string{"/usr/lib/*/kea/hooks/libdhcp_run_script.so", "/usr/lib/kea/hooks/libdhcp_run_script.so", "/usr/lib64/kea/hooks/libdhcp_run_script.so"} {
		if m, _ := filepath.Glob(pattern); len(m) > 0 {
			return m[0]
		}
	}
	netns.RequireTools(t, "libdhcp_run_script.so")
	return ""
}

// startDaemonLogged runs a server in the router namespace until the test
// ends, and waits for ready in its output.
func startDaemonLogged(t *testing.T, e *env, name string, env []string, ready string, argv ...string) {
	t.Helper()
	log := &testutil.Buffer{}
	cmd := e.topo.Router.Command(context.WithoutCancel(t.Context()), argv...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		close(done)
	}()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("%s log:\n%s", name, log.String())
		}
	})
	deadline := time.Now().Add(15 * time.Second)
	for !strings.Contains(log.String(), ready) {
		select {
		case <-done:
			t.Fatalf("%s exited:\n%s", name, log.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not ready within 15s:\n%s", name, log.String())
		}
	}
}

// TestLeasesNameTheDevice is the municipal Wi-Fi: two phones get the same
// inside address from a real DHCP server one after the other, each browses
// through the NAT, and the lookup of each connection's public address, port
// and second names that phone's MAC and not the other's. The DHCP server
// feeds the lease history through `blocknat lease` as its hook.
func TestLeasesNameTheDevice(t *testing.T) {
	for _, server := range []string{"dnsmasq", "kea"} {
		t.Run(server, func(t *testing.T) {
			bin := map[string]string{"dnsmasq": "dnsmasq", "kea": "kea-dhcp4"}[server]
			netns.RequireTools(t, bin, "dhclient", "ethtool")
			dir := t.TempDir()
			e := startEnvWith(t, "bn-e2elease"+server[:1], "leases: {spool: "+filepath.Join(dir, "spool")+"}\n")
			devs := wifi(t, e, "02:00:00:00:01:0a", "02:00:00:00:01:0b")
			startDHCPServer(t, e, server, dir, hookWrapper(t, e, server, dir))
			srv, err := netns.StartHTTPServer(e.topo.Internet, netip.AddrPortFrom(e.topo.ServerAddrs[0], 8080))
			if err != nil {
				t.Fatal(err)
			}
			defer srv.Close()

			type conn struct {
				mac    string
				seen   netip.AddrPort
				second string
			}
			var conns []conn
			for i, d := range devs {
				if got := d.join(t); got != wifiAddr {
					t.Fatalf("device %d leased %s, want %s", i, got, wifiAddr)
				}
				seen, second := d.browse(t, srv)
				conns = append(conns, conn{d.mac, seen, second})
				// The stated second must end before the address changes
				// hands, and the next phone's second begin after it, or
				// both phones held the address in one second (and the
				// answer rightly names both).
				nextSecond := func() { time.Sleep(time.Until(time.Now().Truncate(time.Second).Add(1100 * time.Millisecond))) }
				nextSecond()
				if i+1 < len(devs) {
					d.leave(t)
					nextSecond()
					// A new phone answers for the address: the router's
					// neighbour entry for the old one must go, as it would
					// once the old phone stops answering ARP.
					if out, err := e.topo.Router.Exec(t.Context(), "ip", "neigh", "flush", "dev", e.topo.InsideIfaces[0]); err != nil {
						t.Fatalf("neigh flush: %v\n%s", err, out)
					}
				}
			}
			if conns[0].seen.Addr() != conns[1].seen.Addr() {
				t.Logf("the phones left from %s and %s", conns[0].seen, conns[1].seen)
			}

			socket := "--config=" + e.cfgPath
			for i, c := range conns {
				other := conns[1-i].mac
				var ans wire.LookupResponse
				// The hook runs after the server's ACK; give it a moment.
				deadline := time.Now().Add(10 * time.Second)
				for {
					e.cli(t, &ans, "lookup", socket, "--ip", c.seen.Addr().String(), "--port", itoa(c.seen.Port()),
						"--time", c.second, "--purpose", "case 2026-4411", "--json")
					if leaseMACs(ans) != nil || time.Now().After(deadline) {
						break
					}
					time.Sleep(200 * time.Millisecond)
				}
				if len(ans.Candidates) == 0 {
					t.Fatalf("%s at %s: no candidate: %+v", c.seen, c.second, ans)
				}
				if got := leaseMACs(ans); !slices.Equal(got, []string{c.mac}) {
					t.Errorf("%s at %s (phone %s): the answer names %v, want only %s", c.seen, c.second, c.mac, got, c.mac)
				}
				for _, l := range ans.Candidates[0].Leases {
					if l.Source != server || l.Inside != wifiAddr {
						t.Errorf("lease %+v, want one from %s for %s", l, server, wifiAddr)
					}
				}
				human, err := runCmd(t.Context(), bins.Blocknat, "lookup", socket, "--ip", c.seen.Addr().String(),
					"--port", itoa(c.seen.Port()), "--time", c.second, "--purpose", "case 2026-4411")
				if err != nil {
					t.Fatalf("lookup: %v\n%s", err, human)
				}
				if !strings.Contains(string(human), "mac "+c.mac) || strings.Contains(string(human), other) {
					t.Errorf("human answer for phone %s:\n%s", c.mac, human)
				}
			}

			// The answer as evidence, checked offline with the audit key;
			// one changed byte and the check fails.
			evidence := filepath.Join(dir, "case-2026-4411.evidence")
			c := conns[0]
			if out, err := runCmd(t.Context(), bins.Blocknat, "lookup", socket, "--ip", c.seen.Addr().String(), "--port", itoa(c.seen.Port()),
				"--time", c.second, "--purpose", "case 2026-4411", "--evidence", evidence); err != nil {
				t.Fatalf("lookup --evidence: %v\n%s", err, out)
			}
			pub := filepath.Join(e.stateDir, "audit", "audit.pub")
			out, err := runCmd(t.Context(), bins.Blocknat, "evidence", "verify", evidence, "--pubkey", pub)
			if err != nil || !strings.Contains(string(out), ": OK") || !strings.Contains(string(out), "mac "+c.mac) {
				t.Errorf("evidence verify: %v\n%s", err, out)
			}
			data, err := os.ReadFile(evidence)
			if err != nil {
				t.Fatal(err)
			}
			at := strings.Index(string(data), c.mac)
			data[at+len(c.mac)-1] ^= 0x01 // another phone's MAC
			if err := os.WriteFile(evidence, data, 0o600); err != nil {
				t.Fatal(err)
			}
			if out, err := runCmd(t.Context(), bins.Blocknat, "evidence", "verify", evidence, "--pubkey", pub); err == nil || !strings.Contains(string(out), "FAILED") {
				t.Errorf("evidence verify of a changed file: %v\n%s", err, out)
			}

			// History by MAC: the first phone's blocks, during its lease only.
			var hist wire.HistoryResponse
			e.cli(t, &hist, "history", socket, "--mac", conns[0].mac, "--from", time.Now().Add(-time.Hour).UTC().Format(time.RFC3339),
				"--to", time.Now().Add(time.Minute).UTC().Format(time.RFC3339), "--purpose", "case 2026-4411", "--json")
			if len(hist.Leases) != 1 || hist.Leases[0].MAC != conns[0].mac || hist.Leases[0].Inside != wifiAddr || !hist.Leases[0].Ended ||
				len(hist.Records) == 0 {
				t.Errorf("history by MAC: leases %+v, %d records", hist.Leases, len(hist.Records))
			}
			for _, r := range hist.Records {
				for _, l := range r.Leases {
					if l.MAC != conns[0].mac {
						t.Errorf("history by MAC names %s", l.MAC)
					}
				}
			}
			// Who looked the first phone up.
			var subj wire.AuditSubjectResponse
			e.cli(t, &subj, "audit", "subject", socket, "--mac", conns[0].mac, "--from", time.Now().Add(-time.Hour).UTC().Format(time.RFC3339),
				"--to", time.Now().Add(time.Minute).UTC().Format(time.RFC3339), "--json")
			var actions []string
			for _, u := range subj.Uses {
				actions = append(actions, u.Action)
			}
			if !slices.Contains(actions, "lookup") || !slices.Contains(actions, "history") {
				t.Errorf("audit subject for %s: %v", conns[0].mac, actions)
			}
		})
	}
}

func leaseMACs(ans wire.LookupResponse) []string {
	var out []string
	for _, c := range ans.Candidates {
		for _, l := range c.Leases {
			if !slices.Contains(out, l.MAC) {
				out = append(out, l.MAC)
			}
		}
	}
	return out
}

// TestLeaseHookQueuesWhileAgentIsDown: a lease event that cannot reach the
// agent is queued on disk, the hook still exits 0, and the agent delivers
// the queue when it starts.
func TestLeaseHookQueuesWhileAgentIsDown(t *testing.T) {
	spool := filepath.Join(t.TempDir(), "spool")
	e := prepareEnv(t, "bn-e2espool", "leases: {spool: "+spool+"}\n")
	expires := time.Now().Add(time.Hour).Unix()
	cmd := execCommand(t.Context(), bins.Blocknat, "lease", "dnsmasq", "--config", e.cfgPath, "--",
		"add", "02:00:00:00:02:0a", "100.64.0.120", "laptop")
	cmd.Env = append(os.Environ(), fmt.Sprintf("DNSMASQ_LEASE_EXPIRES=%d", expires), "DNSMASQ_INTERFACE=bn-in0")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "queued") {
		t.Fatalf("hook with the agent down: %v\n%s", err, out)
	}
	if files, _ := filepath.Glob(filepath.Join(spool, "*.json")); len(files) != 1 {
		t.Fatalf("spool holds %v, want one event", files)
	}
	e.start(t)
	var hist wire.HistoryResponse
	e.cli(t, &hist, "history", "--config", e.cfgPath, "--mac", "02:00:00:00:02:0a",
		"--from", time.Now().Add(-time.Hour).UTC().Format(time.RFC3339), "--to", time.Now().Add(time.Minute).UTC().Format(time.RFC3339),
		"--purpose", "case 2026-4411", "--json")
	if len(hist.Leases) != 1 || hist.Leases[0].Inside != netip.MustParseAddr("100.64.0.120") || hist.Leases[0].Hostname != "laptop" {
		t.Errorf("after the agent started: leases %+v", hist.Leases)
	}
	if files, _ := filepath.Glob(filepath.Join(spool, "*.json")); len(files) != 0 {
		t.Errorf("spool still holds %v", files)
	}
}
