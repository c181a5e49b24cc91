package main

import (
	"context"
	"fmt"
	"io"
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

const statusSynopsis = `status [--json] [--socket PATH]

Shows what the agent reports about its record store, its audit log and
itself: first whether block records are being written (the alarm, the
self-check), then the figures the metrics endpoint exports. Needs the admin
role; the request is audited like every other.`

func runStatus(args []string, stdout, stderr io.Writer) int {
	const name = "status"
	fs := newFlagSet(name, statusSynopsis, stderr)
	af := addAPIFlags(fs)
	if ok, code := parseAPIFlags(fs, args); !ok {
		return code
	}
	err := withClient(af, func(ctx context.Context, c *client.Client) error {
		ans, err := c.Status(ctx)
		if err != nil {
			return err
		}
		if *af.asJSON {
			return printJSON(stdout, ans)
		}
		return printStatus(stdout, ans)
	})
	return report(stderr, name, err)
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
	fmt.Fprintf(w, "audit entry %d\n", ans.AuditSeq)
	return nil
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
