// Package agent is blocknatd's body. RunWith claims the data plane, opens
// the record store and the audit log, installs the guard, loads and
// attaches the data plane, and then keeps things going until its context
// ends: the ring-buffer reader that writes block records, the API, the
// self-check and metrics, and the maintenance loop (the sweeper that
// expires mappings and releases idle blocks, the reconciler that repairs
// records from the kernel's view, retention, reloads). wiring.go lists
// these components in the order they start; they stop in reverse.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/blocknat/blocknat/loader"
	"github.com/blocknat/blocknat/userspace/api"
	"github.com/blocknat/blocknat/userspace/audit"
	"github.com/blocknat/blocknat/userspace/config"
	"github.com/blocknat/blocknat/userspace/diskspace"
	"github.com/blocknat/blocknat/userspace/events"
	"github.com/blocknat/blocknat/userspace/export"
	"github.com/blocknat/blocknat/userspace/logattr"
	"github.com/blocknat/blocknat/userspace/mapping"
	"github.com/blocknat/blocknat/userspace/metrics"
	"github.com/blocknat/blocknat/userspace/pcpserver"
	"github.com/blocknat/blocknat/userspace/replicate"
	"github.com/blocknat/blocknat/userspace/reconcile"
	"github.com/blocknat/blocknat/userspace/store"
	"github.com/blocknat/blocknat/userspace/sweeper"
)

// Agent is a running blocknatd. Its parts are built and started by
// components (wiring.go), in the order ARCHITECTURE.md gives, and stopped
// in reverse.
type Agent struct {
	// plane is the configuration in force and the data plane serving it.
	// A reload replaces it whole, holding natMu; its fields read as the
	// Agent's own (a.cfg, a.nat).
	*plane

	log       *slog.Logger
	owner     *loader.Owner
	store     *store.Store
	recorder  *events.Recorder
	exp       *export.Exporter
	sweeper   *sweeper.Sweeper
	recon     *reconcile.Reconciler
	audit     *audit.Log
	clock     events.Clock
	started   time.Time
	writes    *metrics.Writes
	selfcheck *selfCheck
	// clockWatch reads the clock's synchronisation state.
	clockWatch *clockWatch
	guard      guardState
	// disk refuses store writes while state_dir is short of space.
	disk *diskspace.Guard
	// api is the query API's server, for what it turned away.
	api *api.Server
	// pcp is the PCP server; nil when pcp.enabled is off.
	pcp *pcpserver.Server
	// replicator copies the records to PostgreSQL; nil when replicate
	// is off. Guarded by mu.
	replicator *replicate.Replicator
	// ready is set once every component has started (READY=1).
	ready atomic.Bool

	configPath string
	reloads    <-chan struct{}
	// natMu is held for reading while the API or the metrics read the
	// kernel tables, and for writing while a reload replaces the plane.
	natMu sync.RWMutex
	// binder keeps the data plane's source bindings in step with leases.
	binder *binder

	// mu guards the last results below against the API's and the
	// metrics' readers.
	mu            sync.Mutex
	lastSweep     sweeper.Result
	lastReconcile reconcile.Result
	lastRetention store.SweepStats
	retentionAt   time.Time
}

// plane is what a reload changes, as one: the configuration, its mapping
// and epoch, and the data plane loaded for them.
type plane struct {
	cfg     *config.Config
	mapping *mapping.Mapping
	epoch   store.Epoch
	nat     *loader.NAT
}

// current is the plane in force. The sweeper and the reconciler read it
// through this at the start of each pass; they run on the goroutine that
// reloads, so the tables they hold are never closed under them.
func (a *Agent) current() *plane {
	a.natMu.RLock()
	defer a.natMu.RUnlock()
	return a.plane
}

// RunWith builds the agent's components for cfg and the operator's
// one-off choices, and runs them until ctx ends. On return the pinned links
// keep translating: stopping the agent must not cut subscribers off.
// loader.Detach removes the data plane.
func RunWith(ctx context.Context, cfg *config.Config, log *slog.Logger, opts Options) error {
	a, err := newAgent(cfg, log, opts)
	if err != nil {
		return err
	}
	return run(ctx, a.components(opts))
}

