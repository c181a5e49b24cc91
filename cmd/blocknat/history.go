package main

import (
	"context"
	"fmt"
	"io"

	"github.com/blocknat/blocknat/userspace/api/client"
	"github.com/blocknat/blocknat/userspace/wire"
)

func init() {
	commands["history"] = command{
		summary: "ask the agent for every port block one subscriber held in an interval (audited)",
		run:     runHistory,
	}
}

const historySynopsis = `history --subscriber INSIDE-ADDRESS|--mac MAC --from RFC3339 --to RFC3339 --purpose TEXT [--evidence FILE] [--json] [--config FILE | --socket PATH]

Lists every port block the subscriber with the inside address held at any
time between --from and --to (times with a zone), each with the DHCP leases
that held the address. With --mac it lists a device's leases in the interval
and the blocks of the addresses they held, during those leases only.
--evidence writes the answer with its audit entry and proof. The question,
who asked it and the purpose are written to the audit log.`

func runHistory(args []string, stdout, stderr io.Writer) int {
	const name = "history"
	fs := newFlagSet(name, historySynopsis, stderr)
	subscriber := fs.String("subscriber", "", "the subscriber's inside IPv4 `address`")
	mac := fs.String("mac", "", "a device's hardware `address`, resolved through the lease history")
	from := fs.String("from", "", "start of the interval, RFC 3339 with a zone")
	to := fs.String("to", "", "end of the interval, RFC 3339 with a zone")
	purpose := fs.String("purpose", "", "purpose or case `reference` (required; audited)")
	evidence := fs.String("evidence", "", "write the answer, its audit entry and proof to `file` (created, mode 0600)")
	af := addAPIFlags(fs)
	if ok, code := parseAPIFlags(fs, args); !ok {
		return code
	}
	if err := required(map[string]*string{"from": from, "to": to, "purpose": purpose}); err != nil {
		return report(stderr, name, err)
	}
	if (*subscriber == "") == (*mac == "") {
		return report(stderr, name, usagef("give one of --subscriber and --mac"))
	}
	if err := checkNewFile("--evidence", *evidence); err != nil {
		return report(stderr, name, err)
	}
	req := wire.HistoryRequest{Subscriber: *subscriber, MAC: *mac, From: *from, To: *to, Purpose: *purpose}
	err := withClient(af, func(ctx context.Context, c *client.Client) error {
		ans, err := c.History(ctx, req)
		if err != nil {
			return err
		}
		if err := writeEvidence(*evidence, ans.Evidence); err != nil {
			return err
		}
		if *af.asJSON {
			return printJSON(stdout, ans)
		}
		printHistory(stdout, ans)
		if *evidence != "" {
			fmt.Fprintf(stdout, "evidence written to %s\n", *evidence)
		}
		return nil
	})
	return report(stderr, name, err)
}

func printHistory(w io.Writer, ans *wire.HistoryResponse) {
	q := ans.Query
	who := "subscriber " + q.Subscriber.String()
	if q.MAC != "" {
		who = "device " + q.MAC
	}
	fmt.Fprintf(w, "%s from %s to %s: ", who, humanTime(q.From), humanTime(q.To))
	if len(ans.Records) == 0 {
		fmt.Fprintln(w, "no record")
		if q.MAC != "" {
			fmt.Fprintln(w, "  no address this device leased held a port block in the interval")
		} else {
			fmt.Fprintln(w, "  this inside address held no port block at any time in the interval")
		}
	} else {
		fmt.Fprintln(w, plural(len(ans.Records), "record", "records"))
	}
	if q.MAC != "" {
		fmt.Fprintf(w, "  %s:\n", plural(len(ans.Leases), "lease", "leases"))
		for _, l := range ans.Leases {
			fmt.Fprintf(w, "    %s  %s\n", l.Inside, leaseLine(l))
		}
	}
	for _, c := range ans.Records {
		printRecord(w, c)
	}
	if c := ans.Clock; c != nil {
		fmt.Fprintf(w, "the router's clock was %s when this answer was given\n", c.Sentence())
	}
	fmt.Fprintf(w, "audit entry %d\n", ans.AuditSeq)
}
