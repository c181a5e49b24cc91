package metrics

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"

	"github.com/blocknat/blocknat/loader"
	"github.com/blocknat/blocknat/userspace/audit"
	"github.com/blocknat/blocknat/userspace/clockstate"
	"github.com/blocknat/blocknat/userspace/diskspace"
	"github.com/blocknat/blocknat/userspace/events"
	"github.com/blocknat/blocknat/userspace/pcp"
	"github.com/blocknat/blocknat/userspace/store"
	"github.com/blocknat/blocknat/userspace/wire"
)

// dataPlane gives every stat the agent's loader knows a distinct value.
func dataPlane() loader.Stats {
	st := loader.Stats{}
	for i, name := range loader.StatNames {
		st[name] = uint64(100 + i)
	}
	return st
}

type sinkFunc func([]store.Op) error

func (f sinkFunc) Apply(ops []store.Op) error { return f(ops) }

func gather(t *testing.T, snap func() Snapshot, writes *Writes) map[string]*dto.MetricFamily {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(NewCollector(snap, writes)); err != nil {
		t.Fatal(err)
	}
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*dto.MetricFamily{}
	for _, f := range fams {
		out[f.GetName()] = f
	}
	return out
}

func value(t *testing.T, fams map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	t.Helper()
	f, ok := fams[name]
	if !ok {
		t.Fatalf("no metric %s", name)
	}
	for _, m := range f.GetMetric() {
		var got []string
		for _, l := range m.GetLabel() {
			got = append(got, l.GetName(), l.GetValue())
		}
		if !slices.Equal(got, labels) {
			continue
		}
		switch {
		case m.Counter != nil:
			return m.GetCounter().GetValue()
		case m.Gauge != nil:
			return m.GetGauge().GetValue()
		}
	}
	t.Fatalf("no %s%v", name, labels)
	return 0
}

func fullSnapshot() Snapshot {
	return Snapshot{
		DataPlane:      dataPlane(),
		Blocks:         &BlockUsage{ActiveBlocks: 3, Flows: 7, BlockSize: 4, Counts: []uint64{1, 1, 1, 2, 2, 2, 2, 3}, Sum: 1.75, Full: 1},
		Overflow:       &OverflowUsage{InUse: 2, Free: 6, MaxBlocks: 2},
		PCP:            pcpFigures(),
		Records:        events.Health{EventsRead: 11, RecordsWritten: 12, Dropped: 1},
		Writes:         WriteStats{Count: 5, Errors: 2},
		Store:          &store.Stats{OpenRecords: 3, DiskBytes: 4096},
		RetentionSweep: time.Unix(1_800_000_000, 0),
		AuditEntries:   42,
		Epoch:          2,
		SelfCheck:      SelfCheckState{Enabled: true, Checks: 4, Failures: 1, LastSuccess: time.Unix(1_800_000_100, 0)},
		Guard: GuardFigures{Installed: true, Prefixes: []netip.Prefix{netip.MustParsePrefix("100.64.0.0/24")}, Interfaces: []string{"eth1"},
			DroppedPackets: 9, DroppedBytes: 900, Missing: 2},
		Disk: diskspace.State{Limits: diskspace.Limits{MinFree: 64 << 20, Reserve: 32 << 20}, Free: 5 << 30, Held: 32 << 20},
		API: APIFigures{Rejected: map[string]uint64{"bad_request": 5, "headers_too_large": 6}, ConnsOverCap: map[string]uint64{"per_uid": 7},
			RefusalsSummarised: 8},
		Clock: ClockFigures{State: clockstate.State{Synchronised: true, EstimatedError: 12 * time.Millisecond, MaxError: 40 * time.Millisecond,
			ReadAt: time.Unix(1_800_000_200, 0)}, Bound: 100 * time.Millisecond},
	}
}

