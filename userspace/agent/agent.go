// Package agent is blocknatd's body: it loads and attaches the data plane
// for a configuration and keeps it running until its context ends. Later
// stages hang the event reader, the record store and the API off Run.
package agent

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/blocknat/blocknat/loader"
	"github.com/blocknat/blocknat/userspace/config"
	"github.com/blocknat/blocknat/userspace/logattr"
)

// Interfaces lists the configuration's interfaces with their roles, inside
// first, in the order written.
func Interfaces(cfg *config.Config) []loader.Interface {
	var out []loader.Interface
	for _, name := range cfg.Inside.Interfaces {
		out = append(out, loader.Interface{Name: name, Role: loader.RoleInside})
	}
	for _, name := range cfg.Outside.Interfaces {
		out = append(out, loader.Interface{Name: name, Role: loader.RoleOutside})
	}
	return out
}

// Run loads the data plane, attaches it and blocks until ctx is done. On
// return the pinned links keep translating: stopping the agent must not cut
// subscribers off. loader.Detach removes the data plane.
func Run(ctx context.Context, cfg *config.Config, log *slog.Logger) error {
	m, err := cfg.Mapping()
	if err != nil {
		return err
	}
	mode, err := loader.ParseMode(cfg.XDPMode)
	if err != nil {
		return err
	}
	nat, err := loader.Load(loader.Params{Mapping: m, Epoch: 1, MaxFlows: cfg.MaxFlows}, cfg.BPFFSDir)
	if err != nil {
		return fmt.Errorf("load data plane: %w", err)
	}
	defer nat.Close()
	if err := nat.AttachAll(Interfaces(cfg), mode); err != nil {
		return err
	}
	for _, ifc := range Interfaces(cfg) {
		log.Info("xdp attached", logattr.Interface, ifc.Name, logattr.Role, ifc.Role.String(), logattr.Mode, cfg.XDPMode)
	}
	log.Info("translating",
		"subscribers", m.Subscribers, "pool_addresses", len(m.Pool), "block_size", m.BlockSize,
		"ratio", m.Ratio, logattr.PinDir, cfg.BPFFSDir)

	<-ctx.Done()
	log.Info("stopping; the data plane keeps translating", logattr.PinDir, cfg.BPFFSDir)
	return nil
}
