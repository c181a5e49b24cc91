package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/blocknat/blocknat/test/testutil"
	"github.com/blocknat/blocknat/userspace/store"
)

// LogVolumeConfig is the workload both loggers see: every subscriber
// opens ConnsPerSubscriber connections, half TCP and half UDP, to
// Destinations remote addresses, each connection PacketsPerConn packets.
type LogVolumeConfig struct {
	Subscribers        int
	ConnsPerSubscriber int
	Destinations       int
	PacketsPerConn     int
}

// LogVolume is what each way of logging wrote for the workload.
type LogVolume struct {
	Config      LogVolumeConfig
	Connections int

	// conntrack -E -e NEW,DESTROY -o timestamp, as an operator logs
	// sessions behind nftables masquerade.
	ConntrackNew, ConntrackDestroy int
	ConntrackBytes                 int64
	ConntrackLost                  bool // conntrack reported ENOBUFS
	ConntrackSample                []string

	// blocknatd's record store for the same workload.
	Records            int
	RecordSubscribers  int
	StoreDiskBytes     uint64 // the store directory as the agent left it
	StoreSettledBytes  uint64 // after a sweep flushed and compacted it
	StoreKeyspaceBytes uint64 // Pebble's estimate for the r, s, o, p keyspaces
	RecordMarginal     float64
}

// probeWorkload is a flow outside the workload, a new one each time,
// sent until its event shows that the logger is listening; its events are
// left out of the counts.
var probeWorkload = Workload{Flows: 1000, FirstSourcePort: 60000, DestPort: 9}

const probeMark = " dport=9 "

// eventCounter counts conntrack event lines as conntrack writes them.
type eventCounter struct {
	mu                           sync.Mutex
	partial                      []byte
	bytes                        int64
	created, destroyed           int
	probeCreated, probeDestroyed int
	sample                       []string
}

func (c *eventCounter) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.partial = append(c.partial, p...)
	for {
		i := bytes.IndexByte(c.partial, '\n')
		if i < 0 {
			break
		}
		line := string(c.partial[:i+1])
		c.partial = c.partial[i+1:]
		if strings.Contains(line, probeMark) {
			if strings.Contains(line, "[NEW]") {
				c.probeCreated++
			} else if strings.Contains(line, "[DESTROY]") {
				c.probeDestroyed++
			}
			continue
		}
		c.bytes += int64(len(line))
		switch {
		case strings.Contains(line, "[NEW]"):
			c.created++
		case strings.Contains(line, "[DESTROY]"):
			c.destroyed++
		}
		if len(c.sample) < 2 || (len(c.sample) < 4 && strings.Contains(line, "[DESTROY]") && strings.Contains(line, "tcp")) {
			c.sample = append(c.sample, strings.TrimSpace(line))
		}
	}
	return len(p), nil
}

func (c *eventCounter) counts() (created, destroyed int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.created, c.destroyed
}

