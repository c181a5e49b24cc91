package e2e

import (
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/blocknat/blocknat/test/harness"
	"github.com/blocknat/blocknat/test/netns"
	"github.com/blocknat/blocknat/userspace/clockstate"
	"github.com/blocknat/blocknat/userspace/config"
	"github.com/blocknat/blocknat/userspace/metrics"
	"github.com/blocknat/blocknat/userspace/wire"
)

// TestClockHealth: the agent reads this machine's real clock state through
// adjtimex and agrees with the kernel. With the default bound (100ms), an
// unsynchronised clock (as on the machine this was written on, where
// STA_UNSYNC is set) or one over the bound raises blocknat_alarm{reason=
// "clock"}; /metrics, `blocknat status --json` and its human form show the
// state; a lookup answer, and the evidence file holding it, state the
// clock when it was given and when its epoch was recorded, as does a
// history.
func TestClockHealth(t *testing.T) {
	kernel, err := clockstate.Read()
	if err != nil {
		t.Fatal(err)
	}
	raised := !kernel.Within(config.DefaultClockMaxError)
	t.Logf("this machine's clock: %+v (alarm expected: %v)", kernel, raised)

	e := startEnvWith(t, "bn-e2eclock", "selfcheck: {interval: 1s}\nmetrics: {listen: \""+metricsListen+"\"}\n")
	e.waitMetric(t, metricsListen, metrics.SelfCheckChecksTotal, 1, 5*time.Second)
	text := e.metricsText(t, metricsListen)
	want := map[bool]float64{false: 0, true: 1}
	for sample, v := range map[string]float64{
		metrics.Alarm + `{reason="` + metrics.AlarmClock + `"}`: want[raised],
		metrics.ClockSynchronised:                               want[kernel.Synchronised],
	} {
		if got := metricValue(t, text, sample); got != v {
			t.Errorf("%s = %v, want %v (kernel: %+v)", sample, got, v, kernel)
		}
	}
	if raised && metricValue(t, text, metrics.RecordsAlarm) != 1 {
		t.Errorf("%s is not 1 with the clock alarm raised", metrics.RecordsAlarm)
	}
	if got := metricValue(t, text, metrics.ClockMaxError); got <= 0 {
		t.Errorf("%s = %v, want the kernel's bound (%s)", metrics.ClockMaxError, got, kernel.MaxError)
	}

	socket := harness.SocketPath(e.stateDir)
	var st wire.StatusResponse
	e.cli(t, &st, "status", "--socket", socket, "--json")
	if st.Agent == nil {
		t.Fatal("status without the agent's part")
	}
	cl := st.Agent.Clock
	if cl.Synchronised != kernel.Synchronised || cl.Bound != "100ms" || cl.ReadAt.IsZero() || time.Since(cl.ReadAt) > time.Minute || cl.Error != "" {
		t.Errorf("status clock %+v, kernel %+v", cl, kernel)
	}
	if raised != strings.Contains(strings.Join(st.Agent.Alarm, "\n"), "clock") {
		t.Errorf("status alarm %q with the clock alarm expected %v", st.Agent.Alarm, raised)
	}
	human, err := runCmd(t.Context(), bins.Blocknat, "status", "--socket", socket)
	if err != nil {
		t.Fatalf("blocknat status: %v\n%s", err, human)
	}
	wantState := "synchronised, estimated error"
	if !kernel.Synchronised {
		wantState = "NOT SYNCHRONISED"
	}
	if !strings.Contains(string(human), "clock\n  state                "+wantState) || !strings.Contains(string(human), "100ms (selfcheck.clock_max_error)") {
		t.Errorf("blocknat status lacks the clock (%q):\n%s", wantState, human)
	}

	// A lookup of a real record states the clock twice: as the answer is
	// given, and as it was when epoch 1 was recorded at start.
	srv, err := netns.StartUDPEcho(e.topo.Internet, netip.AddrPortFrom(e.topo.ServerAddrs[0], 9000))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if _, err := netns.UDPRoundTrip(e.topo.Subscribers[0].NS, 0, srv.Addr, []byte("x"), 3*time.Second); err != nil {
		t.Fatal(err)
	}
	seen, seenAt := srv.Remotes()[0], time.Now().UTC().Format(time.RFC3339Nano)
	e.waitMetric(t, metricsListen, metrics.RecordsWrittenTotal, 1, 5*time.Second)
	evidence := filepath.Join(t.TempDir(), "answer.json")
	var ans wire.LookupResponse
	e.cli(t, &ans, "lookup", "--socket", socket, "--ip", seen.Addr().String(), "--port", itoa(seen.Port()),
		"--time", seenAt, "--tolerance", "2s", "--purpose", "clock test", "--evidence", evidence, "--json")
	if c := ans.Clock; c == nil || c.Synchronised != kernel.Synchronised || c.EstimatedError == "" || c.ReadAt.IsZero() {
		t.Errorf("answer clock %+v, kernel %+v", ans.Clock, kernel)
	}
	if len(ans.Candidates) != 1 {
		t.Fatalf("candidates %+v, want one", ans.Candidates)
	}
	ep := ans.Candidates[0].EpochInForce
	if ep == nil || ep.Clock == nil || ep.Clock.Synchronised != kernel.Synchronised || ep.Clock.ReadAt.After(ans.Clock.ReadAt) {
		t.Errorf("epoch in force %+v, want its clock at start", ep)
	}
	raw, err := os.ReadFile(evidence)
	if err != nil {
		t.Fatal(err)
	}
	var file wire.EvidenceFile
	if err := json.Unmarshal(raw, &file); err != nil {
		t.Fatal(err)
	}
	var audited wire.LookupResponse
	if err := json.Unmarshal(file.Answer, &audited); err != nil || audited.Clock == nil || *audited.Clock != *ans.Clock {
		t.Errorf("the evidence file's answer holds the clock %+v (%v), want %+v", audited.Clock, err, ans.Clock)
	}
	if out, err := runCmd(t.Context(), bins.Blocknat, "evidence", "verify", evidence, "--pubkey", filepath.Join(e.stateDir, "audit", "audit.pub")); err != nil {
		t.Errorf("evidence verify: %v\n%s", err, out)
	}

	var hist wire.HistoryResponse
	e.cli(t, &hist, "history", "--socket", socket, "--subscriber", e.topo.Subscribers[0].Addr.String(),
		"--from", time.Now().Add(-time.Hour).UTC().Format(time.RFC3339), "--to", time.Now().Add(time.Minute).UTC().Format(time.RFC3339),
		"--purpose", "clock test", "--json")
	if hist.Clock == nil || hist.Clock.Synchronised != kernel.Synchronised || len(hist.Records) != 1 ||
		hist.Records[0].EpochInForce == nil || hist.Records[0].EpochInForce.Clock == nil {
		t.Errorf("history %+v: want the clock of the answer and of its epoch", hist)
	}

	human, err = runCmd(t.Context(), bins.Blocknat, "lookup", "--socket", socket, "--ip", seen.Addr().String(),
		"--port", itoa(seen.Port()), "--time", seenAt, "--tolerance", "2s", "--purpose", "clock test")
	if err != nil {
		t.Fatalf("lookup: %v\n%s", err, human)
	}
	sentence := "the router's clock was synchronised within "
	if !kernel.Synchronised {
		sentence = "the router's clock was not synchronised"
	}
	t.Logf("blocknat lookup:\n%s", human)
	for _, want := range []string{sentence, "when this answer was given", "when epoch 1 was recorded"} {
		if !strings.Contains(string(human), want) {
			t.Errorf("human answer lacks %q:\n%s", want, human)
		}
	}

	// The bound is reloadable: 0 turns the alarm off at once, and the
	// figures stay.
	e.reloadWith(t, harness.Config(e.topo, e.stateDir, e.pinDir,
		"selfcheck: {interval: 1s, clock_max_error: 0}\nmetrics: {listen: \""+metricsListen+"\"}\n"))
	text = e.metricsText(t, metricsListen)
	if got := metricValue(t, text, metrics.Alarm+`{reason="`+metrics.AlarmClock+`"}`); got != 0 {
		t.Errorf("clock alarm %v after a reload with clock_max_error: 0", got)
	}
	if got := metricValue(t, text, metrics.ClockSynchronised); got != want[kernel.Synchronised] {
		t.Errorf("%s = %v after the reload", metrics.ClockSynchronised, got)
	}
	e.cli(t, &st, "status", "--socket", socket, "--json")
	if st.Agent.Clock.Bound != "0s" || strings.Contains(strings.Join(st.Agent.Alarm, "\n"), "clock") {
		t.Errorf("after the reload: clock %+v, alarm %q", st.Agent.Clock, st.Agent.Alarm)
	}
}