// pcpFigures are a PCP server's, with both protocols' answers, a refusal
// of each version and drops of two reasons.
func pcpFigures() *PCPFigures {
	return &PCPFigures{
		Mappings: map[string]int{"tcp": 3},
		Requests: map[PCPRequest]uint64{
			{"pcp", "MAP", "SUCCESS"}:                       20,
			{"pcp", "MAP", "NO_RESOURCES"}:                  2,
			{"pcp", "PEER", "NOT_AUTHORIZED"}:               4,
			{"natpmp", "map_udp", "Success"}:                6,
			{"natpmp", "public_address", "Success"}:         1,
			{"natpmp", "map_tcp", "Not Authorized/Refused"}: 3,
		},
		Dropped:       map[string]uint64{"rate_limited": 5, "malformed": 1},
		Suspect:       4,
		Announcements: 9,
	}
}

// fixedReasons are the reason label values of the metrics whose reasons
// are not data-plane stats.
var fixedReasons = map[string][]string{
	Alarm:                AlarmReasons,
	APIRejectedTotal:     {"bad_request", "headers_too_large"},
	APIConnsRefusedTotal: {"per_uid"},
	PCPDroppedTotal:      PCPDropReasons,
}

// pcpLabels are the values each PCP label may take in fullSnapshot's
// figures: protocol names and codes, never a subscriber's.
var pcpLabels = map[string][]string{
	labelProto:   PCPProtos,
	labelVersion: {"pcp", "natpmp"},
	labelOpcode:  {"MAP", "PEER", "map_udp", "map_tcp", "public_address"},
	labelResult:  {"SUCCESS", "NO_RESOURCES", "NOT_AUTHORIZED", "Success", "Not Authorized/Refused"},
}

