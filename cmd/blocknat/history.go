package main

import (
	"context"
	"fmt"
	"io"

	"github.com/blocknat/blocknat/userspace/api"
)

func init() {
	commands["history"] = command{
		summary: "ask the agent for every port block one subscriber held in an interval (audited)",
		run:     runHistory,
	}
}

const historySynopsis = `history --subscriber INSIDE-ADDRESS --from RFC3339 --to RFC3339 --purpose TEXT [--json] [--socket PATH]

Lists every port block the subscriber with the inside address held at any
time between --from and --to (times with a zone). The question, who asked
it and the purpose are written to the audit log.`

func runHistory(args []string, stdout, stderr io.Writer) int {
	const name = "history"
	fs := newFlagSet(name, historySynopsis, stderr)
	subscriber := fs.String("subscriber", "", "the subscriber's inside IPv4 `address`")
	from := fs.String("from", "", "start of the interval, RFC 3339 with a zone")
	to := fs.String("to", "", "end of the interval, RFC 3339 with a zone")
	purpose := fs.String("purpose", "", "purpose or case `reference` (required; audited)")
	af := addAPIFlags(fs)
	if ok, code := parseAPIFlags(fs, args); !ok {
		return code
	}
	if err := required(map[string]*string{"subscriber": subscriber, "from": from, "to": to, "purpose": purpose}); err != nil {
		return report(stderr, name, err)
	}
	req := api.HistoryRequest{Subscriber: *subscriber, From: *from, To: *to, Purpose: *purpose}
	err := withClient(*af.socket, func(ctx context.Context, c *api.Client) error {
		ans, err := c.History(ctx, req)
		if err != nil {
			return err
		}
		if *af.asJSON {
			return printJSON(stdout, ans)
		}
		printHistory(stdout, ans)
		return nil
	})
	return report(stderr, name, err)
}

func printHistory(w io.Writer, ans *api.HistoryResponse) {
	q := ans.Query
	fmt.Fprintf(w, "subscriber %s from %s to %s: ", q.Subscriber, humanTime(q.From), humanTime(q.To))
	if len(ans.Records) == 0 {
		fmt.Fprintln(w, "no record")
		fmt.Fprintln(w, "  this inside address held no port block at any time in the interval")
	} else {
		fmt.Fprintln(w, plural(len(ans.Records), "record", "records"))
	}
	for _, c := range ans.Records {
		printRecord(w, c)
	}
	fmt.Fprintf(w, "audit entry %d\n", ans.AuditSeq)
}
