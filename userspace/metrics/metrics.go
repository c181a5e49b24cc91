// Package metrics exposes blocknatd's figures to Prometheus: the data
// plane's counters, the kernel tables' occupancy, whether records are being
// written, the state of retention, audit and the self-check, and whether
// the nftables guard keeps untranslated subscriber packets in, and whether
// the clock the records rest on is synchronised.
//
// Every figure is an aggregate. No metric carries a subscriber, an address
// or a port in a label, because a scrape endpoint is read by monitoring
// systems that are not bound by the records' protection: the only labels
// are direction, reason (a drop or pass counter's name from loader.StatNames,
// or a fixed list's), event (any other data-plane counter's name), state (an
// overflow block's), and the PCP server's proto, version, opcode and result,
// each from a short list the protocols define.
//
// The collector reads one Snapshot per scrape; `blocknat status` shows the
// same Snapshot to a person, so the two can never disagree.
package metrics

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/blocknat/blocknat/loader"
	"github.com/blocknat/blocknat/userspace/audit"
	"github.com/blocknat/blocknat/userspace/clockstate"
	"github.com/blocknat/blocknat/userspace/diskspace"
	"github.com/blocknat/blocknat/userspace/events"
	"github.com/blocknat/blocknat/userspace/replicate"
	"github.com/blocknat/blocknat/userspace/store"
)

// Metric names. docs/grafana/blocknat.json uses exactly these; a test keeps
// the two in step.
const (
	PacketsTotal           = "blocknat_packets_total"
	BytesTotal             = "blocknat_bytes_total"
	DropsTotal             = "blocknat_drops_total"
	PassesTotal            = "blocknat_passes_total"
	RingbufDropsTotal      = "blocknat_ringbuf_drops_total"
	FlowsCreatedTotal      = "blocknat_flows_created_total"
	BlockActivationsTotal  = "blocknat_block_activations_total"
	DatapathEventsTotal    = "blocknat_datapath_events_total"
	ActiveBlocks           = "blocknat_active_blocks"
	OverflowBlocks         = "blocknat_overflow_blocks"
	Flows                  = "blocknat_flows"
	BlockUtilisation       = "blocknat_block_utilisation_ratio"
	BlockEventsReadTotal   = "blocknat_block_events_read_total"
	RecordsWrittenTotal    = "blocknat_records_written_total"
	RecordsDroppedTotal    = "blocknat_records_dropped_total"
	StoreWriteSeconds      = "blocknat_store_write_seconds"
	StoreWriteErrorsTotal  = "blocknat_store_write_errors_total"
	StoreOpenRecords       = "blocknat_store_open_records"
	StoreDiskBytes         = "blocknat_store_disk_bytes"
	RetentionLastSweep     = "blocknat_retention_last_sweep_timestamp_seconds"
	AuditEntries           = "blocknat_audit_entries"
	Epoch                  = "blocknat_epoch"
	SelfCheckLastSuccess   = "blocknat_selfcheck_last_success_timestamp_seconds"
	SelfCheckFailuresTotal = "blocknat_selfcheck_failures_total"
	SelfCheckChecksTotal   = "blocknat_selfcheck_checks_total"
	RecordsAlarm           = "blocknat_records_alarm"
	GuardInstalled         = "blocknat_guard_installed"
	GuardDroppedTotal      = "blocknat_guard_dropped_packets_total"
	GuardMissingTotal      = "blocknat_guard_missing_total"
	Alarm                  = "blocknat_alarm"
	StateDirFreeBytes      = "blocknat_state_dir_free_bytes"
	StateDirMinFreeBytes   = "blocknat_state_dir_min_free_bytes"
	DiskReserveBytes       = "blocknat_disk_reserve_bytes"
	APIRejectedTotal       = "blocknat_api_rejected_total"
	APIConnsRefusedTotal   = "blocknat_api_connections_refused_total"
	APIRefusalsSummarised  = "blocknat_api_refusals_summarised_total"
	ClockSynchronised      = "blocknat_clock_synchronised"
	ClockEstimatedError    = "blocknat_clock_estimated_error_seconds"
	ClockMaxError          = "blocknat_clock_max_error_seconds"
	PCPMappings            = "blocknat_pcp_mappings"
	PCPRequestsTotal       = "blocknat_pcp_requests_total"
	PCPDroppedTotal        = "blocknat_pcp_dropped_total"
	PCPSuspectTotal        = "blocknat_pcp_suspect_requests_total"
	PCPAnnouncementsTotal  = "blocknat_pcp_announcements_total"
)

