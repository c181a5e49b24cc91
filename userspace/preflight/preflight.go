// Package preflight looks at the router as it is before the agent touches
// it: the interfaces, XDP, bpffs, the capabilities, state_dir, the API
// socket's directory, the metrics address, the clock and, for `blocknatd
// check --live` only, the replication log server. `blocknatd check
// --live` prints every finding; the agent's start runs the same checks
// and refuses on the ones that would fail later, before it has created
// anything, so the two can never disagree about what is wrong.
//
// Every finding is one line that names what is wrong and what to do.
package preflight

import (
	"fmt"
	"strings"
	"time"

	"github.com/blocknat/blocknat/userspace/config"
)

// Status is a finding's verdict.
type Status int

const (
	// Pass: the check looked and found what the agent needs.
	Pass Status = iota
	// Fail: what the check found stops the agent, or makes it run in a
	// way the operator must hear about.
	Fail
	// NotChecked: the check could not look (offline, or the kernel does
	// not tell); it says why.
	NotChecked
)

// Finding is one check's result.
type Finding struct {
	// Check names what was looked at: "inside interface eth1",
	// "state_dir /var/lib/blocknat".
	Check  string
	Status Status
	// Text is what was found. For Fail it completes a sentence whose
	// subject is Check ("is in use by blocknatd (pid 4242): stop ..."):
	// what is wrong and what to do.
	Text string
	// Refuses marks a Fail the agent cannot start with: it would fail
	// later, after creating the store, the audit key or pins. A Fail that
	// does not refuse (a down interface, a clock that is not
	// synchronised) is logged as a warning at start.
	Refuses bool
}

// Problem is a failed finding as one sentence.
func (f Finding) Problem() string { return f.Check + " " + f.Text }

// String is the finding's line in `blocknatd check`: a verdict column,
// then what was found.
func (f Finding) String() string {
	switch f.Status {
	case Pass:
		return "ok    " + f.Check + ": " + f.Text
	case NotChecked:
		return "--    " + f.Check + ": not checked (" + f.Text + ")"
	}
	return "FAIL  " + f.Problem()
}

// Options are the start's one-off choices that change a verdict.
type Options struct {
	// ReplaceXDP: foreign XDP programs are to be replaced (--replace), so
	// they do not refuse the start.
	ReplaceXDP bool
}

// Live runs every check against the router as it is, in this process's
// network and mount namespaces and with its privileges.
func Live(cfg *config.Config, opts Options) []Finding {
	return run(checks(cfg, opts), true)
}

func run(cs []check, live bool) []Finding {
	var out []Finding
	for _, c := range cs {
		if c.liveOnly && !live {
			continue
		}
		out = append(out, c.run()...)
	}
	return out
}

// Offline lists the checks Live would run, each marked not checked:
// a configuration can be valid and the router still not ready for it.
func Offline(cfg *config.Config) []Finding {
	var out []Finding
	for _, c := range checks(cfg, Options{}) {
		out = append(out, Finding{Check: c.name, Status: NotChecked, Text: "offline; --live looks at the router"})
	}
	return out
}

// Failed reports whether any finding failed.
func Failed(fs []Finding) bool {
	for _, f := range fs {
		if f.Status == Fail {
			return true
		}
	}
	return false
}

// Error refuses a start, listing the findings that refuse it.
type Error struct {
	Findings []Finding
}

func (e *Error) Error() string {
	lines := make([]string, len(e.Findings))
	for i, f := range e.Findings {
		lines[i] = f.Problem()
	}
	return fmt.Sprintf("refusing to start; nothing was created under state_dir or bpffs_dir: %s", strings.Join(lines, "; "))
}

// Start runs the checks for an agent's start. It returns the failures that
// do not refuse it, to be logged, and an *Error when any refuses it.
func Start(cfg *config.Config, opts Options) (warnings []Finding, err error) {
	var refusals []Finding
	for _, f := range run(checks(cfg, opts), false) {
		switch {
		case f.Status != Fail:
		case f.Refuses:
			refusals = append(refusals, f)
		default:
			warnings = append(warnings, f)
		}
	}
	if len(refusals) > 0 {
		return warnings, &Error{Findings: refusals}
	}
	return warnings, nil
}

// check is one named check; run may return several findings under its
// name (one per problem), or one that passes.
type check struct {
	name string
	run  func() []Finding
	// liveOnly checks are for `blocknatd check --live` only: the agent's
	// start neither waits for them nor could be refused by them.
	liveOnly bool
}

// checks are the live checks in the order they are reported:
// capabilities first, since without them most of the others fail too.
func checks(cfg *config.Config, opts Options) []check {
	cs := []check{{name: "capabilities", run: func() []Finding { return []Finding{checkCapabilities()} }}}
	for _, ifc := range interfaces(cfg) {
		name := ifc.role + " interface " + ifc.name
		cs = append(cs, check{name: name, run: func() []Finding { return checkInterface(name, ifc.role, ifc.name, cfg, opts) }})
	}
	cs = append(cs,
		check{name: "bpffs_dir " + cfg.BPFFSDir, run: func() []Finding { return checkBPFFS("bpffs_dir "+cfg.BPFFSDir, cfg.BPFFSDir) }},
		check{name: "state_dir " + cfg.StateDir, run: func() []Finding { return checkStateDir("state_dir "+cfg.StateDir, cfg) }},
		check{name: "api.socket " + cfg.API.Socket, run: func() []Finding { return checkSocket("api.socket "+cfg.API.Socket, cfg) }},
	)
	if cfg.Metrics.Listen != "" {
		name := "metrics.listen " + cfg.Metrics.Listen
		cs = append(cs, check{name: name, run: func() []Finding { return []Finding{checkListen(name, cfg.Metrics.Listen)} }})
	}
	cs = append(cs, check{name: "clock", run: func() []Finding { return []Finding{checkClock(time.Duration(cfg.SelfCheck.ClockMaxError))} }})
	return append(cs, replicationCheck(cfg)...)
}

type iface struct{ role, name string }

func interfaces(cfg *config.Config) []iface {
	var out []iface
	for _, n := range cfg.Inside.Interfaces {
		out = append(out, iface{"inside", n})
	}
	for _, n := range cfg.Outside.Interfaces {
		out = append(out, iface{"outside", n})
	}
	return out
}

func pass(check, format string, args ...any) Finding {
	return Finding{Check: check, Status: Pass, Text: fmt.Sprintf(format, args...)}
}

// refuse is a failure the agent cannot start with.
func refuse(check, format string, args ...any) Finding {
	return Finding{Check: check, Status: Fail, Refuses: true, Text: fmt.Sprintf(format, args...)}
}

// warn is a failure the agent starts with, saying so.
func warn(check, format string, args ...any) Finding {
	return Finding{Check: check, Status: Fail, Text: fmt.Sprintf(format, args...)}
}

func notChecked(check, format string, args ...any) Finding {
	return Finding{Check: check, Status: NotChecked, Text: fmt.Sprintf(format, args...)}
}
