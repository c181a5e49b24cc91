package main

import (
	"cmp"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/blocknat/blocknat/userspace/wire"
)

// printAgentStatus shows a person the figures the metrics endpoint
// exports, the alarm first: it answers "are records being written?".
func printAgentStatus(w io.Writer, st wire.Status) {
	row := func(name, format string, args ...any) {
		fmt.Fprintf(w, "  %-20s %s\n", name, fmt.Sprintf(format, args...))
	}
	when := func(t time.Time) string {
		if t.IsZero() {
			return "never"
		}
		return humanTime(t)
	}
	fmt.Fprintln(w, "records")
	if len(st.Alarm) == 0 {
		row("alarm", "ok: block records are being written")
	} else {
		row("alarm", "RAISED: block records may not be written or answered from")
		for _, reason := range st.Alarm {
			row("", "%s", reason)
		}
	}
	r := st.Records
	row("last write", "%s", when(r.LastWrite))
	row("events read", "%d", r.EventsRead)
	row("records written", "%d", r.Written)
	row("dropped", "%d (recovered by the reconciler)", r.Dropped)
	sw := st.StoreWrites
	row("store commits", "%d, %d failed; mean %s, last %s, max %s", sw.Commits, sw.Errors,
		seconds(sw.MeanSeconds), seconds(sw.LastSeconds), seconds(sw.MaxSeconds))
	row("recovered", "%d, closed %d (last reconcile)", r.Recovered, r.ClosedByRecon)

	fmt.Fprintln(w, "state_dir")
	d := st.Disk
	switch {
	case d.Error != "":
		row("free", "UNKNOWN: %s", d.Error)
	case d.SizeBytes == 0:
		row("free", "not reported")
	case d.Low:
		row("free", "LOW: %s of %s, below disk.min_free %s since %s: record and lease writes are paused",
			bytesText(d.FreeBytes), bytesText(d.SizeBytes), bytesText(d.MinFreeBytes), when(d.Since))
	default:
		row("free", "%s of %s (writes pause below %s)", bytesText(d.FreeBytes), bytesText(d.SizeBytes), bytesText(d.MinFreeBytes))
	}
	switch {
	case d.ReserveBytes == 0:
		row("reserve", "none (disk.reserve: 0)")
	case d.ReserveHeldBytes == 0 && d.ReserveReleased != "":
		row("reserve", "MISSING: %s; made again once there is room", d.ReserveReleased)
	case d.ReserveHeldBytes == 0:
		row("reserve", "MISSING: made once there is disk.min_free plus %s free", bytesText(d.ReserveBytes))
	default:
		row("reserve", "%s in state_dir/reserve: delete it to free room at once", bytesText(d.ReserveHeldBytes))
	}
	if a := st.AuditLog; !a.Failing {
		row("audit log", "writing")
	} else {
		row("audit log", "CANNOT WRITE since %s, lookups refused (retried every second): %s", when(a.Since), a.LastError)
	}

	fmt.Fprintln(w, "self-check")
	sc := st.SelfCheck
	switch {
	case !sc.Enabled && !sc.Failing:
		row("state", "off (selfcheck.interval: 0)")
	case sc.Failing:
		row("state", "FAILING: %s", sc.LastError)
	case sc.Checks == 0:
		row("state", "not run yet")
	default:
		row("state", "passing")
	}
	if sc.Enabled {
		row("every", "%s", sc.Interval)
		row("checks", "%d, %d failed", sc.Checks, sc.Failures)
		row("last success", "%s", when(sc.LastSuccess))
	}

	fmt.Fprintln(w, "clock")
	cl := st.Clock
	switch {
	case cl.Error != "":
		row("state", "UNREADABLE: %s", cl.Error)
	case cl.ReadAt.IsZero():
		row("state", "not read yet")
	case !cl.Synchronised:
		row("state", "NOT SYNCHRONISED: record times and answers rest on a clock no time source disciplines; run an NTP client")
	default:
		row("state", "synchronised, estimated error %s (maximum %s)", cl.EstimatedError, cl.MaxError)
	}
	switch cl.Bound {
	case "":
		// An agent from before the clock was watched.
	case "0s":
		row("bound", "none (selfcheck.clock_max_error: 0): the clock raises no alarm")
	default:
		row("bound", "%s (selfcheck.clock_max_error)", cl.Bound)
	}
	row("read", "%s", when(cl.ReadAt))

	fmt.Fprintln(w, "guard")
	g := st.Guard
	if g.Installed {
		row("state", "installed: drops IPv4 from %s leaving by %s untranslated", strings.Join(g.Prefixes, ", "), strings.Join(g.Interfaces, ", "))
	} else {
		row("state", "NOT INSTALLED: subscriber packets the data plane passes to the kernel leave with their inside addresses")
		if g.Problem != "" {
			row("", "%s", g.Problem)
		}
	}
	row("dropped", "%d packets, %s", g.DroppedPackets, bytesText(g.DroppedBytes))
	row("found missing", "%d (since start; installed again each time)", g.Missing)

	fmt.Fprintln(w, "data plane")
	dp := st.DataPlane
	row("packets", "out %d, in %d", dp["out_packets"], dp["in_packets"])
	row("bytes", "out %s, in %s", bytesText(dp["out_bytes"]), bytesText(dp["in_bytes"]))
	row("new mappings", "%d", dp["new_flows"])
	row("block activations", "%d", dp["block_activations"])
	row("ring buffer full", "%d", dp["ringbuf_full"])
	row("drops", "%s", counters(dp, "drop_"))
	row("passed to kernel", "%s", counters(dp, "pass_"))

	fmt.Fprintln(w, "port blocks")
	if b := st.Blocks; b != nil {
		row("active", "%d of %d subscribers, %d full (every port in use, or a new flow refused in the last minute:"+
			" a new flow tries 64 random ports, so a block refuses from about 99 %% use)", b.Active, st.Subscribers, b.Full)
		row("mappings", "%d", b.Flows)
		var buckets []string
		for _, u := range b.Utilisation {
			buckets = append(buckets, fmt.Sprintf("<=%g%% %d", u.AtMost*100, u.Blocks))
		}
		row("utilisation", "mean %.1f%% of %d ports; blocks at or below: %s", b.MeanUtilisation*100, b.BlockSize, strings.Join(buckets, ", "))
	} else {
		row("active", "unknown (the kernel tables could not be read)")
	}
	if o := st.Overflow; o != nil {
		row("overflow", "%d in use, %d free (at most %d a subscriber); %d claimed, refused: %d at max_blocks, %d with none free",
			o.InUse, o.Free, o.MaxBlocks, o.Claims, o.RefusedMax, o.RefusedPool)
	}
	if p := st.PCP; p != nil {
		row("pcp", "%d tcp, %d udp mappings; %d answered, %d refused%s, %d dropped%s, %d on the suspect port",
			p.Mappings["tcp"], p.Mappings["udp"], p.RequestsAnswered, p.Refused, commonest(p.Results, wire.PCPResultSuccess, pcpRefusalsShown),
			p.Dropped, commonest(p.DroppedBy, "", len(p.DroppedBy)), p.Suspect)
	}
	if r := st.Replication; r != nil {
		state := "connected"
		if !r.Connected {
			state = "NOT CONNECTED"
			if r.LastError != "" {
				state += " (" + r.LastError + ")"
			}
		}
		row("replication", "as %s, %s; lag %s (bound %s); outbox %d waiting (%d of %d sent), audit %d waiting (%d of %d sent)",
			r.Router, state, r.Lag, r.MaxLag, r.OutboxDepth, r.StoreSent, r.StoreLast, r.AuditPending, r.AuditSent, r.AuditLast)
		if r.Stopped != "" {
			row("", "STOPPED: %s", r.Stopped)
		}
	}

	fmt.Fprintln(w, "mapping")
	row("epoch", "%d since %s", st.Epoch, when(st.EpochSince))
	row("subscribers", "%d on %d public addresses, %d ports each", st.Subscribers, st.PoolAddresses, st.BlockSize)
	fmt.Fprintln(w, "retention")
	row("period", "%s", st.Retention.Period)
	row("last sweep", "%s", when(st.Retention.LastAt))
	fmt.Fprintln(w, "agent")
	if st.Ready {
		row("state", "ready: translating, start finished")
	} else {
		row("state", "NOT READY: starting or stopping")
	}
	row("started", "%s", when(st.Started))
	row("audit chain", "%d entries", st.AuditEntries)
	for _, u := range st.Unreadable {
		row("unreadable", "%s", u)
	}
}