// startDataPlane loads, attaches and records the epoch. When the pinned
// tables were left by an earlier epoch whose mapping differs, it opens them
// with that mapping and then reloads onto the new one, so the mappings the
// new configuration still allows survive the restart and the others go.
func (a *Agent) startDataPlane(mode loader.Mode, replace bool) error {
	cfg, now := a.cfg, time.Now()
	epoch, latest, err := a.epochFor(a.mapping, now)
	if err != nil {
		return err
	}
	if err := a.epochWritable(epoch, latest); err != nil {
		return err
	}
	p := params(cfg, a.mapping, epoch.ID)
	_, statErr := os.Stat(filepath.Join(cfg.BPFFSDir, "maps", "flows_fwd"))
	changed := latest != nil && latest.ID != epoch.ID && statErr == nil
	if changed {
		old, err := epochMapping(*latest)
		if err != nil {
			return fmt.Errorf("rebuild epoch %d's mapping: %w", latest.ID, err)
		}
		p = params(cfg, old, latest.ID)
		// The earlier epoch's tables have the size they were made
		// with (the derived max_flows follows the mapping); the reload
		// below sizes the new ones for this configuration.
		pinned, err := loader.OpenPinned(cfg.BPFFSDir)
		if err != nil {
			return fmt.Errorf("read epoch %d's tables: %w", latest.ID, err)
		}
		p.MaxFlows = pinned.FlowTableSize()
		pinned.Close()
	}
	if a.nat, err = loader.Load(p, cfg.BPFFSDir); err != nil {
		return fmt.Errorf("load data plane: %w", err)
	}
	if n := a.nat.MigratedFlows(); n > 0 {
		a.log.Info("carried the live mappings over to this release's flow-table layout", "mappings", n)
	}
	if err := a.claimInterfaces(replace); err != nil {
		return err
	}
	if err := a.nat.AttachAll(interfaces(cfg), mode); err != nil {
		return err
	}
	if changed {
		next, st, err := a.nat.Reload(params(cfg, a.mapping, epoch.ID))
		if next != nil {
			a.nat = next
		}
		if err != nil {
			return fmt.Errorf("move the data plane from epoch %d to %d: %w", latest.ID, epoch.ID, err)
		}
		a.log.Info("mapping changed since the last run: new epoch", logattr.Epoch, epoch.ID, "kept", st.Kept, "dropped", st.Dropped)
	}
	a.epoch = epoch
	err = a.putEpoch(epoch, now)
	if errors.Is(err, diskspace.ErrLow) && latest != nil && latest.ID == epoch.ID {
		// The epoch is on record from an earlier run; only this copy's
		// time is missing, and the daily re-record writes it later.
		a.log.Warn("epoch not re-recorded at start: state_dir is low on space", logattr.Epoch, epoch.ID, logattr.Err, err.Error())
		return nil
	}
	return err
}