// TestCollectorExportsSnapshot: every figure of a snapshot comes out under
// its documented name, every data-plane counter is exported somewhere, and
// no label is anything but a direction or a counter's name.
func TestCollectorExportsSnapshot(t *testing.T) {
	snap := fullSnapshot()
	fams := gather(t, func() Snapshot { return snap }, nil)

	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{PacketsTotal, []string{"direction", "out"}, float64(snap.DataPlane["out_packets"])},
		{PacketsTotal, []string{"direction", "in"}, float64(snap.DataPlane["in_packets"])},
		{BytesTotal, []string{"direction", "out"}, float64(snap.DataPlane["out_bytes"])},
		{BytesTotal, []string{"direction", "in"}, float64(snap.DataPlane["in_bytes"])},
		{DropsTotal, []string{"reason", "drop_block_full"}, float64(snap.DataPlane["drop_block_full"])},
		{PassesTotal, []string{"reason", "pass_ttl"}, float64(snap.DataPlane["pass_ttl"])},
		{RingbufDropsTotal, nil, float64(snap.DataPlane["ringbuf_full"])},
		{FlowsCreatedTotal, nil, float64(snap.DataPlane["new_flows"])},
		{BlockActivationsTotal, nil, float64(snap.DataPlane["block_activations"])},
		{ActiveBlocks, nil, 3},
		{Flows, nil, 7},
		{BlockEventsReadTotal, nil, 11},
		{RecordsWrittenTotal, nil, 12},
		{RecordsDroppedTotal, nil, 1},
		{StoreWriteErrorsTotal, nil, 2},
		{StoreOpenRecords, nil, 3},
		{StoreDiskBytes, nil, 4096},
		{RetentionLastSweep, nil, 1_800_000_000},
		{AuditEntries, nil, 42},
		{Epoch, nil, 2},
		{SelfCheckLastSuccess, nil, 1_800_000_100},
		{SelfCheckFailuresTotal, nil, 1},
		{SelfCheckChecksTotal, nil, 4},
		{RecordsAlarm, nil, 0},
		{GuardInstalled, nil, 1},
		{GuardDroppedTotal, nil, 9},
		{GuardMissingTotal, nil, 2},
		{Alarm, []string{"reason", AlarmDiskLow}, 0},
		{Alarm, []string{"reason", AlarmAudit}, 0},
		{StateDirFreeBytes, nil, 5 << 30},
		{StateDirMinFreeBytes, nil, 64 << 20},
		{DiskReserveBytes, nil, 32 << 20},
		{APIRejectedTotal, []string{"reason", "bad_request"}, 5},
		{APIRejectedTotal, []string{"reason", "headers_too_large"}, 6},
		{APIConnsRefusedTotal, []string{"reason", "per_uid"}, 7},
		{APIRefusalsSummarised, nil, 8},
		{ClockSynchronised, nil, 1},
		{ClockEstimatedError, nil, 0.012},
		{ClockMaxError, nil, 0.04},
		{Alarm, []string{"reason", AlarmClock}, 0},
		{PCPMappings, []string{"proto", "tcp"}, 3},
		{PCPMappings, []string{"proto", "udp"}, 0},
		{PCPRequestsTotal, []string{"opcode", "MAP", "result", "SUCCESS", "version", "pcp"}, 20},
		{PCPRequestsTotal, []string{"opcode", "PEER", "result", "NOT_AUTHORIZED", "version", "pcp"}, 4},
		{PCPRequestsTotal, []string{"opcode", "map_tcp", "result", "Not Authorized/Refused", "version", "natpmp"}, 3},
		{PCPDroppedTotal, []string{"reason", "rate_limited"}, 5},
		{PCPDroppedTotal, []string{"reason", "malformed"}, 1},
		{PCPDroppedTotal, []string{"reason", "send_failed"}, 0},
		{PCPSuspectTotal, nil, 4},
		{PCPAnnouncementsTotal, nil, 9},
	} {
		if got := value(t, fams, c.name, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}

	h := fams[BlockUtilisation].GetMetric()[0].GetHistogram()
	if h.GetSampleCount() != 3 || h.GetSampleSum() != 1.75 || len(h.GetBucket()) != len(UtilisationBuckets) {
		t.Errorf("utilisation histogram %v", h)
	}
	for i, b := range h.GetBucket() {
		if b.GetUpperBound() != UtilisationBuckets[i] || b.GetCumulativeCount() != snap.Blocks.Counts[i] {
			t.Errorf("bucket %d: %v, want le=%v count %d", i, b, UtilisationBuckets[i], snap.Blocks.Counts[i])
		}
	}

	// Every stat the data plane counts reaches some metric, with its value.
	seen := map[string]bool{}
	for _, f := range fams {
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				switch l.GetName() {
				case labelDirection:
					if l.GetValue() != directionOut && l.GetValue() != directionIn {
						t.Errorf("%s: direction %q", f.GetName(), l.GetValue())
					}
				case labelReason, labelEvent:
					if fixed, ok := fixedReasons[f.GetName()]; ok {
						if !slices.Contains(fixed, l.GetValue()) {
							t.Errorf("%s: reason %q is none of %v", f.GetName(), l.GetValue(), fixed)
						}
						break
					}
					seen[l.GetValue()] = true
					if _, ok := snap.DataPlane[l.GetValue()]; !ok {
						t.Errorf("%s: label value %q is not a stat name", f.GetName(), l.GetValue())
					}
				case labelState:
					if v := l.GetValue(); f.GetName() != OverflowBlocks || (v != "in_use" && v != "free") {
						t.Errorf("%s: state %q", f.GetName(), v)
					}
				case labelProto, labelVersion, labelOpcode, labelResult:
					if !strings.HasPrefix(f.GetName(), "blocknat_pcp_") || !slices.Contains(pcpLabels[l.GetName()], l.GetValue()) {
						t.Errorf("%s: %s %q", f.GetName(), l.GetName(), l.GetValue())
					}
				default:
					t.Errorf("%s has label %q: only direction, reason, event, state and the PCP server's proto, version, opcode and result are allowed",
						f.GetName(), l.GetName())
				}
				if _, err := netip.ParseAddr(l.GetValue()); err == nil {
					t.Errorf("%s carries an address in label %s", f.GetName(), l.GetName())
				}
			}
		}
	}
	for _, name := range loader.StatNames {
		metric, label := Classify(name)
		if label != "" && metric != PacketsTotal && metric != BytesTotal && !seen[name] {
			t.Errorf("stat %s is not exported (classified as %s)", name, metric)
		}
		if !slices.Contains(Names(), metric) {
			t.Errorf("stat %s classified as %s, which is not an exported name", name, metric)
		}
	}
}

