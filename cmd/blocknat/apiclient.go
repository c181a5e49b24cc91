package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/blocknat/blocknat/userspace/api/client"
	"github.com/blocknat/blocknat/userspace/config"
	"github.com/blocknat/blocknat/userspace/wire"
)

// DefaultSocket is the agent's API socket.
const DefaultSocket = "/run/blocknat/api.sock"

// apiFlags are the flags every command that asks the agent takes.
type apiFlags struct {
	fs     *flag.FlagSet
	socket *string
	config *string
	cert   *string
	key    *string
	ca     *string
	tls    *string
	asJSON *bool
}

func addAPIFlags(fs *flag.FlagSet) apiFlags {
	return apiFlags{
		fs:     fs,
		socket: fs.String("socket", DefaultSocket, "the agent's API `socket` (overrides the one --config names)"),
		config: fs.String("config", "", "the agent's configuration `file`: its api.socket (and api.tls.listen) is where to ask"),
		cert:   fs.String("cert", "", "TLS client certificate `file` (PEM): ask over TLS instead of the unix socket"),
		key:    fs.String("key", "", "TLS client key `file` (PEM), with --cert"),
		ca:     fs.String("ca", "", "CA `file` (PEM) that signed the agent's TLS certificate, with --cert"),
		tls:    fs.String("tls", "", "the agent's TLS `address` host:port, with --cert (default: api.tls.listen of --config)"),
		asJSON: fs.Bool("json", false, "print the agent's answer as JSON"),
	}
}

// given reports whether the named flag was set on the command line.
func (af apiFlags) given(name string) bool {
	found := false
	af.fs.Visit(func(f *flag.Flag) { found = found || f.Name == name })
	return found
}

// dial finds the agent: --socket when given, else the socket (or, with
// --cert, the TLS listener) of the --config file, else the default socket.
func (af apiFlags) dial() (*client.Client, error) {
	var cfg *config.Config
	if *af.config != "" {
		var err error
		if cfg, err = config.Load(*af.config); err != nil {
			return nil, fmt.Errorf("--config: %w", err)
		}
	}
	if *af.cert != "" || *af.key != "" || *af.ca != "" {
		return af.dialTLS(cfg)
	}
	socket := *af.socket
	if cfg != nil && !af.given("socket") {
		socket = cfg.API.Socket
	}
	return client.Dial(socket)
}

