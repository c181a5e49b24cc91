package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/blocknat/blocknat/userspace/api"
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
	err := withClient(af, func(ctx context.Context, c *api.Client) error {
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

func printStatus(w io.Writer, ans *api.StatusResponse) error {
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
		data, err := json.Marshal(ans.Agent)
		if err != nil {
			return fmt.Errorf("agent status: %w", err)
		}
		var doc any
		if err := json.Unmarshal(data, &doc); err != nil {
			return fmt.Errorf("agent status: %w", err)
		}
		if st, ok := blocknatdStatus(data, doc); ok {
			printAgentStatus(w, st)
		} else {
			// Not blocknatd's document: no fixed shape, so an indented
			// outline, keys sorted.
			fmt.Fprintln(w, "agent")
			printOutline(w, doc, 1)
		}
	}
	fmt.Fprintf(w, "audit entry %d\n", ans.AuditSeq)
	return nil
}

func printOutline(w io.Writer, v any, depth int) {
	indent := strings.Repeat("  ", depth)
	switch v := v.(type) {
	case map[string]any:
		keys := make([]string, 0, len(v))
		for k := range v {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			if scalar, ok := scalarText(v[k]); ok {
				fmt.Fprintf(w, "%s%-20s %s\n", indent, k, scalar)
				continue
			}
			fmt.Fprintf(w, "%s%s\n", indent, k)
			printOutline(w, v[k], depth+1)
		}
	case []any:
		for i, e := range v {
			if scalar, ok := scalarText(e); ok {
				fmt.Fprintf(w, "%s- %s\n", indent, scalar)
				continue
			}
			fmt.Fprintf(w, "%s[%d]\n", indent, i)
			printOutline(w, e, depth+1)
		}
	default:
		s, _ := scalarText(v)
		fmt.Fprintf(w, "%s%s\n", indent, s)
	}
}

func scalarText(v any) (string, bool) {
	switch v := v.(type) {
	case nil:
		return "none", true
	case string:
		return v, true
	case bool, float64:
		return fmt.Sprint(v), true
	case []any:
		if len(v) == 0 {
			return "none", true
		}
	case map[string]any:
		if len(v) == 0 {
			return "none", true
		}
	}
	return "", false
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
