// Command soak runs the real blocknatd for a while under the things that
// go wrong on a router, and reports figures: `make soak` (issue 11).
//
// In a network-namespace topology of its own (namespaces bn-soak-<pid>-*,
// deleted on every exit path, SIGINT included), with hundreds of inside
// addresses activating their blocks for the first time throughout and
// long-lived TCP connections talking through the NAT, it
//
//   - kills blocknatd with SIGKILL and starts it again, -cycles times, and
//     every few cycles also while it starts;
//   - reloads it with SIGHUP, -reloads times, alternating a timeout;
//   - sends the hostile packet classes of test/e2e (forged RSTs and FINs,
//     martians) and fragments and malformed headers;
//   - fills state_dir's filesystem (a small tmpfs) until ENOSPC while new
//     blocks activate, checks that the agent runs and raises its alarm,
//     then frees the space and checks that every block activated meanwhile
//     gets its record with no operator action.
//
// Then it asks the agent, through `blocknat history`, for the records of
// every subscriber it activated, and prints: cycles done, block
// activations, records lost (an activation no record of its subscriber
// covers), records duplicated (more than one open record for a block), TCP
// connections reset, untranslated packets seen upstream (a capture on the
// internet namespace's link counts every frame with an inside address),
// a verdict per phase, and last the one line "N passed, M failed". The
// exit status is 1 when anything failed.
//
// It is not part of `make test` or CI: it takes about ten minutes.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/debug"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/blocknat/blocknat/test/netns"
)

type options struct {
	cycles, reloads     int
	subscribers         int
	connections         int
	activateEvery       time.Duration
	stateSize           string
	diskHold            time.Duration
	hostileRounds       int
	phases              string
	recoverWithin       time.Duration
	recordSlack         time.Duration
	connectionsInterval time.Duration
	upMin, upMax        time.Duration
	killDuringStart     int
}

func main() {
	var o options
	flag.IntVar(&o.cycles, "cycles", 100, "kill -9 and restart cycles")
	flag.IntVar(&o.reloads, "reloads", 20, "SIGHUP reloads")
	flag.IntVar(&o.subscribers, "subscribers", 150, "subscribers that activate before the first cycle (more activate during every phase)")
	flag.IntVar(&o.connections, "connections", 16, "long-lived TCP connections kept talking through the NAT")
	flag.DurationVar(&o.connectionsInterval, "talk-every", 100*time.Millisecond, "how often each connection sends a message and waits for its echo")
	flag.DurationVar(&o.activateEvery, "activate-every", 800*time.Millisecond, "how often a subscriber that never sent starts sending, during the phases")
	flag.StringVar(&o.stateSize, "state-size", "64m", "size of the tmpfs that holds state_dir")
	flag.DurationVar(&o.diskHold, "disk-hold", 5*time.Second, "how long state_dir's filesystem stays full")
	flag.DurationVar(&o.recoverWithin, "recover-within", 60*time.Second, "how long the agent may take to write the records of the full disk, once freed")
	flag.DurationVar(&o.recordSlack, "record-slack", 250*time.Millisecond, "how far a record's interval may miss its activation's answer and still cover it (clock conversion)")
	flag.DurationVar(&o.upMin, "up-min", time.Second, "least time the agent runs between two kills")
	flag.DurationVar(&o.upMax, "up-max", 6*time.Second, "most time the agent runs between two kills")
	flag.IntVar(&o.killDuringStart, "kill-starting-every", 4, "every this many cycles, also kill the agent while it starts (0: never)")
	flag.IntVar(&o.hostileRounds, "hostile-rounds", 10, "rounds of each hostile packet class")
	flag.StringVar(&o.phases, "phases", "restart,reload,hostile,disk", "phases to run, in this order, comma-separated")
	cleanupOnly := flag.Bool("cleanup", false, "only remove what a killed soak left behind (namespaces, mounts), and exit")
	flag.Parse()
	if o.upMax < o.upMin {
		o.upMax = o.upMin
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "soak: needs root (network namespaces, XDP, mounts); run: sudo make soak")
		os.Exit(2)
	}
	ensureGoOnPath()
	removeStale()
	if *cleanupOnly {
		return
	}
	os.Exit(run(o))
}

