package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/blocknat/blocknat/userspace/config"
	"github.com/blocknat/blocknat/userspace/leasehook"
	"github.com/blocknat/blocknat/userspace/wire"
)

func init() {
	commands["lease"] = command{
		summary: "hand a DHCP server's lease event to the agent (dnsmasq --dhcp-script, Kea run_script)",
		run:     runLease,
	}
}

const leaseSynopsis = `lease dnsmasq|kea [--config FILE | --socket PATH] [--spool DIR] -- ARGS...

Run by the DHCP server, not by a person. dnsmasq calls its --dhcp-script as
'SCRIPT add|old|del MAC IP [HOSTNAME]' with DNSMASQ_* variables; Kea's
run_script hook calls it with the hook point's name and LEASE4_* variables.
The event goes to the agent over its API (the caller's uid needs the role
dhcp). When the agent cannot take it, it is queued in the spool directory
(default: leases.spool of --config, else ` + config.DefaultLeaseSpool + `) and
delivered, in order, by the next call or by the agent when it starts; the
command then still exits 0, so the DHCP server carries on. It exits 1 only
when an event could be neither delivered nor queued.`

// leaseSendTimeout bounds one delivery: dnsmasq runs its script calls one
// after another, so a hung agent must not hold up the next lease.
const leaseSendTimeout = 5 * time.Second

func runLease(args []string, stdout, stderr io.Writer) int {
	return runLeaseWith(args, os.Environ(), time.Now, stdout, stderr)
}

func runLeaseWith(args, environ []string, now func() time.Time, stdout, stderr io.Writer) int {
	parsers := map[string]func([]string, map[string]string, time.Time) ([]leasehook.Event, error){
		"dnsmasq": leasehook.FromDnsmasq,
		"kea":     leasehook.FromKea,
	}
	if len(args) == 0 || parsers[args[0]] == nil {
		fmt.Fprintf(stderr, "blocknat lease: want dnsmasq or kea\nusage: blocknat %s\n", leaseSynopsis)
		return exitUsage
	}
	server, parse := args[0], parsers[args[0]]
	name := "lease " + server
	fs := newFlagSet(name, leaseSynopsis, stderr)
	spoolDir := fs.String("spool", "", "queue `directory` for events the agent could not take")
	af := addAPIFlags(fs)
	positional, err := parseInterspersed(fs, args[1:])
	if err != nil {
		return flagExit(err)
	}
	env := make(map[string]string, len(environ))
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok {
			env[k] = v
		}
	}
	events, err := parse(positional, env, now())
	if err != nil {
		return report(stderr, name, err)
	}
	dir := *spoolDir
	if dir == "" {
		dir = config.DefaultLeaseSpool
		if *af.config != "" {
			cfg, err := config.Load(*af.config)
			if err != nil {
				// The event must not be lost to a broken config: queue it
				// where the default says.
				fmt.Fprintf(stderr, "blocknat %s: --config: %v\n", name, err)
			} else {
				dir = cfg.Leases.Spool
			}
		}
	}
	spool, err := leasehook.OpenSpool(dir)
	if err != nil {
		return report(stderr, name, err)
	}
	send := func(evs []leasehook.Event) error {
		c, err := af.dial()
		if err != nil {
			return err
		}
		defer c.Close()
		ctx, cancel := context.WithTimeout(context.Background(), leaseSendTimeout)
		defer cancel()
		_, err = c.Leases(ctx, leasesRequest(evs))
		return err
	}
	err = leasehook.Run(events, spool, send)
	var queued *leasehook.QueuedError
	if errors.As(err, &queued) {
		fmt.Fprintf(stderr, "blocknat %s: %v\n", name, err)
		return exitOK
	}
	return report(stderr, name, err)
}

// leasesRequest carries a hook's events as the API takes them: the same
// fields, so each converts as it is.
func leasesRequest(evs []leasehook.Event) wire.LeasesRequest {
	req := wire.LeasesRequest{Events: make([]wire.LeaseEvent, len(evs))}
	for i, e := range evs {
		req.Events[i] = wire.LeaseEvent(e)
	}
	return req
}