// Alarm reasons: the reason label of blocknat_alarm, each 1 while it holds.
// blocknat_records_alarm is 1 while any of them is.
const (
	AlarmStoreWrites = "store_writes" // the record store refuses writes
	AlarmSelfCheck   = "selfcheck"    // a canary did not make it to a lookup
	AlarmDiskLow     = "disk_low"     // state_dir is below disk.min_free, or its free space is unreadable
	AlarmAudit       = "audit"        // the audit log cannot write, so lookups are refused
	AlarmClock       = "clock"        // the clock is not synchronised, its error is above selfcheck.clock_max_error, or unreadable
	AlarmReplication = "replication"  // changes wait longer than replicate.max_lag for PostgreSQL, or a stream stopped
)

// AlarmReasons lists every reason, in the order the alarm states them.
var AlarmReasons = []string{AlarmStoreWrites, AlarmSelfCheck, AlarmDiskLow, AlarmAudit, AlarmClock, AlarmReplication}

// Data-plane stat names (loader.StatNames) this package knows by name.
const (
	statPrefixDrop       = "drop_"
	statPrefixPass       = "pass_"
	statRingbufFull      = "ringbuf_full"
	statNewFlows         = "new_flows"
	statBlockActivations = "block_activations"
)

// The only labels any metric has.
const (
	labelDirection = "direction" // out (inside to outside) or in
	labelReason    = "reason"    // a drop or pass counter's stat name
	labelState     = "state"     // an overflow block's: in_use or free
	labelEvent     = "event"     // any other data-plane counter's stat name
	labelProto     = "proto"     // a PCP mapping's protocol: tcp or udp
	labelVersion   = "version"   // a PCP request's protocol: pcp or natpmp
	labelOpcode    = "opcode"    // a PCP request's opcode, as its RFC names it
	labelResult    = "result"    // a PCP answer's result code, as its RFC names it
	directionOut   = "out"
	directionIn    = "in"
)

// UtilisationBuckets are the upper bounds of the block utilisation
// histogram: the fraction of a block's ports held by live mappings. The
// top buckets are fine-grained because a block near full is the one whose
// subscriber is about to see new connections refused.
var UtilisationBuckets = []float64{0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1}

// Snapshot is everything one scrape reports. Parts the agent could not read
// are left at their zero value and named in Errors.
type Snapshot struct {
	// DataPlane holds the kernel's counters by stat name; nil when unread.
	DataPlane loader.Stats
	// Blocks is the kernel tables' occupancy; nil when unread.
	Blocks *BlockUsage
	// Overflow is the overflow pool's occupancy; nil when it is off or
	// unread.
	Overflow *OverflowUsage
	// PCP is the PCP server's figures; nil when it is off.
	PCP *PCPFigures
	// Replication is the copy in PostgreSQL; nil when the router does
	// not replicate.
	Replication *replicate.State
	// Records is the Recorder's view: events read, records written.
	Records events.Health
	// Writes are the record store's commit timings.
	Writes WriteStats
	// Store is what the store reports about itself, read once per
	// snapshot (status shows all of it); nil when unread.
	Store *store.Stats
	// RetentionSweep is when the last retention sweep finished; zero
	// before the first.
	RetentionSweep time.Time
	// AuditEntries is the audit chain's length.
	AuditEntries uint64
	// Epoch is the mapping epoch in force.
	Epoch uint32
	// SelfCheck is the canary's state.
	SelfCheck SelfCheckState
	// Guard is the nftables guard against untranslated subscriber
	// packets; an unreadable guard reads as not installed.
	Guard GuardFigures
	// Disk is state_dir's free space and reserve.
	Disk diskspace.State
	// Audit is whether the audit log can write.
	Audit audit.Health
	// API is what the query API turned away.
	API APIFigures
	// Clock is the last clock state the agent read.
	Clock ClockFigures
	// Errors are the parts that could not be read.
	Errors []error
}