// ensureGoOnPath lets the harness build the binaries under sudo, whose
// secure_path usually lacks Go's directory.
func ensureGoOnPath() {
	if _, err := exec.LookPath("go"); err == nil {
		return
	}
	os.Setenv("PATH", filepath.Join(runtime.GOROOT(), "bin")+string(os.PathListSeparator)+os.Getenv("PATH"))
}

var logStart = time.Now()

// logf prints a progress line with the time since the soak began.
func logf(format string, args ...any) {
	el := time.Since(logStart).Round(time.Second)
	fmt.Printf("[%6s] %s\n", el, fmt.Sprintf(format, args...))
}

// soak is one run: the world, the traffic and what it counted.
type soak struct {
	o        options
	e        *env
	fresh    *fresh
	acts     *activations
	streams  *streams
	tcp      *netns.TCPEcho
	echo     *netns.UDPEcho
	up       *link
	began    time.Time
	startDur []time.Duration

	cyclesDone, reloadsDone int
	killedStarting          int
	hostileSent             int
	diskSupported           bool
	diskRefusal             string
	recovered               int
	lost, duplicated        int
	judged                  bool
	kernelActivations       uint64
	agentErrors             map[string]int
	mu                      sync.Mutex
}

func run(o options) int {
	// Signals cancel the phases; the world is then taken apart and the
	// report printed all the same. A second signal is caught too, so
	// that it cannot interrupt the cleanup.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	s := &soak{o: o, e: &env{}, acts: &activations{}, began: time.Now(), agentErrors: map[string]int{}}
	hostTables := nftTables()

	var phases []*phaseResult
	setup := &phaseResult{Name: "setup"}
	phases = append(phases, setup)
	t0 := time.Now()
	guarded(setup, func() {
		if err := s.setup(ctx); err != nil {
			setup.fail("%v", err)
		}
	})
	setup.Took = time.Since(t0)
	if setup.passed() {
		for _, name := range strings.Split(o.phases, ",") {
			p := &phaseResult{Name: phaseTitle(name, o)}
			phases = append(phases, p)
			if ctx.Err() != nil {
				p.fail("not run: interrupted")
				continue
			}
			t0 := time.Now()
			guarded(p, func() {
				switch strings.TrimSpace(name) {
				case "restart":
					s.restartPhase(ctx, p)
				case "reload":
					s.reloadPhase(ctx, p)
				case "hostile":
					s.hostilePhase(ctx, p)
				case "disk":
					s.diskPhase(ctx, p)
				default:
					p.fail("unknown phase %q", name)
				}
			})
			if ctx.Err() != nil {
				p.fail("interrupted")
			}
			p.Took = time.Since(t0)
			logf("%s: %s", p.Name, verdictWord(p))
		}
		rec := &phaseResult{Name: "records: every activation has its record, none twice (blocknat history)"}
		phases = append(phases, rec)
		if ctx.Err() != nil {
			rec.fail("not run: interrupted")
		} else {
			t0 := time.Now()
			guarded(rec, func() { s.recordsPhase(ctx, rec) })
			rec.Took = time.Since(t0)
		}
	}
	figures := s.figures()

	logf("removing the namespaces, mounts and pins")
	clean := &phaseResult{Name: "cleanup: nothing left behind"}
	t0 = time.Now()
	s.teardown(clean, hostTables)
	clean.Took = time.Since(t0)
	phases = append(phases, clean)

	fmt.Println()
	if report(os.Stdout, figures, phases) > 0 {
		return 1
	}
	return 0
}

// guarded runs fn and turns a panic into p's failure, so that a bug in
// the soak still leaves the machine as it found it.
func guarded(p *phaseResult, fn func()) {
	defer func() {
		if r := recover(); r != nil {
			p.fail("soak panicked: %v\n%s", r, debug.Stack())
		}
	}()
	fn()
}

func phaseTitle(name string, o options) string {
	switch strings.TrimSpace(name) {
	case "restart":
		return fmt.Sprintf("restart: %d × kill -9 and start, blocks activating, connections talking", o.cycles)
	case "reload":
		return fmt.Sprintf("reload: %d × SIGHUP with traffic", o.reloads)
	case "hostile":
		return "hostile: forged RSTs/FINs, martians, fragments, malformed headers"
	case "disk":
		return "disk: state_dir full, alarm, recovery without an operator"
	}
	return name
}