func (af apiFlags) dialTLS(cfg *config.Config) (*client.Client, error) {
	if *af.cert == "" || *af.key == "" || *af.ca == "" {
		return nil, usagef("--cert, --key and --ca: give all three to ask over TLS")
	}
	addr := *af.tls
	if addr == "" && cfg != nil && cfg.API.TLS != nil {
		addr = cfg.API.TLS.Listen
	}
	if addr == "" {
		return nil, usagef("--tls: give the agent's TLS address, or a --config whose api.tls.listen names it")
	}
	cert, err := tls.LoadX509KeyPair(*af.cert, *af.key)
	if err != nil {
		return nil, fmt.Errorf("--cert/--key: %w", err)
	}
	pem, err := os.ReadFile(*af.ca)
	if err != nil {
		return nil, fmt.Errorf("--ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("--ca %s: no PEM certificate in it", *af.ca)
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, usagef("--tls: %q is not host:port", addr)
	}
	return client.DialTLS(addr, &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, ServerName: host, MinVersion: tls.VersionTLS12})
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

// withClient dials the agent and runs fn with a context that ends on
// SIGINT or SIGTERM.
func withClient(af apiFlags, fn func(ctx context.Context, c *client.Client) error) error {
	c, err := af.dial()
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
func printRecord(w io.Writer, c wire.Record) {
	fmt.Fprintf(w, "  subscriber %d  inside %s\n", c.Subscriber, c.Inside)
	switch c.Coverage {
	case wire.CoverageAll:
		fmt.Fprintln(w, "    held the port for all of the searched interval")
	case wire.CoveragePart:
		fmt.Fprintln(w, "    held the port for only part of the searched interval")
	}
	fmt.Fprintf(w, "    block %s ports %d-%d\n", c.Public, c.PortLo, c.PortHi)
	end := "still active"
	if c.End != nil {
		end = humanTime(*c.End)
	}
	fmt.Fprintf(w, "    active %s .. %s\n", humanTime(c.Start), end)
	printRouters(w, c)
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
	printEpochClock(w, c.EpochInForce)
	for _, f := range c.Flags {
		switch f {
		case wire.FlagRecovered:
			fmt.Fprintln(w, "    [recovered: found by reconciliation, not announced by the ring buffer; the start is when the kernel marked the block active]")
		default:
			fmt.Fprintf(w, "    [%s]\n", f)
		}
	}
	printLeases(w, c)
}

// printEpochClock says how far the router's clock could be trusted when
// it recorded the epoch; nothing for an epoch recorded before epochs
// carried the clock.
func printEpochClock(w io.Writer, e *wire.EpochSummary) {
	if e == nil || e.Clock == nil {
		return
	}
	fmt.Fprintf(w, "    the router's clock was %s when epoch %d was recorded (%s)\n", e.Clock.Sentence(), e.ID, humanTime(e.Clock.ReadAt))
}

// printLeases names the devices that held the record's inside address.
func printLeases(w io.Writer, c wire.Record) {
	if c.LeasesFrom.IsZero() {
		return
	}
	if len(c.Leases) == 0 {
		fmt.Fprintf(w, "    device: no DHCP lease recorded for %s then\n", c.Inside)
		return
	}
	fmt.Fprintf(w, "    device (DHCP leases of %s during %s .. %s):\n", c.Inside, humanTime(c.LeasesFrom), humanTime(c.LeasesTo))
	for _, l := range c.Leases {
		fmt.Fprintf(w, "      %s\n", leaseLine(l))
	}
}

func leaseLine(l wire.LeaseInfo) string {
	var b strings.Builder
	fmt.Fprintf(&b, "mac %s", l.MAC)
	if l.Hostname != "" {
		fmt.Fprintf(&b, " host %q", l.Hostname)
	}
	if l.ClientID != "" {
		fmt.Fprintf(&b, " client-id %s", l.ClientID)
	}
	end := "infinite, still held"
	switch {
	case l.End != nil && l.Ended:
		end = humanTime(*l.End)
	case l.End != nil:
		end = humanTime(*l.End) + " (expiry; still held)"
	}
	fmt.Fprintf(&b, "  lease %s .. %s (%s)", humanTime(l.Start), end, l.Source)
	if l.Coverage == wire.CoveragePart {
		b.WriteString(" [part of the interval only]")
	}
	if len(l.Routers) > 0 {
		fmt.Fprintf(&b, " [reported by %s]", strings.Join(l.Routers, ", "))
	}
	return b.String()
}

// printRouters names, in a fleet service's answer, the router that
// recorded the candidate or, when it merges several routers' records
// (a failover from one to the other), each router's interval.
func printRouters(w io.Writer, c wire.Record) {
	switch {
	case len(c.Intervals) > 1:
		fmt.Fprintf(w, "    recorded by %s:\n", plural(len(c.Intervals), "router record", "router records"))
		for _, iv := range c.Intervals {
			end := "still active"
			if iv.End != nil {
				end = humanTime(*iv.End)
			}
			flags := ""
			if len(iv.Flags) > 0 {
				flags = " [" + strings.Join(iv.Flags, ", ") + "]"
			}
			fmt.Fprintf(w, "      router %s: %s .. %s, epoch %d%s\n", safeText(iv.Router), humanTime(iv.Start), end, iv.Epoch, flags)
		}
	case c.Router != "":
		fmt.Fprintf(w, "    recorded by router %s\n", safeText(c.Router))
	}
}

func printEpoch(w io.Writer, e *wire.EpochSummary) {
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

func poolSummary(e *wire.EpochSummary) string {
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