// SelfCheckState is the state of the self-check canary.
type SelfCheckState struct {
	Enabled     bool
	Interval    time.Duration
	Checks      uint64
	Failures    uint64
	Failing     bool      // the last check failed
	LastAt      time.Time // when the last check ended
	LastSuccess time.Time
	LastError   string // of the last check, when it failed
}

// ClockFigures are the last clock state the agent read (at start, at every
// self-check, and when it records an epoch or answers a lookup) and the
// bound it is held to.
type ClockFigures struct {
	// State is the state read; its ReadAt is zero before the first read.
	State clockstate.State
	// Err is why the last read failed; "" when it did not.
	Err string
	// Bound is selfcheck.clock_max_error; 0 means the clock raises no
	// alarm.
	Bound time.Duration
}

// Problem says why the clock cannot be vouched for, "" when it can (or
// is not held to a bound, or has not been read yet).
func (c ClockFigures) Problem() string {
	switch {
	case c.Bound == 0:
		return ""
	case c.Err != "":
		return "clock state unreadable, so record times cannot be vouched for: " + c.Err
	case c.State.ReadAt.IsZero():
		return ""
	case !c.State.Synchronised:
		return "clock is not synchronised (the kernel's STA_UNSYNC is set): record times and answers rest on it; " +
			"run an NTP client (chrony, systemd-timesyncd) and wait until it has synchronised"
	case c.State.EstimatedError > c.Bound:
		return fmt.Sprintf("clock's estimated error %s is above selfcheck.clock_max_error %s: see whether the NTP client still reaches its sources (chronyc sources)",
			clockstate.FormatError(c.State.EstimatedError), clockstate.FormatError(c.Bound))
	}
	return ""
}

// GuardFigures are the nftables guard's state (userspace/guard).
type GuardFigures struct {
	Installed bool
	// Problem says what is missing when the guard's table exists but is
	// incomplete.
	Problem                      string
	Prefixes                     []netip.Prefix
	Interfaces                   []string
	DroppedPackets, DroppedBytes uint64
	// Missing counts the agent's checks that found the guard missing or
	// changed, or could not install it.
	Missing uint64
}

// APIFigures count what the query API turned away, cumulatively: requests
// net/http rejected before any handler by reason, connections closed for
// being over a cap by which cap, and refusals folded into a summary entry.
type APIFigures struct {
	Rejected           map[string]uint64
	ConnsOverCap       map[string]uint64
	RefusalsSummarised uint64
}

// Alarms says why records may not be being written or answered from;
// empty when all is well. It is what blocknat_records_alarm and `blocknat
// status` report.
func (s Snapshot) Alarms() []string {
	var out []string
	for _, reason := range AlarmReasons {
		if text := s.alarm(reason); text != "" {
			out = append(out, text)
		}
	}
	return out
}

// alarm is the sentence for one reason, "" when it does not hold.
func (s Snapshot) alarm(reason string) string {
	switch reason {
	case AlarmStoreWrites:
		if s.Records.Failing {
			return "record store refuses writes: " + s.Records.LastError
		}
	case AlarmSelfCheck:
		if s.SelfCheck.Failing {
			return "self-check failed: " + s.SelfCheck.LastError
		}
	case AlarmDiskLow:
		return s.Disk.Reason()
	case AlarmAudit:
		if s.Audit.Failing {
			return "audit log cannot write, so lookups are refused until it can (retried every second): " + s.Audit.LastError
		}
	case AlarmClock:
		return s.Clock.Problem()
	case AlarmReplication:
		if s.Replication != nil {
			return s.Replication.Behind()
		}
	}
	return ""
}