func verdictWord(p *phaseResult) string {
	if p.passed() {
		return "PASS"
	}
	return fmt.Sprintf("FAIL (%s)", oneLine(strings.Join(p.Failures, "; ")))
}

func (s *soak) setup(ctx context.Context) error {
	e := s.e
	if err := e.setup(ctx, s.o.stateSize); err != nil {
		return err
	}
	// The disk section is the feature the disk phase checks: an agent
	// that does not know it refuses the file, so the soak runs without it
	// and the disk phase fails, saying so.
	e.diskExtra = "disk: {min_free: 16MiB, reserve: 8MiB}\n"
	if err := e.checkConfig(ctx, e.config("300s")); err != nil {
		s.diskRefusal = err.Error()
		e.diskExtra = ""
		logf("blocknatd refuses the disk section (%s); running without it", oneLine(s.diskRefusal))
	} else {
		s.diskSupported = true
	}
	if err := e.writeConfig("300s"); err != nil {
		return err
	}
	if err := s.start(ctx); err != nil {
		return err
	}
	var err error
	if s.echo, err = netns.StartUDPEcho(e.topo.Internet, netip.AddrPortFrom(e.topo.ServerAddrs[0], 9000)); err != nil {
		return err
	}
	e.onClose("close the UDP echo", s.echo.Close)
	if s.tcp, err = netns.StartTCPEcho(e.topo.Internet, netip.AddrPortFrom(e.topo.ServerAddrs[1], 7001)); err != nil {
		return err
	}
	e.onClose("close the TCP echo", s.tcp.Close)
	if s.up, err = openLink(e.topo.Internet, e.topo.InternetIface, insidePrefix); err != nil {
		return err
	}
	e.onClose("close the capture", func() error { s.up.close(); return nil })

	// Every address of the inside prefix the soak may use is set up now,
	// alternately on the two subscriber links, so that a phase only has
	// to start sending from one.
	all := subscriberAddrs()
	s.fresh = &fresh{addrs: all, home: map[netip.Addr]*netns.NS{}}
	logf("adding %d inside addresses to the subscriber namespaces", len(all))
	var byLink [2][]netip.Addr
	for i, a := range all {
		byLink[i%2] = append(byLink[i%2], a)
		s.fresh.home[a] = e.topo.Subscribers[i%2].NS
	}
	for i, addrs := range byLink {
		if err := e.topo.AddSubscriberAddrs(ctx, i, addrs); err != nil {
			return err
		}
	}
	if st, err := e.stats(); err == nil {
		s.kernelActivations = st["block_activations"]
	}

	logf("activating %d subscribers and opening %d TCP connections", s.o.subscribers, s.o.connections)
	s.streams = &streams{to: s.tcp.Addr, interval: s.o.connectionsInterval}
	for i := 0; i < s.o.connections; i++ {
		if err := s.streams.open(s.fresh, s.acts, "setup"); err != nil {
			return err
		}
	}
	e.onClose("close the TCP connections", func() error { s.streams.closeAll(); return nil })
	for i := 0; i < s.o.subscribers; i++ {
		inside, ns, ok := s.fresh.take()
		if !ok {
			break
		}
		act, err := activate(ns, inside, s.echo.Addr, "setup")
		if err != nil {
			return err
		}
		s.acts.add(act)
	}
	if err := s.streams.waitTalked(ctx, s.streams.progress(), 5, 10*time.Second); err != nil {
		return err
	}
	logf("%d subscribers active, %d addresses left for the phases", len(s.acts.done), s.fresh.left())
	return nil
}

// start starts the agent and keeps what the one before it logged as
// errors, so that the report can name them.
func (s *soak) start(ctx context.Context) error {
	if prev := s.e.currentAgent(); prev != nil {
		s.noteAgentErrors(prev.Log())
	}
	t0 := time.Now()
	err := s.e.startAgent(ctx, 30*time.Second)
	if err == nil {
		s.mu.Lock()
		s.startDur = append(s.startDur, time.Since(t0))
		s.mu.Unlock()
	}
	return err
}