// TestPCPMetrics: with the server off nothing of PCP is exported; on, both
// protocols' mapping gauges and every drop reason are, at 0 before the
// first mapping or drop, while requests appear as they are answered.
func TestPCPMetrics(t *testing.T) {
	snap := fullSnapshot()
	snap.PCP = nil
	for name := range gather(t, func() Snapshot { return snap }, nil) {
		if strings.HasPrefix(name, "blocknat_pcp_") {
			t.Errorf("pcp off, but %s is exported", name)
		}
	}

	snap.PCP = &PCPFigures{}
	fams := gather(t, func() Snapshot { return snap }, nil)
	for _, proto := range PCPProtos {
		if got := value(t, fams, PCPMappings, "proto", proto); got != 0 {
			t.Errorf("%s{proto=%q} = %v, want 0", PCPMappings, proto, got)
		}
	}
	for _, reason := range PCPDropReasons {
		if got := value(t, fams, PCPDroppedTotal, "reason", reason); got != 0 {
			t.Errorf("%s{reason=%q} = %v, want 0", PCPDroppedTotal, reason, got)
		}
	}
	for name, want := range map[string]float64{PCPSuspectTotal: 0, PCPAnnouncementsTotal: 0} {
		if got := value(t, fams, name); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	if f, ok := fams[PCPRequestsTotal]; ok {
		t.Errorf("no request answered, but %s has %d series", PCPRequestsTotal, len(f.GetMetric()))
	}
	if f := fams[PCPMappings]; len(f.GetMetric()) != len(PCPProtos) {
		t.Errorf("%s has %d series, want one a protocol", PCPMappings, len(f.GetMetric()))
	}
}

// TestPCPStatusOf: status sums what the metrics break down, counts both
// protocols' successes as one result and every other answer as a refusal.
func TestPCPStatusOf(t *testing.T) {
	if st := PCPStatusOf(nil); st != nil {
		t.Errorf("pcp off: status %+v, want none", st)
	}
	got := PCPStatusOf(pcpFigures())
	want := &wire.PCPStatus{
		Mappings:         map[string]int{"tcp": 3, "udp": 0},
		RequestsAnswered: 36,
		Refused:          9,
		Results: map[string]uint64{wire.PCPResultSuccess: 27, "NO_RESOURCES": 2, "NOT_AUTHORIZED": 4,
			"Not Authorized/Refused": 3},
		Dropped:       6,
		DroppedBy:     map[string]uint64{"rate_limited": 5, "malformed": 1},
		Suspect:       4,
		Announcements: 9,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("status\n%+v\nwant\n%+v", got, want)
	}
	if !PCPSuccess(pcp.Success.String()) || !PCPSuccess(pcp.NATPMPSuccess.String()) || PCPSuccess(pcp.NotAuthorized.String()) {
		t.Error("PCPSuccess does not know the protocols' success codes")
	}
	if empty := PCPStatusOf(&PCPFigures{}); empty.Mappings["udp"] != 0 || len(empty.Mappings) != 2 || empty.DroppedBy != nil {
		t.Errorf("status of a server that did nothing yet: %+v", empty)
	}
}

// TestAlarm: the alarm is raised by a failing store, a failing self-check,
// a state_dir short of space and an audit log that cannot write, each
// under its own reason, and by nothing else; an unreadable part does not
// hide it.
func TestAlarm(t *testing.T) {
	for _, c := range []struct {
		name   string
		edit   func(*Snapshot)
		want   float64
		reason string
	}{
		{"healthy", func(*Snapshot) {}, 0, ""},
		{"store refuses writes", func(s *Snapshot) { s.Records.Failing, s.Records.LastError = true, "disk full" }, 1, AlarmStoreWrites},
		{"self-check failed", func(s *Snapshot) { s.SelfCheck.Failing, s.SelfCheck.LastError = true, "canary 3 not found" }, 1, AlarmSelfCheck},
		{"self-check failed, data plane unreadable", func(s *Snapshot) {
			s.SelfCheck.Failing, s.SelfCheck.LastError = true, "canary 3 not found"
			s.DataPlane, s.Blocks = nil, nil
			s.Errors = []error{errors.New("read stats: bad fd")}
		}, 1, AlarmSelfCheck},
		{"state_dir low", func(s *Snapshot) { s.Disk.Low, s.Disk.Free = true, 1<<20 }, 1, AlarmDiskLow},
		{"state_dir unreadable", func(s *Snapshot) { s.Disk.Err = "statfs: permission denied" }, 1, AlarmDiskLow},
		{"audit log cannot write", func(s *Snapshot) { s.Audit = audit.Health{Failing: true, LastError: "no space left on device"} }, 1, AlarmAudit},
		{"clock not synchronised", func(s *Snapshot) { s.Clock.State.Synchronised = false }, 1, AlarmClock},
		{"clock error above the bound", func(s *Snapshot) { s.Clock.State.EstimatedError = 101 * time.Millisecond }, 1, AlarmClock},
		{"clock error at the bound", func(s *Snapshot) { s.Clock.State.EstimatedError = 100 * time.Millisecond }, 0, ""},
		{"clock unreadable", func(s *Snapshot) { s.Clock.Err = "adjtimex: operation not permitted" }, 1, AlarmClock},
		// clock_max_error: 0 turns the clock alarm off, not the figures.
		{"clock not synchronised, alarm off", func(s *Snapshot) { s.Clock.State.Synchronised, s.Clock.Bound = false, 0 }, 0, ""},
		// Before the first read there is nothing to raise the alarm on.
		{"clock not read yet", func(s *Snapshot) { s.Clock.State = clockstate.State{} }, 0, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			snap := fullSnapshot()
			c.edit(&snap)
			reg := prometheus.NewRegistry()
			reg.MustRegister(NewCollector(func() Snapshot { return snap }, nil))
			fams, err := reg.Gather()
			if (err != nil) != (len(snap.Errors) > 0) {
				t.Errorf("gather error %v with snapshot errors %v", err, snap.Errors)
			}
			byName := map[string]*dto.MetricFamily{}
			for _, f := range fams {
				byName[f.GetName()] = f
			}
			if got := value(t, byName, RecordsAlarm); got != c.want {
				t.Errorf("alarm %v, want %v (reasons %q)", got, c.want, snap.Alarms())
			}
			for _, reason := range AlarmReasons {
				want := 0.0
				if reason == c.reason {
					want = 1
				}
				if got := value(t, byName, Alarm, "reason", reason); got != want {
					t.Errorf("%s{reason=%q} = %v, want %v", Alarm, reason, got, want)
				}
			}
			if c.reason == AlarmClock && !strings.Contains(strings.Join(snap.Alarms(), ""), "clock") {
				t.Errorf("alarm sentences %q do not name the clock", snap.Alarms())
			}
			if c.want == 1 && len(snap.Alarms()) != 1 {
				t.Errorf("alarm sentences %q, want exactly one", snap.Alarms())
			}
		})
	}
}

