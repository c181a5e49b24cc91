package leasehook_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/blocknat/blocknat/test/netns"
	"github.com/blocknat/blocknat/test/testutil"
	"github.com/blocknat/blocknat/userspace/leasehook"
)

// These tests run the real servers and a real client, because what matters is
// what dnsmasq and Kea actually pass their scripts, not what their manuals say.
// Each test has its own pair of namespaces joined by one veth and nothing
// else, so no DHCP packet can leave them.

const (
	labLeaseTime = time.Hour
	// labRenewAfter is the T1 the servers hand out, so that the client renews
	// within the test.
	labRenewAfter = 4 * time.Second
	labWait       = 45 * time.Second
)

// lab is a server namespace and a client namespace on one veth pair.
type lab struct {
	server, client         *netns.NS
	serverIf, clientIf     string
	serverAddr             netip.Prefix
	poolFirst, poolLast    netip.Addr
	clientMAC, hostname    string
	dir, calls, scriptPath string
}

func newLab(t *testing.T, name string, octet byte) *lab {
	t.Helper()
	netns.RequirePrivileged(t)
	prefix := netns.TestPrefix("bn-lh-" + name)
	l := &lab{
		serverIf:   "lh-srv",
		clientIf:   "lh-cli",
		serverAddr: netip.PrefixFrom(netip.AddrFrom4([4]byte{100, 64, octet, 1}), 24),
		poolFirst:  netip.AddrFrom4([4]byte{100, 64, octet, 100}),
		poolLast:   netip.AddrFrom4([4]byte{100, 64, octet, 150}),
		clientMAC:  fmt.Sprintf("02:1b:4e:00:%02x:01", octet),
		hostname:   "lh-" + name + "-client",
		dir:        t.TempDir(),
	}
	l.server = createNS(t, prefix+"-srv")
	l.client = createNS(t, prefix+"-cli")
	// Both ends are created inside their namespaces, so the names never meet
	// the host's interfaces.
	run(t, "ip", "link", "add", l.serverIf, "netns", l.server.Name, "type", "veth",
		"peer", "name", l.clientIf, "netns", l.client.Name)
	exec1(t, l.server, "ip", "link", "set", "lo", "up")
	exec1(t, l.server, "ip", "addr", "add", l.serverAddr.String(), "dev", l.serverIf)
	exec1(t, l.server, "ip", "link", "set", l.serverIf, "up")
	exec1(t, l.client, "ip", "link", "set", "lo", "up")
	exec1(t, l.client, "ip", "link", "set", l.clientIf, "address", l.clientMAC)
	exec1(t, l.client, "ip", "link", "set", l.clientIf, "up")

	l.calls = filepath.Join(l.dir, "calls")
	if err := os.Mkdir(l.calls, 0o700); err != nil {
		t.Fatal(err)
	}
	l.scriptPath = writeRecorder(t, l.dir, l.calls)
	return l
}

func createNS(t *testing.T, name string) *netns.NS {
	t.Helper()
	ns, err := netns.Create(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := ns.Delete(); err != nil {
			t.Error(err)
		}
	})
	return ns
}

func run(t *testing.T, argv ...string) {
	t.Helper()
	if out, err := exec.CommandContext(t.Context(), argv[0], argv[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(argv, " "), err, out)
	}
}

func exec1(t *testing.T, ns *netns.NS, argv ...string) {
	t.Helper()
	if _, err := ns.Exec(t.Context(), argv...); err != nil {
		t.Fatal(err)
	}
}