// counters lists the non-zero counters whose names start with prefix.
func counters(dp map[string]uint64, prefix string) string {
	var names []string
	for name, v := range dp {
		if strings.HasPrefix(name, prefix) && v > 0 {
			names = append(names, name)
		}
	}
	if len(names) == 0 {
		return "none"
	}
	slices.Sort(names)
	parts := make([]string, len(names))
	for i, name := range names {
		parts[i] = fmt.Sprintf("%s %d", name, dp[name])
	}
	return strings.Join(parts, ", ")
}

// pcpRefusalsShown is how many result codes the pcp row names: the
// commonest say what to change, the rest are in the metrics.
const pcpRefusalsShown = 3

// commonest names the n largest non-zero counts of m but skip, the largest
// first (ties by name), as " (NAME n, ...)"; "" when there is none.
func commonest(m map[string]uint64, skip string, n int) string {
	var names []string
	for name, v := range m {
		if name != skip && v > 0 {
			names = append(names, name)
		}
	}
	slices.SortFunc(names, func(a, b string) int { return cmp.Or(cmp.Compare(m[b], m[a]), cmp.Compare(a, b)) })
	if len(names) == 0 {
		return ""
	}
	parts := make([]string, 0, n)
	for _, name := range names[:min(n, len(names))] {
		parts = append(parts, fmt.Sprintf("%s %d", name, m[name]))
	}
	return " (" + strings.Join(parts, ", ") + ")"
}

func seconds(s float64) string {
	return time.Duration(s * float64(time.Second)).Round(time.Microsecond).String()
}
