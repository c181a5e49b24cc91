package main

import (
	"fmt"
	"os"
	"os/exec"
	"slices"
	"sort"
	"strings"
	"time"
)

// figures are the report's table, in the order the issue names them.
func (s *soak) figures() []figure {
	s.mu.Lock()
	defer s.mu.Unlock()
	acts, unanswered := s.acts.snapshot()
	byPhase := map[string]int{}
	for _, a := range acts {
		byPhase[a.Phase]++
	}
	var phases []string
	for _, ph := range []string{"setup", "restart", "reload", "hostile", "disk"} {
		if byPhase[ph] > 0 {
			phases = append(phases, fmt.Sprintf("%s %d", ph, byPhase[ph]))
		}
	}
	judged := func(n int) string {
		if !s.judged {
			return "not judged"
		}
		return fmt.Sprint(n)
	}
	frames, leaks, _ := uint64(0), uint64(0), []string(nil)
	if s.up != nil {
		frames, leaks, _ = s.up.counts()
	}
	kernel := "unknown"
	if st, err := s.e.stats(); err == nil {
		kernel = fmt.Sprint(st["block_activations"] - s.kernelActivations)
	}
	resets, opened := 0, 0
	if s.streams != nil {
		resets = len(s.streams.resetList())
		s.streams.mu.Lock()
		opened = s.streams.opened
		s.streams.mu.Unlock()
	}
	figs := []figure{
		{"cycles done (kill -9, start)", fmt.Sprintf("%d of %d, %d of them also killed while starting", s.cyclesDone, s.o.cycles, s.killedStarting)},
		{"reloads done (SIGHUP)", fmt.Sprintf("%d of %d", s.reloadsDone, s.o.reloads)},
		{"agent starts", fmt.Sprintf("%d, time to translating: %s", len(s.startDur), durationSummary(s.startDur))},
		{"block activations", fmt.Sprintf("%d (%s); the data plane counted %s", len(acts), strings.Join(phases, ", "), kernel)},
		{"first packets unanswered", fmt.Sprint(len(unanswered))},
		{"records lost", judged(s.lost)},
		{"records duplicated", judged(s.duplicated)},
		{"records recovered by the reconciler", judged(s.recovered)},
		{"TCP connections reset", fmt.Sprintf("%d of %d opened", resets, opened)},
		{"untranslated packets upstream", fmt.Sprintf("%d of %d frames captured", leaks, frames)},
		{"hostile packets sent", fmt.Sprint(s.hostileSent)},
		{"duration", time.Since(s.began).Round(time.Second).String()},
	}
	if len(s.agentErrors) > 0 {
		var errs []string
		for k, n := range s.agentErrors {
			errs = append(errs, fmt.Sprintf("%d× %s", n, k))
		}
		sort.Strings(errs)
		figs = append(figs, figure{"agent log errors", strings.Join(errs, "; ")})
	}
	return figs
}

// durationSummary is "median (min–max)", the form BENCHMARKS.md uses.
func durationSummary(ds []time.Duration) string {
	if len(ds) == 0 {
		return "none"
	}
	sorted := slices.Clone(ds)
	slices.Sort(sorted)
	r := func(d time.Duration) string { return d.Round(10 * time.Millisecond).String() }
	return fmt.Sprintf("%s (%s–%s)", r(sorted[len(sorted)/2]), r(sorted[0]), r(sorted[len(sorted)-1]))
}

// teardown undoes the world and then looks for anything of it left: a
// namespace, a mount, a pin or an nftables table the host did not have.
func (s *soak) teardown(p *phaseResult, hostTables []string) {
	if a := s.e.currentAgent(); a != nil {
		s.noteAgentErrors(a.Log())
	}
	if err := s.e.close(); err != nil {
		p.fail("%v", err)
	}
	if out, err := exec.Command("ip", "netns", "list").Output(); err == nil {
		for _, line := range strings.Split(string(out), "\n") {
			if f := strings.Fields(line); len(f) > 0 && strings.HasPrefix(f[0], namePrefix+"-") {
				p.fail("namespace %s is left", f[0])
			}
		}
	}
	if s.e.dir != "" {
		mounts, _ := os.ReadFile("/proc/self/mounts")
		for _, line := range strings.Split(string(mounts), "\n") {
			if f := strings.Fields(line); len(f) > 1 && strings.HasPrefix(f[1], s.e.dir) {
				p.fail("mount %s is left", f[1])
			}
		}
		if _, err := os.Stat(s.e.dir); err == nil {
			p.fail("%s is left", s.e.dir)
		}
	}
	for _, t := range nftTables() {
		if !slices.Contains(hostTables, t) {
			p.fail("nftables table %s is left in the host's namespace", t)
		}
	}
}

// nftTables lists the host namespace's nftables tables ("" when nft is
// missing: then there are none to leave).
func nftTables() []string {
	out, err := exec.Command("nft", "list", "tables").Output()
	if err != nil {
		return nil
	}
	var tables []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if line != "" {
			tables = append(tables, line)
		}
	}
	return tables
}