// reload reads the configuration file again (SIGHUP). A changed mapping
// starts a new epoch: the data plane moves onto it keeping every mapping
// still allowed, and the reconciler then closes the records of blocks that
// changed and opens records for the new ones. A configuration that does not
// load, or that changes what only a restart can change, is refused and the
// agent goes on as it was.
func (a *Agent) reload(ctx context.Context) {
	if a.configPath == "" {
		a.log.Warn("reload ignored: the agent was not started from a configuration file")
		return
	}
	cfg, err := config.Load(a.configPath)
	if err != nil {
		a.log.Error("reload refused", logattr.Err, err.Error())
		return
	}
	if field := restartOnly(a.cfg, cfg); field != "" {
		a.log.Error("reload refused: this field changes only with a restart", "field", field)
		return
	}
	m, err := cfg.Mapping()
	if err != nil {
		a.log.Error("reload refused", logattr.Err, err.Error())
		return
	}
	now := time.Now()
	epoch, latest, err := a.epochFor(m, now)
	if err != nil {
		a.log.Error("reload failed", logattr.Err, err.Error())
		return
	}
	if err := a.epochWritable(epoch, latest); err != nil {
		a.log.Error("reload refused; the previous configuration stays in force", logattr.Err, err.Error())
		return
	}
	a.disk.SetLimits(diskLimits(cfg))
	// The guard covers the old and the new prefixes while the data plane
	// moves, and the ones in force afterwards.
	defer a.guardDuringReload(m.Prefixes)()
	a.natMu.Lock()
	next, st, err := a.nat.Reload(params(cfg, m, epoch.ID))
	if next == nil {
		a.natMu.Unlock()
		a.log.Error("reload failed; the previous configuration stays in force", logattr.Err, err.Error())
		return
	}
	if err != nil {
		// The new configuration is in force and translating; only some
		// pins are missing, so a restart may start from empty tables.
		a.log.Error("reload: pinning the new tables failed", logattr.Err, err.Error())
	}
	// One swap: the sweeper, the reconciler, the API and the metrics
	// see the old plane or the new one, never a mixture.
	a.plane = &plane{cfg: cfg, mapping: m, epoch: epoch, nat: next}
	a.natMu.Unlock()
	if a.pcp != nil {
		// Outside natMu: the server's reads of the tables take it.
		if err := a.pcp.Remap(m); err != nil {
			a.log.Error("reload: the PCP server keeps the previous mapping's view", logattr.Err, err.Error())
		}
	}
	// Before the epoch is recorded, so its clock is judged by the new bound.
	a.clockWatch.setBound(time.Duration(cfg.SelfCheck.ClockMaxError))
	if err := a.putEpoch(epoch, now); err != nil {
		a.log.Error("reload: record epoch failed", logattr.Err, err.Error())
	}
	if err := a.reloadSources(cfg); err != nil {
		a.log.Error("reload: source validation not applied", logattr.Err, err.Error())
	}
	a.log.Info("configuration reloaded", logattr.Epoch, epoch.ID, "kept", st.Kept, "dropped", st.Dropped,
		"pcp_kept", st.PCPKept, "pcp_dropped", st.PCPDropped)
	a.reconcileOnce(ctx)
}

// restartOnly names the first field that differs between two
// configurations and that a reload cannot apply.
func restartOnly(old, cfg *config.Config) string {
	switch {
	case !slices.Equal(old.Inside.Interfaces, cfg.Inside.Interfaces):
		return "inside.interfaces"
	case !slices.Equal(old.Outside.Interfaces, cfg.Outside.Interfaces):
		return "outside.interfaces"
	case old.XDPMode != cfg.XDPMode:
		return "xdp_mode"
	case old.StateDir != cfg.StateDir:
		return "state_dir"
	case old.BPFFSDir != cfg.BPFFSDir:
		return "bpffs_dir"
	case old.API.Socket != cfg.API.Socket:
		return "api.socket"
	case !overflowOf(old).SameBlocks(overflowOf(cfg)):
		// Its tables are sized by it and pinned: see the guide.
		return "ports.overflow"
	case old.PCPSettings() != cfg.PCPSettings():
		// The server and its sockets start with the agent.
		return "pcp"
	case old.ReplicateSettings() != cfg.ReplicateSettings():
		// The store keeps its outbox only when opened with one.
		return "replicate"
	}
	return ""
}

// maintain runs the periodic work from one goroutine, so the sweeper's and
// the reconciler's views of the kernel tables never interleave.
func (a *Agent) maintain(ctx context.Context) {
	sweep := time.NewTicker(time.Duration(a.cfg.Intervals.Sweep))
	recon := time.NewTicker(time.Duration(a.cfg.Intervals.Reconcile))
	keep := time.NewTicker(time.Duration(a.cfg.Intervals.Retention))
	daily := time.NewTicker(24 * time.Hour)
	guardCheck := time.NewTicker(guardCheckInterval)
	defer guardCheck.Stop()
	diskCheck := time.NewTicker(diskCheckInterval)
	defer diskCheck.Stop()
	defer sweep.Stop()
	defer recon.Stop()
	defer keep.Stop()
	defer daily.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-sweep.C:
			res, err := a.sweeper.Sweep(ctx)
			if err != nil && ctx.Err() == nil {
				a.log.Error("sweep failed", logattr.Err, err.Error())
			}
			a.mu.Lock()
			a.lastSweep = res
			a.mu.Unlock()
		case <-recon.C:
			a.reconcileOnce(ctx)
			// Leases that lapsed without a release unbind their address.
			a.binder.sync()
		case now := <-keep.C:
			a.retention(now)
		case <-a.reloads:
			a.reload(ctx)
		case <-guardCheck.C:
			a.checkGuard()
		case <-diskCheck.C:
			a.disk.Maintain()
		case now := <-daily.C:
			// RFC 7422 §3: the mapping in force is logged again daily,
			// so every retention window holds it.
			if _, err := a.recordEpoch(now); err != nil {
				a.log.Error("re-record epoch failed", logattr.Err, err.Error())
			}
		}
	}
}

