// Command blocknatd is the blocknat agent. It attaches the XDP NAT to the
// configured interfaces and keeps it running.
//
//	blocknatd --config FILE     validate, attach, run until SIGINT/SIGTERM; SIGHUP reloads FILE
//	blocknatd --replace --config FILE   the same, replacing XDP programs blocknat did not attach
//	blocknatd detach --config FILE   remove the data plane (stops translation; the guard stays)
//	blocknatd detach --remove-guard --config FILE   the same, and remove the nftables guard
//	blocknatd check --config FILE    validate the configuration and exit (offline: the router is not looked at)
//	blocknatd check --live --config FILE   the same, and look at the router: interfaces, XDP, bpffs,
//	                                 capabilities, state_dir, the API socket, the metrics address, the clock
//	blocknatd guard install|remove|show --config FILE   the nftables guard alone
//	blocknatd fleet --config FILE    the fleet service: the query API over every router's copy in PostgreSQL
//	                                 (userspace/fleet; FILE defaults to /etc/blocknat/fleet.yaml)
//	blocknatd fleet retire --config FILE --router NAME
//	                                 mark a router that left the fleet for good, so the fleet stops expecting it
//
// The guard (userspace/guard) is an nftables table that drops every packet
// from an inside prefix leaving an outside interface untranslated. The agent
// installs it before it attaches and keeps it when it stops; `guard
// install` puts it in place at boot, before the agent ever ran.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/blocknat/blocknat/loader"
	"github.com/blocknat/blocknat/userspace/agent"
	"github.com/blocknat/blocknat/userspace/config"
	"github.com/blocknat/blocknat/userspace/fleet"
	"github.com/blocknat/blocknat/userspace/guard"
	"github.com/blocknat/blocknat/userspace/pgfleet"
	"github.com/blocknat/blocknat/userspace/preflight"
)

const (
	defaultConfigPath      = "/etc/blocknat/blocknat.yaml"
	defaultFleetConfigPath = "/etc/blocknat/fleet.yaml"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// guardActions are what `blocknatd guard` does; show reads, the others
// change state.
var guardActions = []string{"install", "remove", "show"}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	verb := "run"
	if len(args) > 0 && (args[0] == "detach" || args[0] == "check" || args[0] == "run" || args[0] == "guard" || args[0] == "fleet") {
		verb, args = args[0], args[1:]
	}
	action := ""
	if verb == "guard" {
		if len(args) == 0 || !slices.Contains(guardActions, args[0]) {
			fmt.Fprintf(stderr, "usage: blocknatd guard %s --config FILE\n", strings.Join(guardActions, "|"))
			return 2
		}
		action, args = args[0], args[1:]
	}
	if verb == "fleet" && len(args) > 0 && args[0] == "retire" {
		action, args = args[0], args[1:]
	}
	fs := flag.NewFlagSet(strings.TrimSpace("blocknatd "+verb+" "+action), flag.ContinueOnError)
	fs.SetOutput(stderr)
	defaultPath := defaultConfigPath
	if verb == "fleet" {
		defaultPath = defaultFleetConfigPath
	}
	cfgPath := fs.String("config", defaultPath, "configuration `file`")
	live := fs.Bool("live", false, "check only: also look at the router as it is (interfaces, XDP, bpffs, capabilities, "+
		"state_dir, the API socket's directory, the metrics address, the clock), with the checks the agent runs at start")
	replace := fs.Bool("replace", false, "replace XDP programs on the configured interfaces that blocknat did not attach (run only)")
	router := fs.String("router", "", "fleet retire only: the `name` of the router to retire")
	removeGuard := fs.Bool("remove-guard", false, "detach only: also remove the nftables guard. Without the guard, every subscriber packet "+
		"the kernel forwards leaves with its inside address; keep it unless blocknat leaves this router for good "+
		"and the inside prefixes are routed or translated some other way")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "blocknatd %s: unexpected argument %q\n", verb, fs.Arg(0))
		return 2
	}
	if *replace && verb != "run" {
		fmt.Fprintf(stderr, "blocknatd %s: --replace only applies when running the agent\n", verb)
		return 2
	}
	if *live && verb != "check" {
		fmt.Fprintf(stderr, "blocknatd %s: --live only applies to check\n", verb)
		return 2
	}
	if *removeGuard && verb != "detach" {
		fmt.Fprintf(stderr, "blocknatd %s: --remove-guard only applies to detach\n", verb)
		return 2
	}
	if (*router != "") != (action == "retire") {
		fmt.Fprintf(stderr, "usage: blocknatd fleet retire --config FILE --router NAME (--router applies to fleet retire only, which needs it)\n")
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	if verb == "fleet" && action == "retire" {
		return runRetire(ctx, *cfgPath, *router, stdout, stderr)
	}
	if verb == "fleet" {
		return runFleet(ctx, *cfgPath, log, stderr)
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		fmt.Fprintf(stderr, "blocknatd: %v\n", err)
		return 1
	}
	switch verb {
	case "check":
		return runCheck(cfg, *cfgPath, *live, stdout)
	case "detach":
		if err := loader.Detach(cfg.BPFFSDir); err != nil {
			fmt.Fprintf(stderr, "blocknatd detach: %v\n", err)
			return 1
		}
		fmt.Fprintf(stdout, "detached: removed %s\n", cfg.BPFFSDir)
		if !*removeGuard {
			fmt.Fprintf(stdout, "the nftables guard (table inet %s) stays: untranslated subscriber packets are dropped, not forwarded\n", guard.TableName)
			return 0
		}
		return runGuard(cfg, "remove", stdout, stderr)
	case "guard":
		return runGuard(cfg, action, stdout, stderr)
	}
	// SIGHUP reloads the configuration file; a signal arriving while a
	// reload runs is kept, not lost.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	reloads := make(chan struct{}, 1)
	go func() {
		for {
			select {
			case <-hup:
				select {
				case reloads <- struct{}{}:
				default:
				}
			case <-ctx.Done():
				return
			}
		}
	}()
	if err := agent.RunWith(ctx, cfg, log, agent.Options{ReplaceXDP: *replace, ConfigPath: *cfgPath, Reloads: reloads}); err != nil {
		var refused *preflight.Error
		if errors.As(err, &refused) {
			// One line each, as `check --live` prints them: a log
			// attribute would fold them into one quoted string.
			fmt.Fprintln(stderr, "blocknatd: refusing to start; nothing was created under state_dir or bpffs_dir:")
			for _, f := range refused.Findings {
				fmt.Fprintf(stderr, "  %s\n", f.Problem())
			}
			return 1
		}
		log.Error("blocknatd failed", "err", err.Error())
		return 1
	}
	return 0
}

