package e2e

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/blocknat/blocknat/test/harness"
	"github.com/blocknat/blocknat/test/netns"
	"github.com/blocknat/blocknat/userspace/metrics"
)

const metricsListen = "127.0.0.1:9477"

// TestSelfCheckAndMetrics: with a one-second self-check, canaries travel
// the real path (canary program -> the NAT's pinned ring buffer -> Recorder
// -> store -> lookup) and pass; /metrics reports the traffic, the blocks
// and a clear alarm, with no address in it; `blocknat status` shows the
// same; and no canary ever shows up as a subscriber's record.
//
// The clock alarm is off here (clock_max_error: 0): a test machine's clock
// may not be synchronised, and this test proves that records are written;
// TestClockHealth proves the clock alarm.
func TestSelfCheckAndMetrics(t *testing.T) {
	e := startEnvWith(t, "bn-e2emon", "selfcheck: {interval: 1s, clock_max_error: 0}\nmetrics: {listen: \""+metricsListen+"\"}\n")
	srv, err := netns.StartUDPEcho(e.topo.Internet, netip.AddrPortFrom(e.topo.ServerAddrs[0], 9000))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	for _, sub := range e.topo.Subscribers {
		if _, err := netns.UDPRoundTrip(sub.NS, 0, srv.Addr, []byte("x"), 3*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	e.waitMetric(t, metricsListen, metrics.SelfCheckChecksTotal, 2, 5*time.Second) // the check at start and the next

	text := e.metricsText(t, metricsListen)
	dp := e.stats(t)
	checks := metricValue(t, text, metrics.SelfCheckChecksTotal)
	for _, c := range []struct {
		sample string
		ok     func(float64) bool
		want   string
	}{
		{metrics.RecordsAlarm, func(v float64) bool { return v == 0 }, "0"},
		{metrics.SelfCheckChecksTotal, func(v float64) bool { return v >= 2 }, ">= 2"},
		{metrics.SelfCheckFailuresTotal, func(v float64) bool { return v == 0 }, "0"},
		{metrics.SelfCheckLastSuccess, func(v float64) bool { return time.Since(time.Unix(int64(v), 0)) < 10*time.Second }, "within 10s"},
		{metrics.PacketsTotal + `{direction="out"}`, func(v float64) bool { return v >= 2 && v <= float64(dp["out_packets"]) }, fmt.Sprintf("2..%d", dp["out_packets"])},
		{metrics.PacketsTotal + `{direction="in"}`, func(v float64) bool { return v >= 2 && v <= float64(dp["in_packets"]) }, fmt.Sprintf("2..%d", dp["in_packets"])},
		{metrics.BytesTotal + `{direction="out"}`, func(v float64) bool { return v > 0 }, "> 0"},
		{metrics.DropsTotal + `{reason="drop_block_full"}`, func(v float64) bool { return v == 0 }, "0"},
		{metrics.RingbufDropsTotal, func(v float64) bool { return v == 0 }, "0"},
		{metrics.ActiveBlocks, func(v float64) bool { return v == 2 }, "2"},
		{metrics.Flows, func(v float64) bool { return v == 2 }, "2"},
		{metrics.BlockUtilisation + "_count", func(v float64) bool { return v == 2 }, "2 blocks"},
		{metrics.BlockUtilisation + `_bucket{le="0.1"}`, func(v float64) bool { return v == 2 }, "2 (one port of 504 each)"},
		{metrics.BlockEventsReadTotal, func(v float64) bool { return v == 2 }, "2 (canaries are not block events)"},
		{metrics.RecordsWrittenTotal, func(v float64) bool { return v == 2 }, "2 (canaries are not records)"},
		// Each passed check's canary was committed, a second apart from
		// the last one: at least one commit each.
		{metrics.StoreWriteSeconds + "_count", func(v float64) bool { return v >= checks }, fmt.Sprintf(">= %v, one per canary", checks)},
		{metrics.StoreWriteErrorsTotal, func(v float64) bool { return v == 0 }, "0"},
		{metrics.StoreOpenRecords, func(v float64) bool { return v == 2 }, "2"},
		{metrics.RetentionLastSweep, func(v float64) bool { return v > 0 }, "> 0 (a sweep runs at start)"},
		{metrics.Epoch, func(v float64) bool { return v == 1 }, "1"},
	} {
		if v := metricValue(t, text, c.sample); !c.ok(v) {
			t.Errorf("%s = %v, want %s", c.sample, v, c.want)
		}
	}
	// No address of any kind in the exposition: not the subscribers', not
	// the pool's, not the servers'.
	if addr := regexp.MustCompile(`\b\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}\b`).FindString(text); addr != "" {
		t.Errorf("/metrics holds the address %s", addr)
	}

	human, err := runCmd(t.Context(), bins.Blocknat, "status", "--socket", harness.SocketPath(e.stateDir))
	if err != nil {
		t.Fatalf("blocknat status: %v\n%s", err, human)
	}
	for _, want := range []string{
		"alarm                ok: block records are being written",
		"state                passing",
		"active               2 of 256 subscribers, 0 full",
		"mappings             2",
		"ring buffer full     0",
		"epoch                1",
	} {
		if !strings.Contains(string(human), want) {
			t.Errorf("blocknat status lacks %q:\n%s", want, human)
		}
	}
	// The audit log counts that status request; the gauge follows it.
	if v := metricValue(t, e.metricsText(t, metricsListen), metrics.AuditEntries); v < 1 {
		t.Errorf("%s = %v after an audited status request", metrics.AuditEntries, v)
	}

	// Garbage on the API socket is turned away by net/http before any
	// handler; /metrics counts it, and a healthy disk shows its figures.
	conn, err := net.Dial("unix", harness.SocketPath(e.stateDir))
	if err != nil {
		t.Fatal(err)
	}
	conn.Write([]byte("GARBAGE\r\n\r\n"))
	reply, _ := io.ReadAll(conn)
	conn.Close()
	if !strings.HasPrefix(string(reply), "HTTP/1.1 400") {
		t.Errorf("garbage on the API socket answered %q, want 400", reply)
	}
	text = e.metricsText(t, metricsListen)
	for sample, ok := range map[string]func(float64) bool{
		metrics.APIRejectedTotal + `{reason="bad_request"}`:       func(v float64) bool { return v == 1 },
		metrics.Alarm + `{reason="` + metrics.AlarmDiskLow + `"}`: func(v float64) bool { return v == 0 },
		metrics.StateDirFreeBytes:                                 func(v float64) bool { return v > 0 },
		metrics.StateDirMinFreeBytes:                              func(v float64) bool { return v == 64<<20 },
	} {
		if v := metricValue(t, text, sample); !ok(v) {
			t.Errorf("%s = %v", sample, v)
		}
	}

	if err := e.agent.Stop(); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(e.agent.Log(), "self-check failed") {
		t.Errorf("a self-check failed:\n%s", e.agent.Log())
	}
	st := e.openStore(t)
	open, err := st.OpenRecords()
	if err != nil || len(open) != len(e.topo.Subscribers) {
		t.Fatalf("open records %+v (%v): want one per subscriber, no canary", open, err)
	}
	for _, r := range open {
		if !e.topo.InsidePrefix.Contains(r.Inside) || r.Public.IsUnspecified() {
			t.Errorf("record %+v is not a subscriber's", r)
		}
	}
}

// TestAgentRunsWithUnitCapabilities: blocknatd runs with nothing but the
// capabilities its systemd unit grants (CAP_BPF, CAP_NET_ADMIN,
// CAP_PERFMON; no CAP_SYS_ADMIN, no CAP_DAC_OVERRIDE): it loads, attaches,
// translates, and its self-check canary passes.
func TestAgentRunsWithUnitCapabilities(t *testing.T) {
	netns.RequireTools(t, "setpriv")
	// The clock alarm off, as in TestSelfCheckAndMetrics: the alarm
	// checked below is the canary's.
	e := prepareEnv(t, "bn-e2ecap", "selfcheck: {interval: 1s, clock_max_error: 0}\n")
	const caps = "-all,+bpf,+net_admin,+perfmon"
	d := e.startDaemon(t, "setpriv", "--inh-caps="+caps, "--ambient-caps="+caps, "--bounding-set="+caps, "--",
		bins.Blocknatd, "--config", e.cfgPath)
	srv, err := netns.StartUDPEcho(e.topo.Internet, netip.AddrPortFrom(e.topo.ServerAddrs[0], 9000))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if _, err := netns.UDPRoundTrip(e.topo.Subscribers[0].NS, 0, srv.Addr, []byte("x"), 3*time.Second); err != nil {
		t.Fatalf("translate with the unit's capabilities: %v\n%s", err, d.Log())
	}
	if got := srv.Remotes()[0].Addr(); !e.topo.Pool.Contains(got) {
		t.Errorf("the server saw %s, want a pool address", got)
	}
	e.waitMetric(t, metricsListen, metrics.SelfCheckChecksTotal, 1, 5*time.Second)
	text := e.metricsText(t, metricsListen)
	if v := metricValue(t, text, metrics.SelfCheckChecksTotal); v < 1 {
		t.Errorf("no self-check ran:\n%s", d.Log())
	}
	if v := metricValue(t, text, metrics.RecordsAlarm); v != 0 {
		t.Errorf("alarm %v with the unit's capabilities:\n%s", v, d.Log())
	}
	// The capabilities really were limited: the agent's own status says
	// so through /proc.
	// ip netns exec and setpriv exec, so the process started is the agent.
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", d.proc.Pid))
	if err != nil {
		t.Fatalf("read the agent's capabilities: %v", err)
	}
	capEff := regexp.MustCompile(`CapEff:\s+([0-9a-f]+)`).FindSubmatch(status)
	if !strings.Contains(string(status), "blocknatd") || capEff == nil {
		t.Fatalf("/proc/%d/status is not the agent's:\n%s", d.proc.Pid, status)
	}
	// CAP_NET_ADMIN (12), CAP_PERFMON (38), CAP_BPF (39).
	if want := fmt.Sprintf("%016x", uint64(1)<<12|uint64(1)<<38|uint64(1)<<39); string(capEff[1]) != want {
		t.Errorf("agent runs with CapEff %s, want %s", capEff[1], want)
	}
	d.stop(t)
}