// Collector is the prometheus.Collector of one agent.
type Collector struct {
	snapshot func() Snapshot
	writes   *Writes

	packets, bytes, drops, passes, ringbuf, flowsCreated, activations, datapath *prometheus.Desc
	activeBlocks, flows, utilisation, overflow                                  *prometheus.Desc
	eventsRead, written, dropped, writeErrors, openRecords, diskBytes           *prometheus.Desc
	retention, audit, epoch, selfLast, selfFailures, selfChecks, alarm          *prometheus.Desc
	guardInstalled, guardDropped, guardMissing                                  *prometheus.Desc
	alarmBy, free, minFree, reserve                                             *prometheus.Desc
	apiRejected, apiConnsRefused, apiSummarised                                 *prometheus.Desc
	clockSynchronised, clockEstimatedError, clockMaxError                       *prometheus.Desc
	pcpMappings, pcpRequests, pcpDropped, pcpSuspect, pcpAnnouncements          *prometheus.Desc
	replication                                                                 replicationDescs
	scrapeError                                                                 *prometheus.Desc
}

// NewCollector makes a collector that calls snapshot once per scrape and
// reports writes' latency histogram.
func NewCollector(snapshot func() Snapshot, writes *Writes) *Collector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, labels, nil)
	}
	return &Collector{
		snapshot: snapshot,
		writes:   writes,
		packets:  d(PacketsTotal, "Packets translated by the data plane; direction out is inside to outside.", labelDirection),
		bytes:    d(BytesTotal, "Bytes of translated packets; direction out is inside to outside.", labelDirection),
		drops:    d(DropsTotal, "Packets the data plane dropped, by reason (the stat's name).", labelReason),
		passes:   d(PassesTotal, "Packets the data plane passed to the kernel untranslated, by reason.", labelReason),
		ringbuf: d(RingbufDropsTotal,
			"Block events the data plane could not put into the full ring buffer; the reconciler recovers their records."),
		flowsCreated: d(FlowsCreatedTotal, "Mappings the data plane created."),
		activations:  d(BlockActivationsTotal, "Idle port blocks the data plane made active."),
		datapath:     d(DatapathEventsTotal, "Other data-plane counters, by the stat's name.", labelEvent),
		activeBlocks: d(ActiveBlocks, "Port blocks active in the kernel at scrape time."),
		overflow: d(OverflowBlocks, "Overflow port blocks (ports.overflow) held by subscribers (in_use) and free, at scrape time.",
			labelState),
		flows: d(Flows, "Mappings in the kernel's flow table at scrape time."),
		utilisation: d(BlockUtilisation,
			"Active port blocks by the fraction of their ports held by mappings, at scrape time (a snapshot, not cumulative)."),
		eventsRead:   d(BlockEventsReadTotal, "Block events read from the ring buffer since the agent started."),
		written:      d(RecordsWrittenTotal, "Record changes (activations, releases, recoveries) committed to the store since the agent started."),
		dropped:      d(RecordsDroppedTotal, "Activations dropped from memory while the store refused writes; the reconciler recovers them."),
		writeErrors:  d(StoreWriteErrorsTotal, "Record store commits that failed since the agent started."),
		openRecords:  d(StoreOpenRecords, "Open block records in the store."),
		diskBytes:    d(StoreDiskBytes, "Bytes the record store occupies on disk."),
		retention:    d(RetentionLastSweep, "Unix time the last retention sweep finished; 0 before the first."),
		audit:        d(AuditEntries, "Entries in the audit log's hash chain."),
		epoch:        d(Epoch, "The mapping epoch in force."),
		selfLast:     d(SelfCheckLastSuccess, "Unix time of the last self-check whose canary was found in the store; 0 before the first."),
		selfFailures: d(SelfCheckFailuresTotal, "Self-checks whose canary did not make it from the kernel to a lookup."),
		selfChecks:   d(SelfCheckChecksTotal, "Self-checks run."),
		alarm: d(RecordsAlarm,
			"1 while any blocknat_alarm reason holds: records are not being written (store, self-check, disk), not answered from (audit), not to be trusted (clock) or not copied off the router (replication); else 0."),
		alarmBy:     d(Alarm, "1 while the alarm's reason holds: store_writes, selfcheck, disk_low, audit, clock or replication; else 0.", labelReason),
		replication: newReplicationDescs(d),
		clockSynchronised: d(ClockSynchronised,
			"1 when the kernel reports the clock synchronised (STA_UNSYNC clear) at the agent's last read; else 0. Absent before the first read or while it fails."),
		clockEstimatedError: d(ClockEstimatedError,
			"The kernel's estimate of the clock's error (adjtimex esterror) at the agent's last read; meaningless while the clock is not synchronised."),
		clockMaxError: d(ClockMaxError,
			"The kernel's bound on the clock's error (adjtimex maxerror) at the agent's last read; it grows while no NTP client updates it."),
		free:    d(StateDirFreeBytes, "Bytes free on state_dir's filesystem at the last check."),
		minFree: d(StateDirMinFreeBytes, "disk.min_free: below this, record and lease writes pause and disk_low is raised."),
		reserve: d(DiskReserveBytes, "Bytes held by the ballast file state_dir/reserve (0 when there is none)."),
		apiRejected: d(APIRejectedTotal,
			"Requests the API server rejected before any handler, by reason: bad_request, headers_too_large, bad_version, tls_handshake, other.", labelReason),
		apiConnsRefused: d(APIConnsRefusedTotal, "API connections closed at once for being over a cap, by cap: per_uid or total.", labelReason),
		apiSummarised: d(APIRefusalsSummarised,
			"Refusals of callers without a role that were past the rate limit and audited as part of a summary entry."),
		guardInstalled: d(GuardInstalled,
			"1 when the nftables guard that drops untranslated subscriber packets on the outside interfaces is in place; else 0."),
		guardDropped: d(GuardDroppedTotal,
			"Packets from an inside prefix the nftables guard stopped from leaving an outside interface untranslated."),
		guardMissing: d(GuardMissingTotal,
			"Checks that found the nftables guard missing or changed (it is installed again), or could not install it."),
		pcpMappings: d(PCPMappings, "Mappings the PCP and NAT-PMP server holds, by protocol (tcp, udp), at scrape time.", labelProto),
		pcpRequests: d(PCPRequestsTotal,
			"PCP and NAT-PMP requests answered, by protocol version (pcp, natpmp), opcode and result code.",
			labelVersion, labelOpcode, labelResult),
		pcpDropped: d(PCPDroppedTotal,
			"PCP and NAT-PMP requests left unanswered, by reason: malformed, rate_limited, refusal_rate_limited, send_failed, internal.",
			labelReason),
		pcpSuspect: d(PCPSuspectTotal,
			"PCP and NAT-PMP requests that arrived on the suspect port, having failed the inside source validation (also counted as answered or dropped)."),
		pcpAnnouncements: d(PCPAnnouncementsTotal, "PCP ANNOUNCE and NAT-PMP public address announcements sent unsolicited."),
		scrapeError:      d("blocknat_scrape_error", "A part of the agent's state could not be read for this scrape."),
	}
}