// runRetire marks a router retired in the fleet's database, as the
// fleet's owner role; the database keeps who did it and when.
func runRetire(ctx context.Context, path, router string, stdout, stderr io.Writer) int {
	cfg, err := fleet.LoadConfig(path)
	if err != nil {
		fmt.Fprintf(stderr, "blocknatd fleet retire: %v\n", err)
		return 1
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	db, err := pgfleet.Connect(ctx, cfg.Postgres)
	if err != nil {
		fmt.Fprintf(stderr, "blocknatd fleet retire: %v\n", err)
		return 1
	}
	defer db.Close()
	r, err := db.RetireRouter(ctx, router)
	if err != nil {
		fmt.Fprintf(stderr, "blocknatd fleet retire: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "router %s retired at %s: the fleet no longer expects it (store seq %d, audit seq %d, last ingest %s); "+
		"its records stay until retention drops them, and a delivery from it puts it back in service\n",
		r.Name, r.Retired.Format(time.RFC3339), r.Store, r.Audit, r.LastIngest.Format(time.RFC3339))
	return 0
}

// runFleet runs the fleet service until ctx ends.
func runFleet(ctx context.Context, path string, log *slog.Logger, stderr io.Writer) int {
	cfg, err := fleet.LoadConfig(path)
	if err != nil {
		fmt.Fprintf(stderr, "blocknatd fleet: %v\n", err)
		return 1
	}
	if err := fleet.Run(ctx, cfg, log); err != nil {
		log.Error("blocknatd fleet failed", "err", err.Error())
		return 1
	}
	return 0
}

// runCheck prints the configuration's verdict and then one line per check
// of the router: run when live, else each marked not checked, so that an
// offline "ok" is never taken for the router's. It exits 1 when a live
// check failed.
func runCheck(cfg *config.Config, path string, live bool, stdout io.Writer) int {
	fmt.Fprintf(stdout, "%s: ok\n", path)
	findings := preflight.Offline(cfg)
	if live {
		findings = preflight.Live(cfg, preflight.Options{})
	}
	for _, f := range findings {
		fmt.Fprintln(stdout, f)
	}
	if preflight.Failed(findings) {
		return 1
	}
	return 0
}

// runGuard installs, removes or shows the nftables guard for cfg. show
// exits 1 when the guard is not in place, so a script or a monitoring check
// can ask it.
func runGuard(cfg *config.Config, action string, stdout, stderr io.Writer) int {
	fail := func(err error) int {
		fmt.Fprintf(stderr, "blocknatd guard %s: %v\n", action, err)
		return 1
	}
	switch action {
	case "install":
		m, err := cfg.Mapping()
		if err != nil {
			return fail(err)
		}
		ex, err := cfg.Exemptions()
		if err != nil {
			return fail(err)
		}
		ch, err := guard.Install(m.Prefixes, cfg.Outside.Interfaces, ex.Destinations)
		if err != nil {
			return fail(err)
		}
		fmt.Fprintf(stdout, "guard %s: table inet %s drops IPv4 from %s leaving by %s untranslated\n",
			ch, guard.TableName, prefixesText(m.Prefixes), strings.Join(cfg.Outside.Interfaces, ", "))
	case "remove":
		if err := guard.Remove(); err != nil {
			return fail(err)
		}
		fmt.Fprintf(stdout, "guard removed: table inet %s\n", guard.TableName)
		fmt.Fprintln(stderr, "blocknatd: without the guard, subscriber packets the data plane does not translate leave with their inside addresses")
	case "show":
		st, err := guard.State()
		if err != nil {
			return fail(err)
		}
		if !st.Installed {
			fmt.Fprintf(stdout, "guard not installed (table inet %s)", guard.TableName)
			if st.Problem != "" {
				fmt.Fprintf(stdout, ": %s", st.Problem)
			}
			fmt.Fprintf(stdout, "\ndropped %d packets, %d bytes\n", st.DroppedPackets, st.DroppedBytes)
			return 1
		}
		fmt.Fprintf(stdout, "guard installed: table inet %s drops IPv4 from %s leaving by %s untranslated\ndropped %d packets, %d bytes\n",
			guard.TableName, prefixesText(st.Prefixes), strings.Join(st.Interfaces, ", "), st.DroppedPackets, st.DroppedBytes)
	}
	return 0
}

func prefixesText(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ", ")
}
