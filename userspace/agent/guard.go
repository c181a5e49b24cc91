package agent

import (
	"fmt"
	"net/netip"
	"slices"
	"sync/atomic"
	"time"

	"github.com/blocknat/blocknat/userspace/guard"
	"github.com/blocknat/blocknat/userspace/logattr"
	"github.com/blocknat/blocknat/userspace/metrics"
)

// guardCheckInterval is how often the agent makes sure the nftables guard
// is still in place. A firewall reload that flushes the whole ruleset
// (`nft -f` of a file beginning with `flush ruleset`, as most distributions
// ship it) removes the guard with everything else; this bounds how long
// the packets XDP passes to the kernel go unguarded after that.
const guardCheckInterval = 5 * time.Second

// guardState is the agent's side of the guard: how often it was found
// missing. The kernel holds the rest.
type guardState struct {
	missing atomic.Uint64
}

// installGuard puts the nftables guard in place for the configuration
// before anything attaches, so that no state of the agent (not started,
// failed, stopped, detached) forwards an inside address untranslated. An
// agent that cannot install it refuses to start.
func (a *Agent) installGuard() error {
	ch, err := guard.Install(a.mapping.Prefixes, a.cfg.Outside.Interfaces, a.exemptDestinations())
	if err != nil {
		return fmt.Errorf("refusing to start without the guard against untranslated subscriber packets: %w", err)
	}
	a.log.Info("nftables guard in place", logattr.Outcome, ch.String(), logattr.Count, len(a.mapping.Prefixes))
	return nil
}

// checkGuard makes sure the guard is still as the configuration in force
// wants it. Finding it missing or changed is an error in the log and a
// count, never silent, and it is installed again; it is no reason to stop
// translating.
func (a *Agent) checkGuard() {
	if ch := a.ensureGuard(a.mapping.Prefixes, "check"); ch != guard.Unchanged {
		a.guard.missing.Add(1)
		a.log.Error("nftables guard was missing or changed: installed again", logattr.Outcome, ch.String())
	}
}

// ensureGuard installs the guard for prefixes; a failure is logged and
// counted. It returns what changed (Unchanged after a failure: the count
// is already taken).
func (a *Agent) ensureGuard(prefixes []netip.Prefix, why string) guard.Change {
	ch, err := guard.Install(prefixes, a.cfg.Outside.Interfaces, a.exemptDestinations())
	if err != nil {
		a.guard.missing.Add(1)
		a.log.Error("nftables guard could not be installed: inside addresses may leave untranslated", logattr.Action, why, logattr.Err, err.Error())
		return guard.Unchanged
	}
	return ch
}

// exemptDestinations are the nat_exempt prefixes of the configuration in
// force (the one the agent started with until a data plane is up): the
// guard lets subscribers reach exactly those untranslated.
func (a *Agent) exemptDestinations() []netip.Prefix {
	cfg := a.cfg
	if p := a.current(); p != nil {
		cfg = p.cfg
	}
	ex, _ := cfg.Exemptions() // parsed when the configuration was validated
	return ex.Destinations
}

// guardDuringReload guards the old and the new prefixes while the data
// plane moves from one configuration to the other; the returned function
// narrows it to the prefixes in force once the reload is over, whatever
// its outcome.
func (a *Agent) guardDuringReload(next []netip.Prefix) func() {
	follow := func(prefixes []netip.Prefix) {
		if ch := a.ensureGuard(prefixes, "reload"); ch != guard.Unchanged {
			a.log.Info("nftables guard follows the reloaded prefixes", logattr.Outcome, ch.String(), logattr.Count, len(prefixes))
		}
	}
	follow(append(slices.Clone(a.mapping.Prefixes), next...))
	return func() { follow(a.mapping.Prefixes) }
}

// guardFigures reads the guard for a snapshot. An unreadable guard counts
// as not installed, so that blocknat_guard_installed never goes missing
// when it matters most.
func (a *Agent) guardFigures() (metrics.GuardFigures, error) {
	g := metrics.GuardFigures{Missing: a.guard.missing.Load()}
	st, err := guard.State()
	if err != nil {
		return g, err
	}
	g.Installed, g.Problem, g.DroppedPackets, g.DroppedBytes = st.Installed, st.Problem, st.DroppedPackets, st.DroppedBytes
	g.Prefixes, g.Interfaces = st.Prefixes, st.Interfaces
	return g, nil
}
