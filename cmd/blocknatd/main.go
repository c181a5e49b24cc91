// Command blocknatd is the blocknat agent. It attaches the XDP NAT to the
// configured interfaces and keeps it running.
//
//	blocknatd --config FILE     validate, attach, run until SIGINT/SIGTERM; SIGHUP reloads FILE
//	blocknatd --replace --config FILE   the same, replacing XDP programs blocknat did not attach
//	blocknatd detach --config FILE   remove the data plane (stops translation)
//	blocknatd check --config FILE    validate the configuration and exit
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/blocknat/blocknat/loader"
	"github.com/blocknat/blocknat/userspace/agent"
	"github.com/blocknat/blocknat/userspace/config"
)

const defaultConfigPath = "/etc/blocknat/blocknat.yaml"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	verb := "run"
	if len(args) > 0 && (args[0] == "detach" || args[0] == "check" || args[0] == "run") {
		verb, args = args[0], args[1:]
	}
	fs := flag.NewFlagSet("blocknatd "+verb, flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", defaultConfigPath, "configuration `file`")
	replace := fs.Bool("replace", false, "replace XDP programs on the configured interfaces that blocknat did not attach (run only)")
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
	log := slog.New(slog.NewTextHandler(stderr, nil))
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		fmt.Fprintf(stderr, "blocknatd: %v\n", err)
		return 1
	}
	switch verb {
	case "check":
		fmt.Fprintf(stdout, "%s: ok\n", *cfgPath)
		return 0
	case "detach":
		if err := loader.Detach(cfg.BPFFSDir); err != nil {
			fmt.Fprintf(stderr, "blocknatd detach: %v\n", err)
			return 1
		}
		fmt.Fprintf(stdout, "detached: removed %s\n", cfg.BPFFSDir)
		return 0
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
		log.Error("blocknatd failed", "err", err.Error())
		return 1
	}
	return 0
}