var (
	logMsg   = regexp.MustCompile(`msg=("(?:[^"\\]|\\.)*"|\S+)`)
	logEpoch = regexp.MustCompile(`\bepoch=(\d+)`)
	logErr   = regexp.MustCompile(`\berr(?:or)?=("(?:[^"\\]|\\.)*"|\S+)`)
)

func (s *soak) noteAgentErrors(log string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, line := range strings.Split(log, "\n") {
		key := ""
		switch {
		case strings.Contains(line, "level=ERROR"):
			key = "ERROR " + logMsg.FindString(line)
			if m := logErr.FindString(line); m != "" {
				key += " " + m[:min(len(m), 160)]
			}
		case strings.HasPrefix(line, "panic:") || strings.HasPrefix(line, "fatal error:"):
			key = line
		}
		if key != "" {
			s.agentErrors[key]++
		}
	}
}

func (s *soak) leaks() uint64 {
	_, n, _ := s.up.counts()
	return n
}

// restartPhase kills the agent with SIGKILL and starts it again, cycle
// after cycle, while fresh subscribers activate at a steady rate (so some
// activations fall while the agent is dead, some while it starts) and the
// connections talk.
func (s *soak) restartPhase(ctx context.Context, p *phaseResult) {
	const phase = "restart"
	leaksBefore := s.leaks()
	budget := max(0, s.fresh.left()-120) // what the later phases need
	act := startActivator(s.fresh, s.acts, s.echo.Addr, phase, s.o.activateEvery, budget)
	defer act.halt()
	r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 11))
	resets := 0
	for i := 1; i <= s.o.cycles && ctx.Err() == nil; i++ {
		if err := s.e.killAgent(); err != nil {
			p.fail("cycle %d: kill -9: %v", i, err)
			return
		}
		// Dead for a moment: the pinned data plane alone translates.
		sleep(ctx, time.Duration(r.IntN(400))*time.Millisecond)
		if s.o.killDuringStart > 0 && i%s.o.killDuringStart == 0 {
			// A crash while starting: opening the store, reconciling,
			// taking over the pins.
			d, err := s.e.killWhileStarting(ctx, time.Duration(r.IntN(300))*time.Millisecond)
			if err != nil {
				p.fail("cycle %d: kill -9 while starting: %v", i, err)
				return
			}
			s.killedStarting++
			s.noteAgentErrors(d)
		}
		if err := s.start(ctx); err != nil {
			p.fail("cycle %d: blocknatd did not start again: %v", i, err)
			return
		}
		s.cyclesDone = i
		if err := s.streams.waitTalked(ctx, s.streams.progress(), 3, 15*time.Second); err != nil {
			p.fail("cycle %d: %v", i, err)
		}
		resets += s.streams.check(s.fresh, s.acts, phase)
		// Up for a while: long enough, now and then, for a reconcile (every
		// 5 s) or a sweep to be cut off by the next kill.
		sleep(ctx, s.o.upMin+time.Duration(r.Int64N(int64(s.o.upMax-s.o.upMin)+1)))
		if i%10 == 0 {
			logf("restart %3d/%d: %d activations in this phase, %d connections reset, %d untranslated upstream, last start %s",
				i, s.o.cycles, s.acts.count(phase), resets, s.leaks()-leaksBefore, s.lastStart().Round(10*time.Millisecond))
		}
	}
	act.halt()
	s.phaseTrafficChecks(p, phase, leaksBefore, resets)
}

// phaseTrafficChecks fails p for what broke in it: connections, unanswered
// activations, packets that leaked.
func (s *soak) phaseTrafficChecks(p *phaseResult, phase string, leaksBefore uint64, resets int) {
	resets += s.streams.check(s.fresh, s.acts, phase)
	if resets > 0 {
		p.fail("%d TCP connections broke", resets)
	}
	_, unanswered := s.acts.snapshot()
	n := 0
	for _, u := range unanswered {
		if strings.HasPrefix(u, phase+":") {
			n++
			if n <= 3 {
				p.note("unanswered: %s", u)
			}
		}
	}
	if n > 0 {
		p.fail("%d first packets of fresh subscribers got no answer", n)
	}
	if d := s.leaks() - leaksBefore; d > 0 {
		_, _, samples := s.up.counts()
		p.fail("%d packets with an inside address reached the internet (first: %s)", d, strings.Join(samples, "; "))
	}
	p.note("%d blocks activated in this phase", s.acts.count(phase))
}

