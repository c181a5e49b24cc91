package agent

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/blocknat/blocknat/userspace/config"
)

// startSources puts the configuration's source rules and the bindings of
// the leases held now into the data plane, before the API takes its first
// lease event. A rule the kernel refuses stops the start: a router that
// was told to stop neighbours framing each other must not run without it.
func (a *Agent) startSources() error {
	rules, err := a.cfg.SourceRules()
	if err != nil {
		return err
	}
	if err := a.nat.SetInterfacePolicies(interfacePolicies(a.cfg, rules)); err != nil {
		return fmt.Errorf("source validation: %w", err)
	}
	a.binder = &binder{
		static: rules.Static,
		leases: a.store.CurrentLeases,
		set: func(table map[netip.Addr]net.HardwareAddr) error {
			// Shared with reload, which swaps the data plane.
			a.natMu.RLock()
			defer a.natMu.RUnlock()
			return a.nat.SetSourceBindings(table)
		},
		log: a.log,
	}
	a.binder.sync()
	if a.binder.failing != "" {
		return fmt.Errorf("source bindings: %s", a.binder.failing)
	}
	return nil
}

// reloadSources applies a reloaded configuration's rules to the data plane
// now in force; its binding table is new, so it is filled again at once.
func (a *Agent) reloadSources(cfg *config.Config) error {
	rules, err := cfg.SourceRules()
	if err != nil {
		return err
	}
	a.natMu.RLock()
	err = a.nat.SetInterfacePolicies(interfacePolicies(cfg, rules))
	a.natMu.RUnlock()
	if err != nil {
		return fmt.Errorf("source validation: %w", err)
	}
	a.binder.mu.Lock()
	a.binder.static = rules.Static
	a.binder.mu.Unlock()
	a.binder.sync()
	return nil
}