// Describe sends every descriptor.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs() {
		ch <- d
	}
	if c.writes != nil {
		c.writes.seconds.Describe(ch)
	}
}

func (c *Collector) descs() []*prometheus.Desc {
	all := []*prometheus.Desc{c.packets, c.bytes, c.drops, c.passes, c.ringbuf, c.flowsCreated, c.activations, c.datapath,
		c.activeBlocks, c.flows, c.utilisation, c.overflow, c.eventsRead, c.written, c.dropped, c.writeErrors, c.openRecords, c.diskBytes,
		c.retention, c.audit, c.epoch, c.selfLast, c.selfFailures, c.selfChecks, c.alarm,
		c.guardInstalled, c.guardDropped, c.guardMissing, c.alarmBy, c.free, c.minFree, c.reserve,
		c.apiRejected, c.apiConnsRefused, c.apiSummarised, c.clockSynchronised, c.clockEstimatedError, c.clockMaxError,
		c.pcpMappings, c.pcpRequests, c.pcpDropped, c.pcpSuspect, c.pcpAnnouncements}
	return append(all, c.replication.list()...)
}

// Collect reads one snapshot and sends it.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	s := c.snapshot()
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v)
	}
	unix := func(t time.Time) float64 {
		if t.IsZero() {
			return 0
		}
		return float64(t.UnixNano()) / 1e9
	}

	if s.DataPlane != nil {
		c.collectDataPlane(s.DataPlane, counter)
	}
	if o := s.Overflow; o != nil {
		ch <- prometheus.MustNewConstMetric(c.overflow, prometheus.GaugeValue, float64(o.InUse), "in_use")
		ch <- prometheus.MustNewConstMetric(c.overflow, prometheus.GaugeValue, float64(o.Free), "free")
	}
	if p := s.PCP; p != nil {
		c.collectPCP(ch, p, counter)
	}
	if r := s.Replication; r != nil {
		c.replication.collect(ch, r)
	}
	if b := s.Blocks; b != nil {
		gauge(c.activeBlocks, float64(b.ActiveBlocks))
		gauge(c.flows, float64(b.Flows))
		ch <- prometheus.MustNewConstHistogram(c.utilisation, uint64(b.ActiveBlocks), b.Sum, b.bucketMap())
	}
	counter(c.eventsRead, s.Records.EventsRead)
	counter(c.written, s.Records.RecordsWritten)
	counter(c.dropped, s.Records.Dropped)
	counter(c.writeErrors, s.Writes.Errors)
	if c.writes != nil {
		c.writes.seconds.Collect(ch)
	}
	if st := s.Store; st != nil {
		gauge(c.openRecords, float64(st.OpenRecords))
		gauge(c.diskBytes, float64(st.DiskBytes))
	}
	gauge(c.retention, unix(s.RetentionSweep))
	gauge(c.audit, float64(s.AuditEntries))
	gauge(c.epoch, float64(s.Epoch))
	gauge(c.selfLast, unix(s.SelfCheck.LastSuccess))
	counter(c.selfFailures, s.SelfCheck.Failures)
	counter(c.selfChecks, s.SelfCheck.Checks)
	any := 0.0
	for _, reason := range AlarmReasons {
		v := 0.0
		if s.alarm(reason) != "" {
			v, any = 1, 1
		}
		ch <- prometheus.MustNewConstMetric(c.alarmBy, prometheus.GaugeValue, v, reason)
	}
	gauge(c.alarm, any)
	gauge(c.free, float64(s.Disk.Free))
	gauge(c.minFree, float64(s.Disk.MinFree))
	gauge(c.reserve, float64(s.Disk.Held))
	for _, by := range []struct {
		d *prometheus.Desc
		m map[string]uint64
	}{{c.apiRejected, s.API.Rejected}, {c.apiConnsRefused, s.API.ConnsOverCap}} {
		for _, reason := range sortedKeys(by.m) {
			counter(by.d, by.m[reason], reason)
		}
	}
	counter(c.apiSummarised, s.API.RefusalsSummarised)
	if cl := s.Clock; cl.Err == "" && !cl.State.ReadAt.IsZero() {
		synchronised := 0.0
		if cl.State.Synchronised {
			synchronised = 1
		}
		gauge(c.clockSynchronised, synchronised)
		gauge(c.clockEstimatedError, cl.State.EstimatedError.Seconds())
		gauge(c.clockMaxError, cl.State.MaxError.Seconds())
	}
	installed := 0.0
	if s.Guard.Installed {
		installed = 1
	}
	gauge(c.guardInstalled, installed)
	counter(c.guardDropped, s.Guard.DroppedPackets)
	counter(c.guardMissing, s.Guard.Missing)
	for _, err := range s.Errors {
		// Served with the rest (promhttp.ContinueOnError): one unreadable
		// part must not hide the alarm.
		ch <- prometheus.NewInvalidMetric(c.scrapeError, err)
	}
}