func (s *soak) lastStart() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.startDur) == 0 {
		return 0
	}
	return s.startDur[len(s.startDur)-1]
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// reloadPhase sends SIGHUP with the UDP timeout alternating between two
// values: a change that must not start an epoch, close a record or
// disturb a connection.
func (s *soak) reloadPhase(ctx context.Context, p *phaseResult) {
	const phase = "reload"
	leaksBefore := s.leaks()
	act := startActivator(s.fresh, s.acts, s.echo.Addr, phase, s.o.activateEvery, max(0, s.fresh.left()-80))
	defer act.halt()
	a := s.e.currentAgent()
	pid := a.PID()
	epochs := map[string]bool{}
	for i := 1; i <= s.o.reloads && ctx.Err() == nil; i++ {
		timeout := "300s"
		if i%2 == 1 {
			timeout = "301s"
		}
		if err := s.e.reload(timeout, 15*time.Second); err != nil {
			p.fail("reload %d: %v", i, err)
			if !s.e.agentAlive() {
				return
			}
			continue
		}
		s.reloadsDone = i
		if m := logEpoch.FindStringSubmatch(lastLine(a.Log(), "configuration reloaded")); m != nil {
			epochs[m[1]] = true
		}
		if err := s.streams.waitTalked(ctx, s.streams.progress(), 3, 15*time.Second); err != nil {
			p.fail("reload %d: %v", i, err)
		}
		sleep(ctx, 700*time.Millisecond)
		if i%10 == 0 {
			logf("reload %3d/%d: %d activations in this phase, %d untranslated upstream", i, s.o.reloads, s.acts.count(phase), s.leaks()-leaksBefore)
		}
	}
	act.halt()
	if s.e.currentAgent().PID() != pid || !s.e.agentAlive() {
		p.fail("the agent did not survive the reloads:\n%s", tail(a.Log(), 5))
	}
	if len(epochs) > 1 {
		p.fail("a timeout change started new epochs: %v", keys(epochs))
	}
	s.phaseTrafficChecks(p, phase, leaksBefore, 0)
}