func (a *Agent) reconcileOnce(ctx context.Context) {
	res, err := a.recon.Once(ctx)
	if err != nil {
		if ctx.Err() == nil {
			a.log.Error("reconcile failed", logattr.Err, err.Error())
		}
		return
	}
	if res.Recovered > 0 || res.Closed > 0 {
		a.log.Info("reconciled records with the kernel", "active", res.Active, "recovered", res.Recovered, "closed", res.Closed)
	}
	a.mu.Lock()
	a.lastReconcile = res
	a.mu.Unlock()
}

func (a *Agent) retention(now time.Time) {
	if removed, err := a.audit.Sweep(); err != nil {
		a.log.Error("audit retention sweep failed", logattr.Err, err.Error())
	} else if removed > 0 {
		a.log.Info("audit entries past retention removed", logattr.Count, removed)
	}
	st, err := a.store.Sweep(time.Duration(a.cfg.Retention.Records))
	if err != nil {
		a.log.Error("retention sweep failed", logattr.Err, err.Error())
		return
	}
	a.mu.Lock()
	a.lastRetention, a.retentionAt = st, now
	a.mu.Unlock()
}

// recordEpoch writes the epoch for the current mapping: the latest one
// again if its parameters are unchanged, else a new one in force from now.
func (a *Agent) recordEpoch(now time.Time) (store.Epoch, error) {
	e, _, err := a.epochFor(a.mapping, now)
	if err != nil {
		return e, err
	}
	return e, a.putEpoch(e, now)
}

// epochFor is the epoch m is in force under: the latest recorded one if
// its parameters are m's, else a new one starting now. It also returns the
// latest recorded epoch, if any.
func (a *Agent) epochFor(m *mapping.Mapping, now time.Time) (store.Epoch, *store.Epoch, error) {
	hash := m.Hash()
	epochs, err := a.store.Epochs()
	if err != nil {
		return store.Epoch{}, nil, fmt.Errorf("read epochs: %w", err)
	}
	e := store.Epoch{ID: 1, Start: now, Prefixes: m.Prefixes, Pool: m.Pool, PortLo: m.PortLo, PortHi: m.PortHi,
		BlockSize: m.BlockSize, Ratio: m.Ratio, Hash: hash}
	n := len(epochs)
	if n == 0 {
		return e, nil, nil
	}
	latest := epochs[n-1]
	if latest.Hash == hash {
		return latest, &latest, nil
	}
	e.ID = latest.ID + 1
	return e, &latest, nil
}

func (a *Agent) putEpoch(e store.Epoch, now time.Time) error {
	e.Recorded = now
	// The clock as it is now, not as an earlier copy of this epoch found
	// it: each copy says how far its own times can be trusted.
	e.Clock = a.clockWatch.forEpoch()
	if err := a.store.PutEpoch(e); err != nil {
		return fmt.Errorf("record epoch %d: %w", e.ID, err)
	}
	return nil
}

// epochMapping rebuilds the mapping an epoch recorded.
func epochMapping(e store.Epoch) (*mapping.Mapping, error) {
	pool := make([]netip.Prefix, len(e.Pool))
	for i, a := range e.Pool {
		pool[i] = netip.PrefixFrom(a, 32)
	}
	return mapping.New(e.Prefixes, pool, e.PortLo, e.PortHi, e.BlockSize)
}