func (c *eventCounter) probes() (created, destroyed int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.probeCreated, c.probeDestroyed
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(ctx context.Context, timeout time.Duration, what string, cond func() (bool, error)) error {
	deadline := time.Now().Add(timeout)
	for {
		ok, err := cond()
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not within %s", what, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (cfg LogVolumeConfig) workloads() []Workload {
	half := cfg.Subscribers * cfg.ConnsPerSubscriber / 2
	return []Workload{
		{Flows: half, Subscribers: cfg.Subscribers, Destinations: cfg.Destinations, Proto: unix.IPPROTO_TCP, FirstSourcePort: 20000},
		{Flows: half, Subscribers: cfg.Subscribers, Destinations: cfg.Destinations, Proto: unix.IPPROTO_UDP, FirstSourcePort: 10000},
	}
}

// RunLogVolume runs the workload through nftables masquerade with
// conntrack event logging, then through blocknatd, and measures what each
// wrote. bin is a built blocknatd, dir a scratch directory.
func RunLogVolume(ctx context.Context, bed *Bed, cfg LogVolumeConfig, bin, dir string, log *slog.Logger) (lv LogVolume, err error) {
	lv.Config = cfg
	var gens []*Generator
	defer func() {
		for _, g := range gens {
			err = errors.Join(err, g.Close())
		}
	}()
	for _, w := range append(cfg.workloads(), probeWorkload) {
		g, err := NewGenerator(bed, w)
		if err != nil {
			return lv, err
		}
		gens = append(gens, g)
		if w != probeWorkload {
			lv.Connections += g.Workload().Flows
		}
	}
	probe, work := gens[len(gens)-1], gens[:len(gens)-1]
	sink, err := NewSink(bed, false)
	if err != nil {
		return lv, err
	}
	defer func() { err = errors.Join(err, sink.Close()) }()

	if err := conntrackLog(ctx, bed, &lv, probe, work, cfg.PacketsPerConn); err != nil {
		return lv, fmt.Errorf("conntrack logging: %w", err)
	}
	log.Info("log volume: conntrack", "connections", lv.Connections, "new", lv.ConntrackNew, "destroy", lv.ConntrackDestroy, "bytes", lv.ConntrackBytes)
	if err := blocknatLog(ctx, bed, &lv, work, cfg.PacketsPerConn, bin, dir); err != nil {
		return lv, fmt.Errorf("blocknat records: %w", err)
	}
	log.Info("log volume: blocknat", "records", lv.Records, "store_bytes", lv.StoreSettledBytes)
	return lv, nil
}

func conntrackLog(ctx context.Context, bed *Bed, lv *LogVolume, probe *Generator, work []*Generator, packets int) (err error) {
	router, err := NewRouter(RouterNftMasquerade)
	if err != nil {
		return err
	}
	if err := router.Start(ctx, bed); err != nil {
		return err
	}
	defer func() { err = errors.Join(err, router.Stop(context.WithoutCancel(ctx), bed)) }()

	// Unanswered connections time out quickly here, so that every one
	// ends (and logs its DESTROY) within the run, the way it would later
	// on a real router; set before any connection exists, restored after.
	restore, err := setSysctls(bed, [][2]string{
		{"net/netfilter/nf_conntrack_udp_timeout", "3"},
		{"net/netfilter/nf_conntrack_tcp_timeout_syn_sent", "3"},
	})
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, restore()) }()

	events := &eventCounter{}
	stderr := &testutil.Buffer{}
	cmd := bed.Router.Command(context.WithoutCancel(ctx), "conntrack", "-E", "-e", "NEW,DESTROY", "-o", "timestamp")
	cmd.Stdout, cmd.Stderr = events, stderr
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start conntrack -E: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		cmd.Process.Signal(syscall.SIGINT)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		lv.ConntrackLost = strings.Contains(stderr.String(), "ENOBUFS")
	}()

	if err := waitFor(ctx, 10*time.Second, "conntrack -E listening", func() (bool, error) {
		if err := probe.Send(1); err != nil {
			return false, err
		}
		created, _ := events.probes()
		return created > 0, nil
	}); err != nil {
		return fmt.Errorf("%w (stderr: %s)", err, stderr.String())
	}
	// conntrack 1.4.7 applies --buffer-size to its request socket, not
	// to the one events arrive on (strace shows it), so a burst of more
	// than about a hundred events overflows the default buffer and is
	// lost. Enlarge every netlink socket of the process instead.
	if err := enlargeNetlinkBuffers(cmd.Process.Pid, 1<<30); err != nil {
		return err
	}
	expected := 0
	for _, g := range work {
		flows := g.Workload().Flows
		if err := g.Send(uint64(flows * packets)); err != nil {
			return err
		}
		expected += flows
		if err := waitFor(ctx, 120*time.Second, "NEW events", func() (bool, error) {
			created, _ := events.counts()
			return created >= expected, nil
		}); err != nil {
			created, _ := events.counts()
			return fmt.Errorf("%w: %d of %d (conntrack: %s)", err, created, expected, strings.TrimSpace(stderr.String()))
		}
	}
	// Every session ends by timing out, as on a router: the short
	// timeouts set above let the kernel's garbage collector end them all
	// within seconds, each with the DESTROY event an operator logs.
	done := func() (bool, error) {
		created, destroyed := events.counts()
		probeCreated, probeDestroyed := events.probes()
		return destroyed >= created && probeDestroyed >= probeCreated, nil
	}
	if err := waitFor(ctx, 120*time.Second, "DESTROY events", done); err != nil {
		created, destroyed := events.counts()
		return fmt.Errorf("%w: %d NEW, %d DESTROY", err, created, destroyed)
	}
	events.mu.Lock()
	defer events.mu.Unlock()
	lv.ConntrackNew = events.created
	lv.ConntrackDestroy = events.destroyed
	lv.ConntrackBytes = events.bytes
	lv.ConntrackSample = events.sample
	return nil
}

// setSysctls sets values in the router namespace and returns a function
// that puts the old ones back.
func setSysctls(bed *Bed, settings [][2]string) (func() error, error) {
	var old [][2]string
	err := bed.Router.Do(func() error {
		for _, s := range settings {
			v, err := os.ReadFile(filepath.Join("/proc/sys", s[0]))
			if err != nil {
				return err
			}
			old = append(old, [2]string{s[0], strings.TrimSpace(string(v))})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read router sysctls: %w", err)
	}
	if err := writeSysctls(bed.Router, settings); err != nil {
		return nil, err
	}
	return func() error { return writeSysctls(bed.Router, old) }, nil
}

// enlargeNetlinkBuffers sets the receive buffer of every netlink socket
// of process pid, reaching them through pidfd_getfd.
func enlargeNetlinkBuffers(pid, size int) error {
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return fmt.Errorf("pidfd of conntrack (pid %d): %w", pid, err)
	}
	defer unix.Close(pidfd)
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return fmt.Errorf("fds of conntrack: %w", err)
	}
	enlarged := 0
	for _, e := range fds {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		dup, err := unix.PidfdGetfd(pidfd, fd, 0)
		if err != nil {
			continue // closed meanwhile
		}
		if domain, err := unix.GetsockoptInt(dup, unix.SOL_SOCKET, unix.SO_DOMAIN); err == nil && domain == unix.AF_NETLINK {
			if err := unix.SetsockoptInt(dup, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, size); err != nil {
				unix.Close(dup)
				return fmt.Errorf("conntrack fd %d: SO_RCVBUFFORCE: %w", fd, err)
			}
			enlarged++
		}
		unix.Close(dup)
	}
	if enlarged == 0 {
		return fmt.Errorf("conntrack (pid %d) has no netlink socket", pid)
	}
	return nil
}

