// Command blocknat-bench runs the benchmarks that need a network bed or the
// real agent (throughput against other routers, log volume against
// conntrack session logging, memory), summarises the `go test -bench`
// outputs of the per-packet and store benchmarks, and prints one markdown
// report with every target judged. `make bench` runs it; BENCHMARKS.md
// quotes it.
//
// Every namespace it makes is named bnbench<pid>-..., deleted when it ends
// or is interrupted; a later run (or -cleanup) deletes those of a run that
// was killed.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/blocknat/blocknat/test/bench"
	"github.com/blocknat/blocknat/test/harness"
)

type options struct {
	quick    bool
	reps     int
	duration time.Duration
	sections map[string]bool
	gotest   []string
	out      string
	routers  []string
	flows    []int
}

func main() {
	var opts options
	var sections, gotest, routers, flows string
	cleanup := flag.Bool("cleanup", false, "only delete namespaces left by killed runs, then exit")
	flag.BoolVar(&opts.quick, "quick", false, "one short repetition of everything, with small workloads (CI smoke test)")
	flag.IntVar(&opts.reps, "reps", 5, "repetitions of each throughput measurement")
	flag.DurationVar(&opts.duration, "duration", 3*time.Second, "length of one throughput measurement")
	flag.StringVar(&sections, "sections", "throughput,newflows,logvolume,memory", "bed sections to run (comma-separated; empty for none)")
	flag.StringVar(&gotest, "gotest", "", "comma-separated `go test -bench` output files to summarise")
	flag.StringVar(&opts.out, "out", "", "also write the report to this file")
	flag.StringVar(&routers, "routers", strings.Join(bench.RouterNames, ","), "throughput: routers to measure, in this order")
	flag.StringVar(&flows, "flows", "1,10000,100000", "throughput: flow counts")
	flag.Parse()
	opts.sections = map[string]bool{}
	for _, s := range strings.Split(sections, ",") {
		if s = strings.TrimSpace(s); s != "" {
			opts.sections[s] = true
		}
	}
	for _, f := range strings.Split(gotest, ",") {
		if f = strings.TrimSpace(f); f != "" {
			opts.gotest = append(opts.gotest, f)
		}
	}
	for _, r := range strings.Split(routers, ",") {
		if r = strings.TrimSpace(r); r != "" {
			opts.routers = append(opts.routers, r)
		}
	}
	for _, f := range strings.Split(flows, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			fmt.Fprintf(os.Stderr, "-flows: %q is not a positive number\n", f)
			os.Exit(2)
		}
		opts.flows = append(opts.flows, n)
	}
	if opts.quick {
		opts.reps, opts.duration = 1, 300*time.Millisecond
		if !flagSet("flows") {
			opts.flows = []int{1, 10_000}
		}
	}

	// A closed pipe (| tee stopped) must end the run through its error
	// path, which deletes the namespaces, not kill it outright.
	signal.Ignore(syscall.SIGPIPE)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := bench.RemoveStale(ctx); err != nil {
		log.Error("remove stale namespaces", "err", err.Error())
	}
	if *cleanup {
		return
	}
	if err := run(ctx, opts, log); err != nil {
		log.Error("benchmark failed", "err", err.Error())
		os.Exit(1)
	}
}

