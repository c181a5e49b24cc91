package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"time"

	"github.com/blocknat/blocknat/userspace/api/client"
	"github.com/blocknat/blocknat/userspace/wire"
)

func init() {
	commands["status"] = command{
		summary: "show the agent's status: store, audit log and data plane (audited)",
		run:     runStatus,
	}
}

const statusSynopsis = `status [--json] [--socket PATH] [--wait [--timeout D]]

Shows what the agent reports about its record store, its audit log and
itself: first whether block records are being written (the alarm, the
self-check), then the figures the metrics endpoint exports. Needs the admin
role; the request is audited like every other.

With --wait it first waits until the agent reports itself ready (its data
plane translating and its start finished, when it also tells systemd
READY=1), asking again while the socket is missing or the agent is still
starting, and exits 1 if that takes longer than --timeout. Each answered
question is audited; they come a few times a second at most.`

// waitPoll is how often --wait asks again.
const waitPoll = 200 * time.Millisecond

func runStatus(args []string, stdout, stderr io.Writer) int {
	const name = "status"
	fs := newFlagSet(name, statusSynopsis, stderr)
	af := addAPIFlags(fs)
	wait := fs.Bool("wait", false, "wait until the agent is ready (translating, its start finished) before showing its status")
	timeout := fs.Duration("timeout", 30*time.Second, "with --wait: how long to wait before giving up with exit 1")
	if ok, code := parseAPIFlags(fs, args); !ok {
		return code
	}
	if af.given("timeout") && !*wait {
		return report(stderr, name, usagef("--timeout: only with --wait"))
	}
	var ans *wire.StatusResponse
	var err error
	if *wait {
		ans, err = waitReady(af, *timeout)
	} else {
		err = withClient(af, func(ctx context.Context, c *client.Client) error {
			ans, err = c.Status(ctx)
			return err
		})
	}
	if err == nil {
		if *af.asJSON {
			err = printJSON(stdout, ans)
		} else {
			err = printStatus(stdout, ans)
		}
	}
	return report(stderr, name, err)
}

// waitReady asks for the status until the agent reports itself ready, or
// timeout passes. What cannot change by waiting (no admin role, a bad
// request, wrong flags) ends the wait at once.
func waitReady(af apiFlags, timeout time.Duration) (*wire.StatusResponse, error) {
	deadline := time.Now().Add(timeout)
	for {
		var ans *wire.StatusResponse
		err := withClient(af, func(ctx context.Context, c *client.Client) (err error) {
			ans, err = c.Status(ctx)
			return err
		})
		var refused *client.Error
		switch {
		case errors.As(err, new(usageError)), errors.Is(err, fs.ErrPermission):
			// A socket this uid may not reach stays out of reach.
			return nil, err
		case errors.As(err, &refused) && refused.Status < 500:
			return nil, err
		case err == nil && ans.Agent != nil && ans.Agent.Ready:
			return ans, nil
		case err == nil:
			err = errors.New("the agent answers but is still starting (or stopping)")
		}
		if !time.Now().Before(deadline) {
			return nil, fmt.Errorf("the agent was not ready within %s: %w", timeout, err)
		}
		time.Sleep(min(waitPoll, time.Until(deadline)))
	}
}

func printStatus(w io.Writer, ans *wire.StatusResponse) error {
	st := ans.Store
	optional := func(t *time.Time) string {
		if t == nil {
			return "none"
		}
		return humanTime(*t)
	}
	fmt.Fprintln(w, "store")
	fmt.Fprintf(w, "  open records         %d\n", st.OpenRecords)
	fmt.Fprintf(w, "  epochs               %d\n", st.Epochs)
	fmt.Fprintf(w, "  day partitions       %d (oldest %s)\n", st.Partitions, optional(st.OldestPartition))
	fmt.Fprintf(w, "  retained since       %s\n", optional(st.OldestRetained))
	fmt.Fprintf(w, "  unmatched releases   %d\n", st.UnmatchedReleases)
	fmt.Fprintf(w, "  disk                 %s (records %s, index %s, open %s)\n",
		bytesText(st.DiskBytes), bytesText(st.RecordBytes), bytesText(st.IndexBytes), bytesText(st.OpenBytes))
	fmt.Fprintln(w, "audit log")
	fmt.Fprintf(w, "  entries              %d\n", ans.Audit.Entries)
	if ans.Agent != nil {
		printAgentStatus(w, *ans.Agent)
	}
	if ans.Fleet != nil {
		printFleetStatus(w, *ans.Fleet)
	}
	fmt.Fprintf(w, "audit entry %d\n", ans.AuditSeq)
	return nil
}

// printFleetStatus shows a fleet service's part: how far each router's
// copy in the database has come.
func printFleetStatus(w io.Writer, f wire.FleetStatus) {
	fmt.Fprintf(w, "fleet %s (database schema version %d)\n", safeText(f.Name), f.SchemaVersion)
	for _, a := range f.Alarm {
		fmt.Fprintf(w, "  ALARM                %s\n", safeText(a))
	}
	if len(f.Routers) == 0 {
		fmt.Fprintln(w, "  no router has replicated to the database yet")
	}
	for _, r := range f.Routers {
		last := "never"
		if r.LastIngest != nil {
			last = humanTime(*r.LastIngest)
		}
		note := ""
		if r.Stale {
			note = " (STALE: nothing delivered for longer than stale_after)"
		}
		if r.Retired != nil {
			note += " (retired " + humanTime(*r.Retired) + ")"
		}
		if r.AuditHoleEntries > 0 {
			note += fmt.Sprintf(" (%d audit entries removed by its retention before they were replicated)", r.AuditHoleEntries)
		}
		fmt.Fprintf(w, "  router %-20s store seq %d, audit seq %d, last ingest %s%s\n", safeText(r.Name), r.StoreSeq, r.AuditSeq, last, note)
	}
	ret := "not yet run"
	if !f.Retention.LastAt.IsZero() {
		ret = "last run " + humanTime(f.Retention.LastAt)
	}
	fmt.Fprintf(w, "  retention            %s (%s)\n", f.Retention.Period, ret)
	if r := f.Replication; r != nil {
		fmt.Fprintf(w, "  own audit log copy   %d of %d entries in the database, lag %s (bound %s)\n", r.AuditSent, r.AuditLast, r.Lag, r.MaxLag)
		if r.LastError != "" {
			fmt.Fprintf(w, "  last copy error      %s\n", safeText(r.LastError))
		}
	}
}

func bytesText(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
