package main

import (
	"context"
	"fmt"
	"io"

	"github.com/blocknat/blocknat/userspace/api"
)

func init() {
	commands["lookup"] = command{
		summary: "ask the agent which subscriber held a public address and port at a time (audited)",
		run:     runLookup,
	}
}

const lookupSynopsis = `lookup --ip ADDRESS --port PORT --time RFC3339 [--tolerance 2s] --purpose TEXT [--json] [--socket PATH]

Asks the agent which subscriber held the public ADDRESS and source PORT at
the time. The time needs a zone: 2026-11-20T12:00:01Z or ...+01:00.
--tolerance widens the time by the clock skew of whoever reported it, and
every subscriber who held the port in that window is listed. The question,
who asked it and the purpose are written to the audit log.`

func runLookup(args []string, stdout, stderr io.Writer) int {
	const name = "lookup"
	fs := newFlagSet(name, lookupSynopsis, stderr)
	ip := fs.String("ip", "", "public IPv4 `address`")
	port := fs.Uint("port", 0, "public source `port`")
	at := fs.String("time", "", "the `time`, RFC 3339 with a zone")
	tolerance := fs.String("tolerance", "", "clock-skew `duration` to search either side of the time, e.g. 2s")
	purpose := fs.String("purpose", "", "purpose or case `reference` (required; audited)")
	af := addAPIFlags(fs)
	if ok, code := parseAPIFlags(fs, args); !ok {
		return code
	}
	if err := required(map[string]*string{"ip": ip, "time": at, "purpose": purpose}); err != nil {
		return report(stderr, name, err)
	}
	if *port == 0 || *port > 65535 {
		return report(stderr, name, usagef("--port: give the public source port, 1-65535"))
	}
	req := api.LookupRequest{IP: *ip, Port: uint16(*port), Time: *at, Tolerance: *tolerance, Purpose: *purpose}
	err := withClient(*af.socket, func(ctx context.Context, c *api.Client) error {
		ans, err := c.Lookup(ctx, req)
		if err != nil {
			return err
		}
		if *af.asJSON {
			return printJSON(stdout, ans)
		}
		printLookup(stdout, req, ans)
		return nil
	})
	return report(stderr, name, err)
}

func printLookup(w io.Writer, req api.LookupRequest, ans *api.LookupResponse) {
	window := ""
	if !ans.Query.From.Equal(ans.Query.To) {
		window = " (±" + ans.Query.Tolerance + ")"
	}
	fmt.Fprintf(w, "%s:%d at %s%s: ", ans.Query.IP, ans.Query.Port, req.Time, window)
	switch n := len(ans.Candidates); n {
	case 0:
		fmt.Fprintln(w, "no candidate")
		if ans.Query.From.Equal(ans.Query.To) {
			fmt.Fprintf(w, "  searched %s: no subscriber held this port then\n", humanTime(ans.Query.Time))
		} else {
			fmt.Fprintf(w, "  searched %s .. %s: no subscriber held this port then\n", humanTime(ans.Query.From), humanTime(ans.Query.To))
		}
	case 1:
		fmt.Fprintln(w, "1 candidate")
	default:
		fmt.Fprintf(w, "%d candidates (each held the port during part of %s .. %s; compare their intervals with the time)\n",
			n, humanTime(ans.Query.From), humanTime(ans.Query.To))
	}
	for _, c := range ans.Candidates {
		printRecord(w, c)
	}
	fmt.Fprintf(w, "audit entry %d\n", ans.AuditSeq)
}