func blocknatLog(ctx context.Context, bed *Bed, lv *LogVolume, work []*Generator, packets int, bin, dir string) (err error) {
	agentDir := filepath.Join(dir, "logvolume-agent")
	// Short timeouts, so that every block is released (its record
	// closed) soon after the workload ends, as it would be an idle
	// period later on a real router.
	agent, err := StartAgent(ctx, bed, bin, agentDir,
		"timeouts: {udp: 1s, tcp_transitory: 1s, tcp_established: 1s, block_idle: 1s}\nintervals: {sweep: 200ms}\n")
	if err != nil {
		return err
	}
	stopped := false
	defer func() {
		if !stopped {
			err = errors.Join(err, agent.Stop())
		}
	}()
	for _, g := range work {
		if err := g.Send(uint64(g.Workload().Flows * packets)); err != nil {
			return err
		}
	}
	pinned, err := agent.Pinned()
	if err != nil {
		return err
	}
	activeWas := 0
	err = waitFor(ctx, 60*time.Second, "every block released", func() (bool, error) {
		active, err := pinned.ActiveSubscribers()
		if err != nil {
			return false, err
		}
		activeWas = max(activeWas, len(active))
		flows, err := pinned.Flows()
		return len(active) == 0 && len(flows) == 0, err
	})
	pinned.Close()
	if err != nil {
		return err
	}
	stopped = true
	if err := agent.Stop(); err != nil {
		return err
	}
	return measureStore(agent.StorePath(), lv)
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func measureStore(path string, lv *LogVolume) error {
	s, err := store.Open(path, store.Options{Logger: quietLogger()})
	if err != nil {
		return err
	}
	defer s.Close()
	before, err := s.Stats()
	if err != nil {
		return err
	}
	lv.StoreDiskBytes = before.DiskBytes
	var records []store.Record
	subs := map[uint32]bool{}
	if err := s.Export(time.Unix(0, 0), time.Now().Add(time.Hour), func(r store.Record) error {
		records = append(records, r)
		subs[r.Subscriber] = true
		return nil
	}); err != nil {
		return err
	}
	lv.Records, lv.RecordSubscribers = len(records), len(subs)
	epochs, err := s.Epochs()
	if err != nil {
		return err
	}
	// A sweep that deletes nothing still flushes, compacts and reopens:
	// what is left is what the records occupy at rest.
	if _, err := s.Sweep(365 * 24 * time.Hour); err != nil {
		return err
	}
	after, err := s.Stats()
	if err != nil {
		return err
	}
	lv.StoreSettledBytes = after.DiskBytes
	lv.StoreKeyspaceBytes = after.RecordBytes + after.IndexBytes + after.OpenBytes
	marginal, err := marginalBytes(filepath.Dir(path), records, epochs)
	if err != nil {
		return err
	}
	lv.RecordMarginal = marginal
	return nil
}

// marginalBytes writes the records into a fresh store and compares its
// settled size with that of an empty one holding the same epochs, so the
// files every store has (OPTIONS, MANIFEST, a WAL) are not charged to the
// records.
func marginalBytes(dir string, records []store.Record, epochs []store.Epoch) (float64, error) {
	size := func(name string, recs []store.Record) (uint64, error) {
		path := filepath.Join(dir, name)
		defer os.RemoveAll(path)
		s, err := store.Open(path, store.Options{Logger: quietLogger()})
		if err != nil {
			return 0, err
		}
		defer s.Close()
		for _, e := range epochs {
			if err := s.PutEpoch(e); err != nil {
				return 0, err
			}
		}
		var ops []store.Op
		for _, r := range recs {
			open := r
			open.End = time.Time{}
			ops = append(ops, store.Op{Kind: store.OpActivate, Record: open})
			if !r.End.IsZero() {
				ops = append(ops, store.Op{Kind: store.OpRelease, Record: r})
			}
		}
		if err := s.Apply(ops); err != nil {
			return 0, err
		}
		if _, err := s.Sweep(365 * 24 * time.Hour); err != nil {
			return 0, err
		}
		st, err := s.Stats()
		return st.DiskBytes, err
	}
	with, err := size("marginal-with", records)
	if err != nil {
		return 0, fmt.Errorf("store with the records: %w", err)
	}
	without, err := size("marginal-empty", nil)
	if err != nil {
		return 0, fmt.Errorf("empty store: %w", err)
	}
	if len(records) == 0 {
		return 0, errors.New("no records")
	}
	return (float64(with) - float64(without)) / float64(len(records)), nil
}