func (c *Collector) collectDataPlane(dp loader.Stats, counter func(*prometheus.Desc, uint64, ...string)) {
	names := make([]string, 0, len(dp))
	for name := range dp {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		v := dp[name]
		switch kind, label := Classify(name); kind {
		case PacketsTotal:
			counter(c.packets, v, label)
		case BytesTotal:
			counter(c.bytes, v, label)
		case DropsTotal:
			counter(c.drops, v, label)
		case PassesTotal:
			counter(c.passes, v, label)
		case RingbufDropsTotal:
			counter(c.ringbuf, v)
		case FlowsCreatedTotal:
			counter(c.flowsCreated, v)
		case BlockActivationsTotal:
			counter(c.activations, v)
		default:
			counter(c.datapath, v, label)
		}
	}
}

// knownAndSeen is the label values known in advance and those counted,
// sorted: a series exists from the start, and a new value is not lost.
func knownAndSeen[V any](known []string, seen map[string]V) []string {
	out := slices.Clone(known)
	for v := range seen {
		if !slices.Contains(out, v) {
			out = append(out, v)
		}
	}
	slices.Sort(out)
	return out
}

// collectPCP exports every protocol's gauge and every known drop reason at
// 0 too, so that a dashboard's series exist from the server's start; the
// answered requests appear as they are counted, since their label
// combinations are many and most never occur.
func (c *Collector) collectPCP(ch chan<- prometheus.Metric, p *PCPFigures, counter func(*prometheus.Desc, uint64, ...string)) {
	for _, proto := range knownAndSeen(PCPProtos, p.Mappings) {
		ch <- prometheus.MustNewConstMetric(c.pcpMappings, prometheus.GaugeValue, float64(p.Mappings[proto]), proto)
	}
	requests := slices.SortedFunc(maps.Keys(p.Requests), func(a, b PCPRequest) int {
		return cmp.Or(cmp.Compare(a.Version, b.Version), cmp.Compare(a.Opcode, b.Opcode), cmp.Compare(a.Result, b.Result))
	})
	for _, r := range requests {
		counter(c.pcpRequests, p.Requests[r], r.Version, r.Opcode, r.Result)
	}
	for _, reason := range knownAndSeen(PCPDropReasons, p.Dropped) {
		counter(c.pcpDropped, p.Dropped[reason], reason)
	}
	counter(c.pcpSuspect, p.Suspect)
	counter(c.pcpAnnouncements, p.Announcements)
}