func keys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func (s *soak) hostilePhase(ctx context.Context, p *phaseResult) {
	const phase = "hostile"
	e := s.e
	leaksBefore := s.leaks()
	act := startActivator(s.fresh, s.acts, s.echo.Addr, phase, s.o.activateEvery, max(0, s.fresh.left()-50))
	defer act.halt()
	pid := e.currentAgent().PID()
	statsBefore, _ := e.stats()

	h := &hostileEnv{up: s.up, subAddr: e.topo.Subscribers[0].Addr, echo: s.echo.Addr,
		r: rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 5))}
	var err error
	if h.sub, err = openLink(e.topo.Subscribers[0].NS, e.topo.Subscribers[0].Iface, insidePrefix); err != nil {
		p.fail("%v", err)
		return
	}
	defer h.sub.close()
	if h.routerIn, err = ifaceMAC(e.topo.Router, e.topo.InsideIfaces[0]); err != nil {
		p.fail("%v", err)
		return
	}
	if h.routerOut, err = ifaceMAC(e.topo.Router, e.topo.OutsideIface); err != nil {
		p.fail("%v", err)
		return
	}
	sent := time.Now()
	if _, err := netns.UDPRoundTrip(e.topo.Subscribers[0].NS, 48000, s.echo.Addr, []byte("map me"), 3*time.Second); err != nil {
		p.fail("a mapping for the inbound classes: %v", err)
		return
	}
	// Subscriber 0's own address has not sent before: a block like any other.
	s.acts.add(activation{Inside: h.subAddr, Phase: phase, Sent: sent, Answered: time.Now()})
	remotes := s.echo.Remotes()
	h.public = remotes[len(remotes)-1]
	h.tcpEnds = s.tcp.Live()

	if err := fragmentedEcho(e.topo.Subscribers[0].NS, s.echo.Addr); err != nil {
		p.fail("fragmented echo before the hostile traffic: %v", err)
	}
	steps := []struct {
		name string
		run  func() error
	}{
		{"forged RSTs and FINs", func() error { return h.forgedResets(10 * s.o.hostileRounds) }},
		{"martians", func() error { return h.martians(s.o.hostileRounds) }},
		{"fragments", func() error { return h.fragments(2 * s.o.hostileRounds) }},
		{"malformed headers", func() error { return h.malformed(s.o.hostileRounds) }},
	}
	for _, st := range steps {
		if err := st.run(); err != nil {
			p.fail("%s: %v", st.name, err)
		}
		logf("hostile: %s sent (%d packets so far)", st.name, h.sent)
	}
	s.hostileSent = h.sent
	if !h.waitControls(ctx, s.o.hostileRounds, 5*time.Second) {
		p.fail("martian controls seen %d and %d times of %d: the captures cannot judge",
			h.up.seen(martianMarker("out", "control")), h.sub.seen(martianMarker("in", "control")), s.o.hostileRounds)
	}
	// Past the transitory timeout and several sweeps: a forged RST that
	// moved a connection's mapping to closing has cut it by now.
	sleep(ctx, 6*time.Second)
	if err := s.streams.waitTalked(ctx, s.streams.progress(), 5, 15*time.Second); err != nil {
		p.fail("%v", err)
	}
	if err := fragmentedEcho(e.topo.Subscribers[0].NS, s.echo.Addr); err != nil {
		p.fail("fragmented echo after the hostile traffic: %v", err)
	}
	for _, c := range outboundMartians {
		if n := h.up.seen(martianMarker("out", c.name)); n != 0 {
			p.fail("subscriber to %s (%s): %d of %d reached the internet", c.name, c.addr, n, s.o.hostileRounds)
		}
	}
	for _, c := range append(inboundMartians, martianClass{"own pool address", h.public.Addr().String()}) {
		if n := h.sub.seen(martianMarker("in", c.name)); n != 0 {
			p.fail("internet from %s (%s): %d of %d reached the subscriber", c.name, c.addr, n, s.o.hostileRounds)
		}
	}
	if !e.agentAlive() || e.currentAgent().PID() != pid {
		p.fail("the agent did not live through the hostile traffic:\n%s", tail(e.currentAgent().Log(), 5))
	}
	if statsAfter, err := e.stats(); err == nil {
		var grew []string
		for _, name := range []string{"drop_malformed", "drop_martian_src", "drop_martian_dst", "drop_fragment",
			"drop_fragment_inactive", "drop_unsupported", "drop_no_mapping", "pass_ttl", "pass_local_service", "fragments"} {
			if d := statsAfter[name] - statsBefore[name]; d > 0 {
				grew = append(grew, fmt.Sprintf("%s +%d", name, d))
			}
		}
		p.note("%d hostile packets sent; counters: %s", h.sent, strings.Join(grew, ", "))
	}
	act.halt()
	s.phaseTrafficChecks(p, phase, leaksBefore, 0)
}