// writeRecorder writes the --dhcp-script / run_script program: it stores its
// arguments and environment, NUL-separated, in one file per call, renamed
// into place so the test never reads half a call. Kea runs it with only its
// own variables (no PATH), hence the absolute paths.
func writeRecorder(t *testing.T, dir, calls string) string {
	t.Helper()
	var paths []string
	for _, tool := range []string{"date", "env", "mv"} {
		p, err := exec.LookPath(tool)
		if err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	script := fmt.Sprintf(`#!/bin/sh
f=%q/call-$(%s +%%s%%N)-$$
{ printf 'ARGS\0'; for a in "$@"; do printf '%%s\0' "$a"; done; printf 'ENV\0'; %s -0; } > "$f.tmp" && %s "$f.tmp" "$f"
`, calls, paths[0], paths[1], paths[2])
	p := filepath.Join(dir, "record-call")
	if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// call is one recorded script run.
type call struct {
	at   time.Time
	args []string
	env  map[string]string
}

func (c call) String() string {
	var keys []string
	for k := range c.env {
		if strings.HasPrefix(k, "DNSMASQ_") || strings.Contains(k, "LEASE") || strings.HasPrefix(k, "QUERY4_TYPE") || strings.HasPrefix(k, "QUERY4_CIADDR") {
			keys = append(keys, k+"="+c.env[k])
		}
	}
	slices.Sort(keys)
	return fmt.Sprintf("%s %q %s", c.at.Format(time.RFC3339Nano), c.args, strings.Join(keys, " "))
}

var callName = regexp.MustCompile(`^call-(\d+)-\d+$`)

func readCalls(t *testing.T, dir string) []call {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var calls []call
	for _, e := range entries {
		m := callName.FindStringSubmatch(e.Name())
		if m == nil {
			continue
		}
		nanos, _ := strconv.ParseInt(m[1], 10, 64)
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		fields := strings.Split(strings.TrimSuffix(string(data), "\x00"), "\x00")
		if len(fields) == 0 || fields[0] != "ARGS" {
			t.Fatalf("%s: not a recorded call: %q", e.Name(), data)
		}
		c := call{at: time.Unix(0, nanos), env: map[string]string{}}
		i := 1
		for ; i < len(fields) && fields[i] != "ENV"; i++ {
			c.args = append(c.args, fields[i])
		}
		for _, kv := range fields[min(i+1, len(fields)):] {
			if k, v, ok := strings.Cut(kv, "="); ok {
				c.env[k] = v
			}
		}
		calls = append(calls, c)
	}
	slices.SortFunc(calls, func(a, b call) int { return a.at.Compare(b.at) })
	return calls
}

// start runs a long-lived process in ns and kills it in t.Cleanup; its output
// is logged if the test fails. The channel closes when the process has exited.
func start(t *testing.T, ns *netns.NS, name string, env []string, argv ...string) <-chan struct{} {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := ns.Command(ctx, argv...)
	cmd.Env = append(os.Environ(), env...)
	out := &testutil.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("start %s: %v", name, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cancel()
		<-done
		if t.Failed() {
			t.Logf("%s output:\n%s", name, out.String())
		}
	})
	return done
}

// eventually polls cond until it holds or labWait passes; describe explains
// the state on failure.
func eventually(t *testing.T, what string, cond func() bool, describe func() string) {
	t.Helper()
	if !testutil.Poll(labWait, cond) {
		t.Fatalf("after %v still waiting for %s; %s", labWait, what, describe())
	}
}

var fixedAddress = regexp.MustCompile(`fixed-address (\d+\.\d+\.\d+\.\d+);`)

// clientRun is one dhclient holding a lease in the client namespace.
type clientRun struct {
	l                 *lab
	conf, leases, pid string
	exited            <-chan struct{}
	addr              netip.Addr
}

// acquire runs dhclient in the foreground (-d), so the test owns the process,
// and waits for its lease file to name an address. dhclient itself does not
// configure the interface (-sf /bin/true); the test adds the address as
// dhclient-script would, because the renewal and the release go by unicast.
func (l *lab) acquire(t *testing.T) *clientRun {
	t.Helper()
	c := &clientRun{
		l:      l,
		conf:   filepath.Join(l.dir, "dhclient.conf"),
		leases: filepath.Join(l.dir, "dhclient.leases"),
		pid:    filepath.Join(l.dir, "dhclient.pid"),
	}
	conf := fmt.Sprintf("send host-name %q;\nsend dhcp-client-identifier = hardware;\nrequest subnet-mask, routers;\n", l.hostname)
	if err := os.WriteFile(c.conf, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	c.exited = start(t, l.client, "dhclient", nil, "dhclient", "-4", "-d", "-1", "-v",
		"-sf", "/bin/true", "-cf", c.conf, "-lf", c.leases, "-pf", c.pid, l.clientIf)
	eventually(t, "a lease in dhclient's lease file", func() bool {
		data, _ := os.ReadFile(c.leases)
		m := fixedAddress.FindAllSubmatch(data, -1)
		if len(m) == 0 {
			return false
		}
		c.addr = netip.MustParseAddr(string(m[len(m)-1][1]))
		return true
	}, func() string { data, _ := os.ReadFile(c.leases); return fmt.Sprintf("lease file: %q", data) })
	if c.addr.Less(l.poolFirst) || l.poolLast.Less(c.addr) {
		t.Fatalf("leased %s, outside the pool %s-%s", c.addr, l.poolFirst, l.poolLast)
	}
	exec1(t, l.client, "ip", "addr", "add", netip.PrefixFrom(c.addr, l.serverAddr.Bits()).String(), "dev", l.clientIf)
	return c
}

// release runs `dhclient -r`, which stops the running dhclient through its
// pid file and sends DHCPRELEASE.
func (c *clientRun) release(t *testing.T) {
	t.Helper()
	if _, err := c.l.client.Exec(t.Context(), "dhclient", "-4", "-r", "-v",
		"-sf", "/bin/true", "-cf", c.conf, "-lf", c.leases, "-pf", c.pid, c.l.clientIf); err != nil {
		t.Fatal(err)
	}
}

// parser is FromDnsmasq or FromKea.
type parser func(args []string, env map[string]string, now time.Time) ([]leasehook.Event, error)

// events parses every recorded call; a call that does not parse fails the test.
func (l *lab) events(t *testing.T, parse parser) []leasehook.Event {
	t.Helper()
	var all []leasehook.Event
	for _, c := range readCalls(t, l.calls) {
		evs, err := parse(c.args, c.env, c.at)
		if err != nil {
			t.Fatalf("call %s: %v", c, err)
		}
		all = append(all, evs...)
	}
	return all
}

func (l *lab) describeCalls(t *testing.T) func() string {
	return func() string {
		var b strings.Builder
		b.WriteString("calls so far:")
		for _, c := range readCalls(t, l.calls) {
			b.WriteString("\n  " + c.String())
		}
		return b.String()
	}
}

// waitEvent waits until the calls yield an event of kind for the client's
// address and returns the first one after since.
func (l *lab) waitEvent(t *testing.T, parse parser, kind string, addr netip.Addr, since time.Time) leasehook.Event {
	t.Helper()
	var found leasehook.Event
	eventually(t, "a "+kind+" event for "+addr.String(), func() bool {
		for _, ev := range l.events(t, parse) {
			if ev.Kind == kind && ev.Inside == addr.String() && !ev.Time.Before(since) {
				found = ev
				return true
			}
		}
		return false
	}, l.describeCalls(t))
	return found
}

// checkLease runs the whole life of one lease (grant, renewal, release) and
// checks every event against what the client saw. wantCalls is how many
// script runs the server makes for that life; once they are all in, the
// events must be exactly one per transaction.
func (l *lab) checkLease(t *testing.T, parse parser, source string, wantCalls int) {
	t.Helper()
	begin := time.Now()
	c := l.acquire(t)

	add := l.waitEvent(t, parse, leasehook.KindAdd, c.addr, begin.Add(-time.Second))
	l.checkDevice(t, add, source)
	if add.Expires == nil {
		t.Fatalf("add event has no expiry: %+v", add)
	}
	if got, want := add.Expires.Sub(add.Time), labLeaseTime; got < want-time.Minute || got > want+time.Minute {
		t.Errorf("add event expires %v after it ran, want about %v", got, want)
	}

	renewedAfter := add.Time.Add(time.Second)
	renew := l.waitEvent(t, parse, leasehook.KindRenew, c.addr, renewedAfter)
	l.checkDevice(t, renew, source)
	if renew.Expires == nil || !renew.Expires.After(*add.Expires) {
		t.Errorf("renewal did not move the expiry on: add %v, renew %v", add.Expires, renew.Expires)
	}

	released := time.Now()
	c.release(t)
	rel := l.waitEvent(t, parse, leasehook.KindRelease, c.addr, released.Add(-time.Second))
	l.checkDevice(t, rel, source)
	if rel.Expires != nil {
		t.Errorf("release event has an expiry: %v", rel.Expires)
	}
	eventually(t, "the first dhclient to exit after -r", func() bool {
		select {
		case <-c.exited:
			return true
		default:
			return false
		}
	}, func() string { return "" })

	eventually(t, fmt.Sprintf("%d script runs", wantCalls), func() bool {
		return len(readCalls(t, l.calls)) >= wantCalls
	}, l.describeCalls(t))
	var kinds []string
	for _, ev := range l.events(t, parse) {
		if ev.Inside == c.addr.String() {
			kinds = append(kinds, ev.Kind)
		}
	}
	if want := []string{leasehook.KindAdd, leasehook.KindRenew, leasehook.KindRelease}; !slices.Equal(kinds, want) {
		t.Errorf("events for %s: %q, want %q; %s", c.addr, kinds, want, l.describeCalls(t)())
	}

	if testing.Verbose() {
		for _, ev := range l.events(t, parse) {
			data, _ := json.Marshal(ev)
			t.Logf("event %s", data)
		}
		t.Log(l.describeCalls(t)())
	}
}

func (l *lab) checkDevice(t *testing.T, ev leasehook.Event, source string) {
	t.Helper()
	wantID := "01" + strings.ReplaceAll(l.clientMAC, ":", "")
	if ev.MAC != l.clientMAC || ev.ClientID != wantID || ev.Source != source {
		t.Errorf("%s event %+v: want mac %s, client_id %s, source %s", ev.Kind, ev, l.clientMAC, wantID, source)
	}
	// Both servers keep the hostname with the lease, so even a renewal or a
	// release (whose packets carry none) names it.
	if ev.Hostname != l.hostname {
		t.Errorf("%s event hostname %q, want %q", ev.Kind, ev.Hostname, l.hostname)
	}
	if err := ev.Validate(); err != nil {
		t.Error(err)
	}
}

func TestRealDnsmasqLease(t *testing.T) {
	t.Parallel()
	netns.RequirePrivileged(t)
	netns.RequireTools(t, "dnsmasq", "dhclient")
	l := newLab(t, "dm", 7)
	dir := l.dir
	start(t, l.server, "dnsmasq", nil, "/usr/sbin/dnsmasq", "--no-daemon", "--conf-file=/dev/null",
		"--port=0", "--interface="+l.serverIf, "--bind-interfaces",
		fmt.Sprintf("--dhcp-range=%s,%s,255.255.255.0,%d", l.poolFirst, l.poolLast, int(labLeaseTime.Seconds())),
		fmt.Sprintf("--dhcp-option=option:T1,%d", int(labRenewAfter.Seconds())),
		"--dhcp-leasefile="+filepath.Join(dir, "dnsmasq.leases"),
		"--pid-file="+filepath.Join(dir, "dnsmasq.pid"),
		"--dhcp-script="+l.scriptPath,
		// Without it dnsmasq runs no script for a renewal, and the history
		// would keep the first expiry.
		"--script-on-renewal",
		"--dhcp-authoritative", "--no-ping", "--log-dhcp")
	// add, then "old" for the renewal, then del.
	l.checkLease(t, leasehook.FromDnsmasq, leasehook.SourceDnsmasq, 3)
}

func TestRealKeaLease(t *testing.T) {
	t.Parallel()
	netns.RequirePrivileged(t)
	netns.RequireTools(t, "kea-dhcp4", "dhclient")
	hook := runScriptLibrary(t)
	l := newLab(t, "kea", 8)
	dir := l.dir
	pidDir, lockDir := filepath.Join(dir, "run"), filepath.Join(dir, "lock")
	for _, d := range []string{pidDir, lockDir} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	config := map[string]any{"Dhcp4": map[string]any{
		"interfaces-config": map[string]any{"interfaces": []string{l.serverIf}},
		"lease-database": map[string]any{
			"type": "memfile", "persist": true, "lfc-interval": 0,
			"name": filepath.Join(dir, "kea-leases4.csv"),
		},
		"valid-lifetime": int(labLeaseTime.Seconds()),
		"renew-timer":    int(labRenewAfter.Seconds()),
		"rebind-timer":   int(labLeaseTime.Seconds() / 2),
		"subnet4": []any{map[string]any{
			"id": 1, "subnet": l.serverAddr.Masked().String(), "interface": l.serverIf,
			"pools": []any{map[string]any{"pool": fmt.Sprintf("%s - %s", l.poolFirst, l.poolLast)}},
		}},
		"hooks-libraries": []any{map[string]any{
			"library":    hook,
			"parameters": map[string]any{"name": l.scriptPath, "sync": false},
		}},
		"loggers": []any{map[string]any{
			"name": "kea-dhcp4", "severity": "INFO",
			"output_options": []any{map[string]any{"output": "stdout"}},
		}},
	}}
	data, err := json.MarshalIndent(config, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	confPath := filepath.Join(dir, "kea-dhcp4.json")
	if err := os.WriteFile(confPath, data, 0o600); err != nil {
		t.Fatal(err)
	}
	start(t, l.server, "kea-dhcp4", []string{"KEA_PIDFILE_DIR=" + pidDir, "KEA_LOCKFILE_DIR=" + lockDir},
		"kea-dhcp4", "-c", confPath)
	// leases4_committed for the grant; lease4_renew and leases4_committed for
	// the renewal; lease4_release and leases4_committed for the release.
	l.checkLease(t, leasehook.FromKea, leasehook.SourceKea, 5)
}

// runScriptLibrary finds Kea's run_script hook where Debian and others put it.
func runScriptLibrary(t *testing.T) string {
	t.Helper()
	for _, pattern := range []string{
		"/usr/lib/*/kea/hooks/libdhcp_run_script.so",
		"/usr/lib/kea/hooks/libdhcp_run_script.so",
		"/usr/lib64/kea/hooks/libdhcp_run_script.so",
		"/usr/local/lib/kea/hooks/libdhcp_run_script.so",
	} {
		if m, _ := filepath.Glob(pattern); len(m) > 0 {
			return m[0]
		}
	}
	const reason = "needs Kea's run_script hook library (libdhcp_run_script.so)"
	if os.Getenv(netns.RequirePrivilegedEnv) == "1" {
		t.Fatalf("%s (%s=1 forbids skipping)", reason, netns.RequirePrivilegedEnv)
	}
	t.Skip(reason)
	return ""
}