func run(ctx context.Context, opts options, log *slog.Logger) (err error) {
	var report bytes.Buffer
	var targets []bench.Target
	writeMachine(&report, opts)

	var results bench.GoBenchResults
	for _, f := range opts.gotest {
		r, err := os.Open(f)
		if err != nil {
			return fmt.Errorf("go test output: %w", err)
		}
		err = bench.ParseGoBench(r, &results)
		r.Close()
		if err != nil {
			return fmt.Errorf("go test output %s: %w", f, err)
		}
	}
	if len(opts.gotest) > 0 {
		targets = append(targets, bench.WritePerPacket(&report, &results)...)
	}

	if len(opts.sections) > 0 {
		if os.Geteuid() != 0 {
			return errors.New("the bed sections need root (network namespaces, XDP)")
		}
		dir, err := os.MkdirTemp("", "blocknat-bench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		var bin harness.Binaries
		if opts.sections["logvolume"] || opts.sections["memory"] {
			if bin, err = harness.Build(ctx, filepath.Join(dir, "bin")); err != nil {
				return err
			}
		}
		bed, err := bench.NewBed(ctx, bench.Prefix("run"))
		if err != nil {
			return err
		}
		defer func() { err = errors.Join(err, bed.Close()) }()
		ts, err := runBed(ctx, &report, bed, opts, bin.Blocknatd, dir, log)
		targets = append(targets, ts...)
		if err != nil {
			return err
		}
	}

	if len(opts.gotest) > 0 {
		targets = append(targets, bench.WriteStore(&report, &results)...)
	}
	fmt.Fprintln(&report, "## Targets")
	fmt.Fprintln(&report)
	bench.WriteTargets(&report, targets)

	os.Stdout.Write(report.Bytes())
	if opts.out != "" {
		if err := os.WriteFile(opts.out, report.Bytes(), 0o644); err != nil {
			return fmt.Errorf("write report: %w", err)
		}
	}
	return nil
}

func runBed(ctx context.Context, w io.Writer, bed *bench.Bed, opts options, blocknatd, dir string, log *slog.Logger) ([]bench.Target, error) {
	var targets []bench.Target
	if opts.sections["throughput"] {
		cfg := bench.ThroughputConfig{
			Routers:      opts.routers,
			FlowCounts:   opts.flows,
			Subscribers:  1000,
			Destinations: 200,
			Reps:         opts.reps,
			Warmup:       300 * time.Millisecond,
			Duration:     opts.duration,
		}
		if opts.quick {
			cfg.Warmup = 50 * time.Millisecond
		}
		began := time.Now()
		samples, err := bench.RunThroughput(ctx, bed, cfg, log)
		if err != nil {
			return targets, fmt.Errorf("throughput: %w", err)
		}
		fmt.Fprintf(w, "## Throughput through a router namespace\n\n(%s in all)\n\n", time.Since(began).Round(time.Second))
		targets = append(targets, bench.WriteThroughput(w, cfg, samples)...)
	}
	if opts.sections["newflows"] {
		cfg := bench.NewFlowsConfig{Routers: []string{bench.RouterBlocknat, bench.RouterNftMasquerade, bench.RouterNftPortBlock},
			Flows: 100_000, Subscribers: 1000, Destinations: 200, Reps: opts.reps}
		if opts.quick {
			cfg.Flows = 10_000
		}
		began := time.Now()
		samples, err := bench.RunNewFlows(ctx, bed, cfg, log)
		if err != nil {
			return targets, fmt.Errorf("new flows: %w", err)
		}
		fmt.Fprintf(w, "## Connection establishment rate (RFC 9693)\n\n(%s in all)\n\n", time.Since(began).Round(time.Second))
		targets = append(targets, bench.WriteNewFlows(w, cfg, samples)...)
	}
	if opts.sections["logvolume"] {
		cfg := bench.LogVolumeConfig{Subscribers: 1000, ConnsPerSubscriber: 200, Destinations: 200, PacketsPerConn: 2}
		if opts.quick {
			// Still 20 000 connections: the kernel's conntrack garbage
			// collector paces itself by the average timeout of what it
			// scans, and with fewer short-lived entries it takes a minute
			// to end them.
			cfg.Subscribers = 100
		}
		lv, err := bench.RunLogVolume(ctx, bed, cfg, blocknatd, dir, log)
		if err != nil {
			return targets, fmt.Errorf("log volume: %w", err)
		}
		targets = append(targets, bench.WriteLogVolume(w, lv)...)
	}
	if opts.sections["memory"] {
		flows := 100_000
		if opts.quick {
			flows = 10_000
		}
		mem, err := bench.RunMemory(ctx, bed, flows, 1000, blocknatd, dir, log)
		if err != nil {
			return targets, fmt.Errorf("memory: %w", err)
		}
		bench.WriteMemory(w, mem)
	}
	return targets, nil
}

func flagSet(name string) bool {
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

func writeMachine(w io.Writer, opts options) {
	fmt.Fprintln(w, "# blocknat benchmark report")
	fmt.Fprintln(w)
	cpu := "unknown"
	if info, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(info), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				cpu = strings.TrimSpace(v)
				break
			}
		}
	}
	var uts syscall.Utsname
	kernel := "unknown"
	if syscall.Uname(&uts) == nil {
		kernel = utsString(uts.Release[:])
	}
	mem := "unknown"
	if info, err := os.ReadFile("/proc/meminfo"); err == nil {
		first, _, _ := strings.Cut(string(info), "\n")
		mem = strings.Join(strings.Fields(first)[1:], " ")
	}
	fmt.Fprintf(w, "- date: %s\n- cpu: %s, %d logical CPUs\n- memory: %s\n- kernel: %s\n- go: %s\n",
		time.Now().UTC().Format(time.RFC3339), cpu, runtime.NumCPU(), mem, kernel, runtime.Version())
	mode := "full"
	if opts.quick {
		mode = "quick (smoke test: numbers are not comparable)"
	}
	fmt.Fprintf(w, "- mode: %s\n\n", mode)
}

func utsString(b []int8) string {
	var s []byte
	for _, c := range b {
		if c == 0 {
			break
		}
		s = append(s, byte(c))
	}
	return string(s)
}