// diskPhase fills state_dir's filesystem while blocks activate. With the
// disk section the agent pauses record writes below min_free and raises
// the alarm with reason disk_low; freed, it writes what it kept.
func (s *soak) diskPhase(ctx context.Context, p *phaseResult) {
	const phase = "disk"
	e := s.e
	leaksBefore := s.leaks()
	if !s.diskSupported {
		p.fail("blocknatd refuses the disk section (min_free, reserve): %s", s.diskRefusal)
		p.note("the fill below ran without it, to show what this agent does on a full disk")
	}
	var st unix.Statfs_t
	if err := unix.Statfs(e.stateFS, &st); err == nil {
		p.note("state_dir's filesystem before the fill: %d MiB free of %d MiB", st.Bavail*uint64(st.Bsize)>>20, st.Blocks*uint64(st.Bsize)>>20)
	}
	act := startActivator(s.fresh, s.acts, s.echo.Addr, phase, 250*time.Millisecond, 60)
	stopped := false
	stopAct := func() {
		if !stopped {
			act.halt()
			stopped = true
		}
	}
	defer stopAct()

	filler := filepath.Join(e.stateFS, "filler")
	defer os.Remove(filler)
	written, err := fill(filler)
	if err != nil {
		p.fail("fill state_dir's filesystem: %v", err)
		return
	}
	logf("disk: state_dir's filesystem full (%d MiB of filler); holding %s", written>>20, s.o.diskHold)

	exits := 0
	var alarmSeen, reasonSeen, alarmAfterKill bool
	var alarmSample []string
	killed := false
	watch := func() {
		if !e.agentAlive() {
			exits++
			log := e.currentAgent().Log()
			p.note("the agent exited on the full disk: %s", tail(log, 3))
			if err := s.start(ctx); err != nil {
				p.note("and did not start again on it: %s", tail(err.Error(), 3))
			}
			return
		}
		if text, err := e.metrics(ctx); err == nil {
			a := parseAlarm(text)
			alarmSeen = alarmSeen || a.Raised
			if a.Raised {
				alarmSample = a.Lines
			}
			diskLow := slices.Contains(a.Reasons, "disk_low")
			reasonSeen = reasonSeen || diskLow
			if killed && a.Raised && diskLow {
				alarmAfterKill = true
			}
		}
	}
	holdStart := time.Now()
	for deadline := holdStart.Add(s.o.diskHold); time.Now().Before(deadline) && ctx.Err() == nil; {
		watch()
		// Halfway, a crash on the full disk and a start on it: the agent
		// must come up (giving up its reserve) and say it is alarmed.
		if !killed && time.Since(holdStart) > s.o.diskHold/2 {
			killed = true
			if err := e.killAgent(); err != nil {
				p.fail("kill -9 on the full disk: %v", err)
			}
			if err := s.start(ctx); err != nil {
				p.fail("blocknatd did not start on the full disk: %v", err)
			}
		}
		sleep(ctx, 500*time.Millisecond)
	}
	watch()
	// The status is audited, and the audit log writes into the margin
	// min_free keeps; on a filesystem filled to the last block it may
	// refuse, so a refusal is noted, not failed.
	if e.agentAlive() {
		if alarms, err := e.statusAlarm(ctx); err != nil {
			p.note("blocknat status on the full disk: %v", err)
		} else {
			p.note("blocknat status alarm on the full disk: %q", alarms)
		}
	}
	stopAct()
	running := e.agentAlive()
	fullActs := s.acts.count(phase)

	if err := os.Remove(filler); err != nil {
		p.fail("remove the filler: %v", err)
	}
	freedAt := time.Now()
	logf("disk: filler removed; waiting up to %s for the alarm to clear and the records of %d activations", s.o.recoverWithin, fullActs)
	if !running {
		p.fail("the agent was not running at the end of the full disk (it exited %d times)", exits)
	}
	if exits > 0 {
		p.note("the agent exited %d times while the disk was full", exits)
	}
	if !alarmSeen {
		p.fail("blocknat_records_alarm never became 1 while the disk was full")
	} else {
		p.note("alarm while full: %s", strings.Join(alarmSample, "; "))
	}
	if !reasonSeen {
		p.fail(`blocknat_alarm{reason="disk_low"} never became 1 while the disk was full`)
	}
	if killed && !alarmAfterKill {
		p.fail("started again on the full disk after kill -9, the agent did not raise the disk_low alarm")
	}

	// Recovery: the agent by itself, with nobody to restart it unless
	// it died (as systemd would restart it).
	var cleared, recorded bool
	var lastMissing int
	phaseActs := func() []activation {
		all, _ := s.acts.snapshot()
		var out []activation
		for _, a := range all {
			if a.Phase == phase {
				out = append(out, a)
			}
		}
		return out
	}
	for deadline := freedAt.Add(s.o.recoverWithin); ctx.Err() == nil; {
		if !e.agentAlive() {
			exits++
			if err := s.start(ctx); err != nil {
				p.note("start after the disk was freed: %s", tail(err.Error(), 3))
			}
		}
		if !cleared {
			if text, err := e.metrics(ctx); err == nil {
				if !parseAlarm(text).Raised {
					cleared = true
					p.note("alarm cleared %s after the filler was removed", time.Since(freedAt).Round(100*time.Millisecond))
				}
			}
		}
		if !recorded {
			acts := phaseActs()
			recs, err := s.histories(ctx, acts)
			if err == nil {
				v := judge(acts, recs, s.o.recordSlack)
				lastMissing = len(v.Lost)
				if lastMissing == 0 {
					recorded = true
					p.note("every record of the %d activations there %s after the filler was removed", len(acts), time.Since(freedAt).Round(100*time.Millisecond))
				}
			}
		}
		if cleared && recorded || time.Now().After(deadline) {
			break
		}
		sleep(ctx, 2*time.Second)
	}
	if !cleared {
		p.fail("the alarm did not clear within %s of freeing the disk", s.o.recoverWithin)
	}
	if !recorded {
		p.fail("%d of %d activations of the full disk had no record %s after it was freed", lastMissing, len(phaseActs()), s.o.recoverWithin)
	}
	s.phaseTrafficChecks(p, phase, leaksBefore, 0)
}

