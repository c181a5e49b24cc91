package main

import (
	"context"
	"fmt"
	"io"

	"github.com/blocknat/blocknat/userspace/api/client"
	"github.com/blocknat/blocknat/userspace/wire"
)

func init() {
	commands["lookup"] = command{
		summary: "ask the agent which subscriber held a public address and port at a time (audited)",
		run:     runLookup,
	}
}

const lookupSynopsis = `lookup --ip ADDRESS --port PORT --time RFC3339 [--tolerance 2s] --purpose TEXT [--evidence FILE] [--json] [--config FILE | --socket PATH]

Asks the agent which subscriber held the public ADDRESS and source PORT at
the time. The time needs a zone: 2026-11-20T12:00:01Z or ...+01:00. A time
stands for its precision: 12:00:01Z is that whole second, 12:00:01.7Z that
tenth of a second. --tolerance widens it on both sides by the clock skew of
whoever reported it, and every subscriber who held the port in that
interval is listed, with the DHCP leases that held their inside address.
For each mapping epoch in force then, the answer also names whom the
deterministic mapping gives the port to, and the nearest record of that
block when none shows it active. --evidence writes the answer with its
audit entry and proof, for 'blocknat evidence verify'. The question, who
asked it and the purpose are written to the audit log.`

func runLookup(args []string, stdout, stderr io.Writer) int {
	const name = "lookup"
	fs := newFlagSet(name, lookupSynopsis, stderr)
	ip := fs.String("ip", "", "public IPv4 `address`")
	port := fs.Uint("port", 0, "public source `port`")
	at := fs.String("time", "", "the `time`, RFC 3339 with a zone")
	tolerance := fs.String("tolerance", "", "clock-skew `duration` to search either side of the time, e.g. 2s")
	purpose := fs.String("purpose", "", "purpose or case `reference` (required; audited)")
	evidence := fs.String("evidence", "", "write the answer, its audit entry and proof to `file` (created, mode 0600)")
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
	if err := checkNewFile("--evidence", *evidence); err != nil {
		return report(stderr, name, err)
	}
	req := wire.LookupRequest{IP: *ip, Port: uint16(*port), Time: *at, Tolerance: *tolerance, Purpose: *purpose}
	err := withClient(af, func(ctx context.Context, c *client.Client) error {
		ans, err := c.Lookup(ctx, req)
		if err != nil {
			return err
		}
		if err := writeEvidence(*evidence, ans.Evidence); err != nil {
			return err
		}
		if *af.asJSON {
			return printJSON(stdout, ans)
		}
		printLookup(stdout, req.Time, ans)
		if *evidence != "" {
			fmt.Fprintf(stdout, "evidence written to %s\n", *evidence)
		}
		return nil
	})
	return report(stderr, name, err)
}

func printLookup(w io.Writer, stated string, ans *wire.LookupResponse) {
	q := ans.Query
	fmt.Fprintf(w, "%s:%d at %s: ", q.IP, q.Port, stated)
	switch n := len(ans.Candidates); n {
	case 0:
		fmt.Fprintln(w, "no record shows a block holding this port then")
	case 1:
		fmt.Fprintln(w, "1 candidate")
	default:
		fmt.Fprintf(w, "%d candidates (compare their intervals with the searched one)\n", n)
	}
	width := "the stated time covers " + q.Precision
	if q.Tolerance != "0s" {
		width += ", widened by ±" + q.Tolerance
	}
	fmt.Fprintf(w, "  searched [%s, %s) (%s)\n", humanTime(q.From), humanTime(q.To), width)
	for _, c := range ans.Candidates {
		printRecord(w, c)
	}
	if len(ans.Owners) == 0 {
		fmt.Fprintln(w, "  no mapping epoch was in force then: the store holds no configuration for this time")
	}
	// An epoch's clock is said once: under the first record that names
	// the epoch, else under its mapping's owner.
	// In a fleet, each router numbers its own epochs.
	type routerEpoch struct {
		router string
		id     uint32
	}
	saidClock := map[routerEpoch]bool{}
	for _, c := range ans.Candidates {
		if c.EpochInForce != nil {
			router := c.Router
			if len(c.Intervals) > 0 {
				router = c.Intervals[0].Router
			}
			saidClock[routerEpoch{router, c.EpochInForce.ID}] = true
		}
	}
	for _, o := range ans.Owners {
		printOwner(w, o, !saidClock[routerEpoch{o.Router, o.Epoch.ID}])
	}
	if c := ans.Clock; c != nil {
		fmt.Fprintf(w, "the router's clock was %s when this answer was given\n", c.Sentence())
	}
	fmt.Fprintf(w, "audit entry %d\n", ans.AuditSeq)
}

// printOwner says what one epoch's deterministic mapping answers.
func printOwner(w io.Writer, o wire.Owner, withClock bool) {
	if withClock {
		defer printEpochClock(w, &o.Epoch)
	}
	router := ""
	if o.Router != "" {
		router = "router " + safeText(o.Router) + "'s "
	}
	fmt.Fprintf(w, "  mapping of %sepoch %d, in force [%s, %s): ", router, o.Epoch.ID, humanTime(o.From), humanTime(o.To))
	if !o.Mapped {
		fmt.Fprintf(w, "no subscriber (%s)\n", o.Reason)
		return
	}
	fmt.Fprintf(w, "subscriber %d, inside %s, block %s ports %d-%d\n", o.Subscriber, o.Inside, o.Public, o.PortLo, o.PortHi)
	if o.Active {
		fmt.Fprintln(w, "    a record above shows this block active then")
		return
	}
	fmt.Fprintln(w, "    no record shows this block active then")
	if o.Before == nil && o.After == nil {
		fmt.Fprintln(w, "    and the store holds no record of this block on either side")
	}
	if b := o.Before; b != nil {
		fmt.Fprintf(w, "    before: active %s .. %s, ended %s before the searched interval%s\n", humanTime(b.Start), humanTime(*b.End), b.Gap, onRouter(b.Router))
	}
	if a := o.After; a != nil {
		end := "still active"
		if a.End != nil {
			end = humanTime(*a.End)
		}
		fmt.Fprintf(w, "    after: active from %s (.. %s), %s after the searched interval%s\n", humanTime(a.Start), end, a.Gap, onRouter(a.Router))
	}
}

// onRouter names the router of a fleet's nearest record.
func onRouter(router string) string {
	if router == "" {
		return ""
	}
	return ", on router " + safeText(router)
}