// Classify names the metric a data-plane counter is exported as, and its
// label value ("" for a metric without labels). Every stat has one: those
// this package does not know by name land in blocknat_datapath_events_total,
// so a counter added to bpf/stats.h is exported without a change here.
func Classify(stat string) (metric, label string) {
	switch stat {
	case "out_packets":
		return PacketsTotal, directionOut
	case "in_packets":
		return PacketsTotal, directionIn
	case "out_bytes":
		return BytesTotal, directionOut
	case "in_bytes":
		return BytesTotal, directionIn
	case statRingbufFull:
		return RingbufDropsTotal, ""
	case statNewFlows:
		return FlowsCreatedTotal, ""
	case statBlockActivations:
		return BlockActivationsTotal, ""
	}
	switch {
	case strings.HasPrefix(stat, statPrefixDrop):
		return DropsTotal, stat
	case strings.HasPrefix(stat, statPrefixPass):
		return PassesTotal, stat
	}
	return DatapathEventsTotal, stat
}

// Names lists every metric name this package exports, sorted.
func Names() []string {
	names := []string{
		ActiveBlocks, Alarm, APIConnsRefusedTotal, APIRejectedTotal, APIRefusalsSummarised, AuditEntries,
		BlockActivationsTotal, BlockEventsReadTotal, BlockUtilisation, BytesTotal, ClockEstimatedError, ClockMaxError, ClockSynchronised,
		DatapathEventsTotal, DiskReserveBytes, DropsTotal, Epoch, Flows, FlowsCreatedTotal, GuardDroppedTotal, GuardInstalled,
		GuardMissingTotal, OverflowBlocks, PacketsTotal, PassesTotal, PCPAnnouncementsTotal, PCPDroppedTotal, PCPMappings,
		PCPRequestsTotal, PCPSuspectTotal, RecordsAlarm,
		RecordsDroppedTotal, RecordsWrittenTotal, RetentionLastSweep, RingbufDropsTotal, SelfCheckChecksTotal,
		SelfCheckFailuresTotal, SelfCheckLastSuccess, StateDirFreeBytes, StateDirMinFreeBytes, StoreDiskBytes,
		StoreOpenRecords, StoreWriteErrorsTotal, StoreWriteSeconds,
	}
	sort.Strings(names)
	return names
}

func sortedKeys(m map[string]uint64) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// ErrPart wraps err with the part of the agent's state it concerns, for
// Snapshot.Errors.
func ErrPart(part string, err error) error { return fmt.Errorf("%s: %w", part, err) }