// fill writes a file until its filesystem refuses with ENOSPC: big
// chunks first, then small ones, so that not a block is left.
func fill(path string) (int64, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var total int64
	for _, size := range []int{1 << 20, 4 << 10, 512} {
		chunk := make([]byte, size)
		for {
			n, err := f.Write(chunk)
			total += int64(n)
			if err == nil {
				continue
			}
			if !errors.Is(err, syscall.ENOSPC) {
				return total, err
			}
			break
		}
	}
	return total, nil
}

// histories asks the agent for the records of every subscriber in acts,
// two at a time.
func (s *soak) histories(ctx context.Context, acts []activation) (map[netip.Addr][]span, error) {
	subs := map[netip.Addr]bool{}
	for _, a := range acts {
		subs[a.Inside] = true
	}
	work := make(chan netip.Addr)
	var mu sync.Mutex
	out := map[netip.Addr][]span{}
	var firstErr error
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for sub := range work {
				recs, err := s.e.history(ctx, sub, s.began.Add(-time.Minute))
				mu.Lock()
				if err != nil && firstErr == nil {
					firstErr = err
				}
				if err == nil {
					out[sub] = recs
				}
				mu.Unlock()
			}
		}()
	}
	for sub := range subs {
		work <- sub
	}
	close(work)
	wg.Wait()
	return out, firstErr
}

// recordsPhase asks for every activated subscriber's records and judges
// them all: the figures "records lost" and "records duplicated".
func (s *soak) recordsPhase(ctx context.Context, p *phaseResult) {
	if !s.e.agentAlive() {
		if err := s.start(ctx); err != nil {
			p.fail("the agent is not running and does not start: %v", err)
			return
		}
	}
	time.Sleep(time.Second) // the recorder commits every 50 ms; a reconcile is due within 5 s
	acts, _ := s.acts.snapshot()
	logf("records: asking blocknat history for %d subscribers", len(acts))
	recs, err := s.histories(ctx, acts)
	if err != nil {
		// A subscriber whose history could not be read is not judged: it
		// would count as lost for a reason that is not the agent's store.
		p.fail("blocknat history: %v", err)
		if ctx.Err() != nil {
			return
		}
	}
	var readable []activation
	unread := map[netip.Addr]bool{}
	for _, a := range acts {
		if _, ok := recs[a.Inside]; ok {
			readable = append(readable, a)
		} else {
			unread[a.Inside] = true
		}
	}
	if len(unread) > 0 {
		p.fail("the history of %d subscribers could not be read; they are not judged", len(unread))
	}
	v := judge(readable, recs, s.o.recordSlack)
	s.mu.Lock()
	s.lost, s.duplicated = len(v.Lost), v.Duplicated
	s.recovered = 0
	for _, rs := range recs {
		for _, r := range rs {
			if r.Recovered {
				s.recovered++
			}
		}
	}
	s.judged = true
	s.mu.Unlock()
	byPhase := map[string]int{}
	for _, a := range v.Lost {
		byPhase[a.Phase]++
	}
	if len(v.Lost) > 0 {
		var parts []string
		for _, ph := range slices.Sorted(maps.Keys(byPhase)) {
			parts = append(parts, fmt.Sprintf("%s %d", ph, byPhase[ph]))
		}
		p.fail("%d activations have no record covering them (by phase: %s)", len(v.Lost), strings.Join(parts, ", "))
		for i, a := range v.Lost {
			if i == 5 {
				break
			}
			p.note("lost: %s activated %s (%s), records %v", a.Inside, a.Answered.UTC().Format(time.RFC3339Nano), a.Phase, recs[a.Inside])
		}
	}
	if v.Duplicated > 0 {
		p.fail("%d open records beyond the first for one block (subscribers %v)", v.Duplicated, v.DuplicatedSubs)
	}
}
