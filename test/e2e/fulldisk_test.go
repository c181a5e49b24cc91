package e2e

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/blocknat/blocknat/test/harness"
	"github.com/blocknat/blocknat/test/netns"
	"github.com/blocknat/blocknat/userspace/diskspace"
	"github.com/blocknat/blocknat/userspace/metrics"
	"github.com/blocknat/blocknat/userspace/wire"
)

// diskEnv is an agent whose state_dir is a small tmpfs of its own.
type diskEnv struct {
	*env
	listen string
}

// status asks the agent, through the CLI, for its status document. The
// request is audited, so it fails while the audit log cannot write.
func (d *diskEnv) status(t *testing.T) (wire.Status, error) {
	t.Helper()
	var st struct {
		Agent wire.Status `json:"agent"`
	}
	out, err := runCmd(t.Context(), bins.Blocknat, "status", "--json", "--socket", harness.SocketPath(d.stateDir))
	if err != nil {
		return st.Agent, fmt.Errorf("%w: %s", err, out)
	}
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatalf("status: %v: %s", err, out)
	}
	return st.Agent, nil
}

// waitStatus polls status until ok says so, and fails after 15 s.
func (d *diskEnv) waitStatus(t *testing.T, what string, ok func(wire.Status) bool) wire.Status {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		st, err := d.status(t)
		if err == nil && ok(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 15s; last status: disk %+v, records %+v, audit %+v, alarm %q (%v)\nagent log:\n%s",
				what, st.Disk, st.Records, st.AuditLog, st.Alarm, err, d.agent.Log())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (d *diskEnv) alive(t *testing.T, when string) {
	t.Helper()
	if exited, err := d.agent.Exited(); exited {
		t.Fatalf("blocknatd exited %s (%v):\n%s", when, err, d.agent.Log())
	}
}

// TestFullDiskSurvivedLoudly fills the agent's state_dir, a real 64 MiB
// tmpfs, while blocks activate:
//   - below disk.min_free the agent keeps running, pauses record writes
//     and raises the alarm with reason disk_low in /metrics and status;
//   - killed with -9 and started on the still-full disk, it gives up its
//     reserve to open the store and comes up with the alarm raised, saying
//     why;
//   - when room returns every block activated meanwhile is recorded, the
//     alarm ends and the reserve is made again, with no operator action;
//   - filled to the last byte, the audit log cannot write and lookups are
//     refused with the alarm's audit reason; once room returns, answers
//     resume without a restart, and the audit log verifies.
func TestFullDiskSurvivedLoudly(t *testing.T) {
	const listen = "127.0.0.1:9477"
	// The clock alarm is off (clock_max_error: 0): this test waits for the
	// alarm to clear once the disk has room, and a test machine's clock
	// may not be synchronised (TestClockHealth proves the clock alarm).
	e := prepareEnv(t, "bn-e2edisk", "disk: {min_free: 16MiB, reserve: 8MiB}\nintervals: {reconcile: 1s}\n"+
		"metrics: {listen: \""+listen+"\"}\nselfcheck: {clock_max_error: 0}\n")
	unmount, err := harness.MountSmallFS(e.stateDir, 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if e.agent != nil {
			e.agent.Stop()
			e.agent = nil
		}
		if err := unmount(); err != nil {
			t.Error(err)
		}
	})
	d := &diskEnv{env: e, listen: listen}
	e.start(t)
	d.waitStatus(t, "reserve made at start", func(st wire.Status) bool {
		return st.Disk.ReserveHeldBytes >= 8<<20 && !st.Disk.Low && len(st.Alarm) == 0
	})

	srv, err := netns.StartUDPEcho(e.topo.Internet, netip.AddrPortFrom(e.topo.ServerAddrs[0], 9000))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	first, second := e.topo.Subscribers[0], e.topo.Subscribers[1]
	if _, err := netns.UDPRoundTrip(first.NS, 0, srv.Addr, []byte("before"), 3*time.Second); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if n := len(e.history(t, first.Addr)); n != 1 {
		t.Fatalf("subscriber %s: %d records before the disk filled, want 1", first.Addr, n)
	}

	// Below min_free, above zero: the store is paused, the audit log
	// still writes into the margin, so status (audited) answers.
	filler := filepath.Join(e.stateDir, "filler")
	if _, err := harness.Fill(e.stateDir, "filler", 4<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := netns.UDPRoundTrip(second.NS, 0, srv.Addr, []byte("while low"), 3*time.Second); err != nil {
		t.Fatalf("traffic while state_dir is low: %v", err)
	}
	st := d.waitStatus(t, "alarm raised below min_free", func(st wire.Status) bool {
		return st.Disk.Low && !st.Records.Writing && strings.Contains(strings.Join(st.Alarm, "\n"), "disk.min_free")
	})
	d.alive(t, "below min_free")
	if n := len(e.history(t, second.Addr)); n != 0 {
		t.Errorf("subscriber %s: %d records written below min_free, want writes paused", second.Addr, n)
	}
	text := e.metricsText(t, listen)
	for sample, want := range map[string]float64{
		metrics.RecordsAlarm: 1,
		metrics.Alarm + `{reason="` + metrics.AlarmDiskLow + `"}`: 1,
		metrics.Alarm + `{reason="` + metrics.AlarmAudit + `"}`:   0,
	} {
		if got := metricValue(t, text, sample); got != want {
			t.Errorf("below min_free: %s = %v, want %v", sample, got, want)
		}
	}
	if free := metricValue(t, text, metrics.StateDirFreeBytes); free >= 16<<20 {
		t.Errorf("%s = %v below min_free", metrics.StateDirFreeBytes, free)
	}
	t.Logf("below min_free: %s", strings.Join(st.Alarm, " | "))

	// A crash on the full disk, and a start on it. Filled again first,
	// to 1 MiB: the store frees its write-ahead log (preallocated, 4 MiB)
	// when it opens, and the start must still find less than min_free
	// after that and the reserve's 8 MiB.
	if err := e.agent.Kill(); err != nil {
		t.Fatal(err)
	}
	if _, err := harness.Fill(e.stateDir, "filler", 1<<20); err != nil {
		t.Fatal(err)
	}
	e.start(t)
	st = d.waitStatus(t, "restart on a full disk raises the alarm", func(st wire.Status) bool {
		return st.Disk.Low && st.Disk.ReserveReleased != "" && len(st.Alarm) > 0
	})
	if !strings.Contains(e.agent.Log(), "starting with state_dir short of space") {
		t.Errorf("the start on a full disk did not say why the alarm is raised:\n%s", e.agent.Log())
	}
	if _, err := os.Stat(filepath.Join(e.stateDir, diskspace.ReserveFile)); !os.IsNotExist(err) {
		t.Errorf("reserve still in place after a start on a full disk: %v", err)
	}
	// A block that activates after the restart, still on the full disk.
	third := netip.AddrFrom4([4]byte{100, 64, 0, 230})
	if err := e.topo.AddSubscriberAddrs(t.Context(), 0, []netip.Addr{third}); err != nil {
		t.Fatal(err)
	}
	if err := sendFrom(first.NS, []netip.Addr{third}, srv.Addr, 0); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	d.alive(t, "after the restart on a full disk")

	// Room again: everything is recorded, with no operator action.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	d.waitStatus(t, "alarm ends and the reserve is made again", func(st wire.Status) bool {
		return !st.Disk.Low && len(st.Alarm) == 0 && st.Records.Writing && st.Disk.ReserveHeldBytes >= 8<<20
	})
	for _, sub := range []netip.Addr{first.Addr, second.Addr, third} {
		deadline := time.Now().Add(10 * time.Second)
		for len(e.history(t, sub)) != 1 {
			if time.Now().After(deadline) {
				t.Fatalf("subscriber %s: records %+v after room returned, want exactly 1", sub, e.history(t, sub))
			}
			time.Sleep(200 * time.Millisecond)
		}
	}

	// To the last byte: the audit log cannot write, lookups are refused.
	if _, err := harness.Fill(e.stateDir, "filler", 0); err != nil {
		t.Fatal(err)
	}
	var refused error
	for i := 0; i < 100 && refused == nil; i++ {
		_, refused = d.status(t)
	}
	if refused == nil || !strings.Contains(refused.Error(), "audit log unavailable") {
		t.Fatalf("status on a disk full to the last byte: %v, want refused: audit log unavailable", refused)
	}
	text = e.metricsText(t, listen)
	if got := metricValue(t, text, metrics.Alarm+`{reason="`+metrics.AlarmAudit+`"}`); got != 1 {
		t.Errorf("audit log cannot write: %s{reason=audit} = %v, want 1", metrics.Alarm, got)
	}
	d.alive(t, "with the disk full to the last byte")
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	d.waitStatus(t, "answers resume without a restart", func(st wire.Status) bool {
		return len(st.Alarm) == 0 && !st.AuditLog.Failing
	})
	if out, err := runCmd(t.Context(), bins.Blocknat, "audit", "verify", "--socket", harness.SocketPath(e.stateDir)); err != nil {
		t.Errorf("audit verify after the full disk: %v\n%s", err, out)
	}
	if err := e.agent.Stop(); err != nil {
		t.Errorf("clean stop after the full disk: %v\n%s", err, e.agent.Log())
	}
	e.agent = nil
}