// TestWritesTimesAndCountsErrors: the sink wrapper passes batches through,
// times each commit, and counts the failed ones.
func TestWritesTimesAndCountsErrors(t *testing.T) {
	fail := false
	var got int
	w := NewWrites(sinkFunc(func(ops []store.Op) error {
		time.Sleep(2 * time.Millisecond)
		got += len(ops)
		if fail {
			return errors.New("disk full")
		}
		return nil
	}))
	if err := w.Apply(make([]store.Op, 3)); err != nil {
		t.Fatal(err)
	}
	fail = true
	if err := w.Apply(make([]store.Op, 2)); err == nil {
		t.Fatal("a failed write was reported as written")
	}
	st := w.Stats()
	if got != 5 || st.Count != 2 || st.Errors != 1 || st.Last < 2*time.Millisecond || st.Max < st.Last || st.Mean < 2*time.Millisecond {
		t.Errorf("ops %d, stats %+v", got, st)
	}
	fams := gather(t, func() Snapshot { return Snapshot{Writes: st} }, w)
	h := fams[StoreWriteSeconds].GetMetric()[0].GetHistogram()
	if h.GetSampleCount() != 2 || h.GetSampleSum() < 0.004 {
		t.Errorf("write latency histogram %v, want 2 samples of at least 2ms", h)
	}
	if v := value(t, fams, StoreWriteErrorsTotal); v != 1 {
		t.Errorf("write errors %v, want 1", v)
	}
}

