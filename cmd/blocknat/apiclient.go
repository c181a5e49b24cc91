package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/blocknat/blocknat/userspace/api"
)

// DefaultSocket is the agent's API socket.
const DefaultSocket = "/run/blocknat/api.sock"

// apiFlags are the flags every command that asks the agent takes.
type apiFlags struct {
	socket *string
	asJSON *bool
}

func addAPIFlags(fs *flag.FlagSet) apiFlags {
	return apiFlags{
		socket: fs.String("socket", DefaultSocket, "the agent's API `socket`"),
		asJSON: fs.Bool("json", false, "print the agent's answer as JSON"),
	}
}

// parseAPIFlags parses args and rejects positional arguments, which none of
// the API commands take.
func parseAPIFlags(fs *flag.FlagSet, args []string) (ok bool, code int) {
	positional, err := parseInterspersed(fs, args)
	if err != nil {
		return false, flagExit(err)
	}
	if len(positional) > 0 {
		fmt.Fprintf(fs.Output(), "blocknat %s: unexpected argument %q\n", fs.Name(), positional[0])
		fs.Usage()
		return false, exitUsage
	}
	return true, exitOK
}

// required reports the first of the named string flags left empty.
func required(flags map[string]*string) error {
	var missing []string
	for name, v := range flags {
		if strings.TrimSpace(*v) == "" {
			missing = append(missing, "--"+name)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	// Sorted, so that the message does not change from run to run.
	slices.Sort(missing)
	return usagef("missing %s", strings.Join(missing, ", "))
}

// withClient dials the socket and runs fn with a context that ends on
// SIGINT or SIGTERM.
func withClient(socket string, fn func(ctx context.Context, c *api.Client) error) error {
	c, err := api.Dial(socket)
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return fn(ctx, c)
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// humanTime prints a time in UTC with milliseconds, or with all its digits
// when it has sub-millisecond precision: a record's time is evidence, and
// rounding it would move it.
func humanTime(t time.Time) string {
	t = t.UTC()
	if t.Nanosecond()%int(time.Millisecond) == 0 {
		return t.Format("2006-01-02T15:04:05.000Z07:00")
	}
	return t.Format(time.RFC3339Nano)
}

// printRecord prints one record for a reader without the manual.
func printRecord(w io.Writer, c api.Candidate) {
	fmt.Fprintf(w, "  subscriber %d  inside %s\n", c.Subscriber, c.Inside)
	fmt.Fprintf(w, "    block %s ports %d-%d\n", c.Public, c.PortLo, c.PortHi)
	end := "still active"
	if c.End != nil {
		end = humanTime(*c.End)
	}
	fmt.Fprintf(w, "    active %s .. %s\n", humanTime(c.Start), end)
	switch e := c.EpochInForce; {
	case e == nil:
		fmt.Fprintf(w, "    epoch %d (its parameters are no longer in the store)\n", c.Epoch)
	case e.ID != c.Epoch:
		fmt.Fprintf(w, "    epoch %d as recorded, but the store has epoch %d in force at the start (since %s): the two disagree\n",
			c.Epoch, e.ID, humanTime(e.Start))
		printEpoch(w, e)
	default:
		fmt.Fprintf(w, "    epoch %d (in force since %s)\n", e.ID, humanTime(e.Start))
		printEpoch(w, e)
	}
	for _, f := range c.Flags {
		switch f {
		case api.FlagRecovered:
			fmt.Fprintln(w, "    [recovered: found by reconciliation, not announced by the ring buffer; the start is when the kernel marked the block active]")
		default:
			fmt.Fprintf(w, "    [%s]\n", f)
		}
	}
}

func printEpoch(w io.Writer, e *api.EpochSummary) {
	prefixes := make([]string, len(e.Prefixes))
	for i, p := range e.Prefixes {
		prefixes[i] = p.String()
	}
	hash := e.Hash
	if len(hash) > 16 {
		hash = hash[:16] + "…"
	}
	fmt.Fprintf(w, "      mapping %s -> %s; ports %d-%d in blocks of %d, %d subscribers per address; parameters hash %s\n",
		strings.Join(prefixes, ", "), poolSummary(e), e.PortLo, e.PortHi, e.BlockSize, e.Ratio, hash)
}

func poolSummary(e *api.EpochSummary) string {
	switch n := len(e.Pool); {
	case n == 0:
		return "no addresses"
	case n <= 3:
		s := make([]string, n)
		for i, a := range e.Pool {
			s[i] = a.String()
		}
		return strings.Join(s, ", ")
	default:
		return fmt.Sprintf("%s .. %s (%d addresses)", e.Pool[0], e.Pool[n-1], n)
	}
}

func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}