// TestMetricNamesLint: the names follow Prometheus conventions (units,
// _total on counters, help text).
func TestMetricNamesLint(t *testing.T) {
	w := NewWrites(sinkFunc(func([]store.Op) error { return nil }))
	_ = w.Apply(nil)
	reg := prometheus.NewRegistry()
	reg.MustRegister(NewCollector(fullSnapshot, w))
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	problems, err := promlint.NewWithMetricFamilies(fams).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
	var names []string
	for _, f := range fams {
		names = append(names, f.GetName())
	}
	slices.Sort(names)
	if !slices.Equal(names, Names()) {
		t.Errorf("exported %v\nNames() %v", names, Names())
	}
}

// TestDashboardUsesExportedNames: the Grafana dashboard queries exactly the
// metrics this package exports, all of them and nothing else.
func TestDashboardUsesExportedNames(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "..", "docs", "grafana", "blocknat.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Title  string `json:"title"`
		UID    string `json:"uid"`
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatalf("dashboard is not valid JSON: %v", err)
	}
	if dash.Title == "" || dash.UID == "" || len(dash.Panels) == 0 {
		t.Fatalf("dashboard without title, uid or panels")
	}
	nameRE := regexp.MustCompile(`blocknat_[a-z_]+`)
	used := map[string]bool{}
	for _, p := range dash.Panels {
		for _, target := range p.Targets {
			for _, n := range nameRE.FindAllString(target.Expr, -1) {
				base := n
				for _, suffix := range []string{"_bucket", "_sum", "_count"} {
					if trimmed, ok := strings.CutSuffix(n, suffix); ok && (trimmed == StoreWriteSeconds || trimmed == BlockUtilisation) {
						base = trimmed
					}
				}
				if !slices.Contains(Names(), base) {
					t.Errorf("panel %q queries %s, which blocknatd does not export", p.Title, n)
				}
				used[base] = true
			}
		}
	}
	for _, n := range Names() {
		if !used[n] {
			t.Errorf("the dashboard shows nothing of %s", n)
		}
	}
}

// TestServe: /metrics answers over HTTP with the alarm, and stops with its
// context.
func TestServe(t *testing.T) {
	ln, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(ln.Addr().String()); err == nil || !strings.Contains(err.Error(), "metrics.listen") {
		t.Errorf("second listener on a taken port: %v, want an error naming metrics.listen", err)
	}
	reg, err := Registry(NewCollector(fullSnapshot, nil))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, ln, reg, nil) }()
	resp, err := http.Get("http://" + ln.Addr().String() + Path)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), RecordsAlarm+" 0") || !strings.Contains(string(body), "go_goroutines") {
		t.Errorf("GET %s: %d\n%s", Path, resp.StatusCode, body)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Serve after cancel: %v", err)
	}
}

// TestGuardMetrics: a missing or unreadable guard reads 0, never absent,
// and does not raise the records alarm (it is its own alert).
func TestGuardMetrics(t *testing.T) {
	snap := fullSnapshot()
	snap.Guard = GuardFigures{Missing: 3}
	snap.Errors = []error{ErrPart("nftables guard", errors.New("netlink: operation not permitted"))}
	reg := prometheus.NewRegistry()
	reg.MustRegister(NewCollector(func() Snapshot { return snap }, nil))
	fams, err := reg.Gather()
	if err == nil {
		t.Error("an unreadable guard was not reported as a scrape error")
	}
	byName := map[string]*dto.MetricFamily{}
	for _, f := range fams {
		byName[f.GetName()] = f
	}
	for name, want := range map[string]float64{GuardInstalled: 0, GuardDroppedTotal: 0, GuardMissingTotal: 3, RecordsAlarm: 0} {
		if got := value(t, byName, name); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
}
