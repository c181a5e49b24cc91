package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"time"

	"github.com/blocknat/blocknat/loader"
	"github.com/blocknat/blocknat/userspace/api"
	"github.com/blocknat/blocknat/userspace/apiserve"
	"github.com/blocknat/blocknat/userspace/audit"
	"github.com/blocknat/blocknat/userspace/clockstate"
	"github.com/blocknat/blocknat/userspace/config"
	"github.com/blocknat/blocknat/userspace/diskspace"
	"github.com/blocknat/blocknat/userspace/events"
	"github.com/blocknat/blocknat/userspace/export"
	"github.com/blocknat/blocknat/userspace/logattr"
	"github.com/blocknat/blocknat/userspace/mapping"
	"github.com/blocknat/blocknat/userspace/metrics"
	"github.com/blocknat/blocknat/userspace/preflight"
	"github.com/blocknat/blocknat/userspace/reconcile"
	"github.com/blocknat/blocknat/userspace/sdnotify"
	"github.com/blocknat/blocknat/userspace/store"
	"github.com/blocknat/blocknat/userspace/sweeper"
)

// Options are the agent's run-time choices that are not configuration: an
// operator makes them for one start, not for every start.
type Options struct {
	// ReplaceXDP removes XDP programs that blocknat did not attach from the
	// configured interfaces (blocknatd --replace). Without it such a
	// program stops the start, naming the interface and the program id.
	ReplaceXDP bool
	// ConfigPath is the file a reload reads again.
	ConfigPath string
	// Reloads asks for a reload (SIGHUP): a changed mapping starts a new
	// epoch, keeping the mappings it still allows.
	Reloads <-chan struct{}
}

// newAgent checks what the configuration says of the data plane and the
// router it is to run on (userspace/preflight, the checks `blocknatd check
// --live` prints), and builds the agent; nothing is opened, created or
// started yet. A check that would fail later, after the store, the audit
// key or the pins exist, refuses the start here instead.
func newAgent(cfg *config.Config, log *slog.Logger, opts Options) (*Agent, error) {
	m, err := cfg.Mapping()
	if err != nil {
		return nil, err
	}
	if _, err := loader.ParseMode(cfg.XDPMode); err != nil {
		return nil, err
	}
	a := &Agent{plane: &plane{cfg: cfg, mapping: m}, log: log, clock: &events.SystemClock{}, started: time.Now(),
		configPath: opts.ConfigPath, reloads: opts.Reloads}
	a.clockWatch = newClockWatch(clockstate.Kernel{}, time.Duration(cfg.SelfCheck.ClockMaxError), log)
	warnings, err := preflight.Start(cfg, preflight.Options{ReplaceXDP: opts.ReplaceXDP})
	for _, w := range warnings {
		log.Warn("start-up check failed; starting all the same", logattr.Check, w.Check, logattr.Problem, w.Text)
	}
	var refused *preflight.Error
	if errors.As(err, &refused) {
		// Fail closed even so: the guard is the one thing a refused
		// start puts in place, since without it the kernel forwards
		// subscriber packets untranslated (it creates nothing under
		// state_dir or bpffs_dir).
		if gerr := a.installGuard(); gerr != nil {
			refused.Findings = append(refused.Findings, preflight.Finding{Check: "guard", Status: preflight.Fail, Refuses: true,
				Text: "could not be installed: " + gerr.Error()})
		}
		return nil, refused
	}
	return a, err
}

// components are the agent's parts in the order they start; they stop in
// reverse (docs/ARCHITECTURE.md, Shutdown, which a test holds to this
// list). What each needs from an earlier one is there by the time it
// starts.
func (a *Agent) components(opts Options) []component {
	return []component{
		// Before anything touches the data plane or the guard.
		{name: "owner", start: func(context.Context) error { return a.claim(opts.ConfigPath) },
			stop: func() error { return a.owner.Release() }},
		// Private before anything is written under state_dir; its free
		// space read before the store opens.
		{name: "state_dir", start: func(context.Context) error { return a.prepareStateDir() }},
		{name: "store", start: func(context.Context) error { return a.openStore() },
			stop: func() error { return a.store.Close() }},
		a.auditComponent(),
		// Fail closed: the nftables guard goes in before XDP attaches and
		// stays when the agent stops or fails, so no inside address ever
		// leaves an outside interface untranslated (see userspace/guard).
		{name: "guard", start: func(context.Context) error { return a.installGuard() }},
		// Closing leaves the pinned links: translation continues.
		{name: "data plane", start: func(context.Context) error { return a.startNAT(opts.ReplaceXDP) },
			stop: func() error { a.nat.Close(); return nil }},
		// Watches routes, neighbours and links for the data plane's
		// next-hop cache; stopping turns the cache off before the data
		// plane's handles close, so no agent-less cache outlives it.
		a.routesComponent(),
		// Closed after the Recorder stops: its last batch is exported too.
		{name: "exports", start: func(context.Context) error { return a.openExports() },
			stop: func() error { return a.exp.Close() }},
		// Stopping closes the ring-buffer reader and flushes what it read
		// into the store.
		a.recorderComponent(),
		// Stopped before the Recorder and the store: no answer may be
		// given from a store that is being closed.
		a.apiComponent(),
		// After the Recorder, which records the blocks its mappings
		// activate; stopped before it.
		a.pcpComponent(),
		// Stopped before the Recorder: a canary in flight must not be lost
		// to the shutdown and raise a false alarm.
		a.monitoringComponent(),
		a.maintenanceComponent(),
		// Last to start and first to stop: what it has not sent stays in
		// the outbox for the next start.
		a.replicateComponent(),
	}
}

// openStore opens the record store, which asks the disk guard before
// every write.
func (a *Agent) openStore() (err error) {
	if a.store, err = store.Open(storePath(a.cfg), store.Options{Logger: a.log, Writable: a.disk.Writable,
		Outbox: a.cfg.ReplicateSettings().Enabled()}); err != nil {
		// Two agents started at once both pass the start-up checks; the
		// store's lock then refuses the later one, which names the first.
		if holder, held := preflight.StoreHolder(a.cfg.StateDir); held {
			return fmt.Errorf("state_dir %s is in use by %s: stop that agent, or give this one a state_dir of its own", a.cfg.StateDir, holder)
		}
		return fmt.Errorf("open record store: %w%s", err, a.diskHint())
	}
	return nil
}

// auditComponent opens the audit log and runs its checkpoints and
// retries; stopping writes a final checkpoint.
func (a *Agent) auditComponent() component {
	var stop context.CancelFunc
	done := make(chan struct{})
	return component{name: "audit",
		start: func(ctx context.Context) (err error) {
			if a.audit, err = openAudit(a.cfg, a); err != nil {
				return err
			}
			ctx, stop = context.WithCancel(context.WithoutCancel(ctx))
			go func() {
				defer close(done)
				a.audit.Run(ctx)
			}()
			return nil
		},
		stop: func() error {
			stop()
			<-done
			return a.audit.Close()
		},
	}
}

// startNAT loads and attaches the data plane and gives it the source
// rules and bindings.
func (a *Agent) startNAT(replace bool) error {
	mode, err := loader.ParseMode(a.cfg.XDPMode)
	if err != nil {
		return err
	}
	if err := a.startDataPlane(mode, replace); err != nil {
		return err
	}
	if err := a.startSources(); err != nil {
		return err
	}
	for _, ifc := range interfaces(a.cfg) {
		a.log.Info("xdp attached", logattr.Interface, ifc.Name, logattr.Role, ifc.Role.String(), logattr.Mode, a.cfg.XDPMode)
		warnVethPeer(a.log, ifc.Name)
	}
	return nil
}

func (a *Agent) openExports() (err error) {
	a.exp, err = export.New(exportOptions(a.cfg.Export, a.log))
	return err
}

// recorderComponent reads the ring buffer into the store. It outlives ctx
// until stopped, so that what it read is flushed in the shutdown's order.
func (a *Agent) recorderComponent() component {
	var stop context.CancelFunc
	done := make(chan error, 1)
	return component{name: "recorder",
		start: func(ctx context.Context) error {
			rd, err := a.nat.OpenEvents()
			if err != nil {
				return err
			}
			a.writes = metrics.NewWrites(a.store)
			a.recorder = events.NewRecorder(a.writes, events.Options{Clock: a.clock, Logger: a.log, Observers: a.exp.Observers()})
			ctx, stop = context.WithCancel(context.WithoutCancel(ctx))
			go func() { done <- a.recorder.Run(ctx, rd) }()
			return nil
		},
		stop: func() error {
			stop()
			return <-done
		},
	}
}

// apiComponent serves the query API on the unix socket and, when
// configured, over TLS.
func (a *Agent) apiComponent() component {
	var stop context.CancelFunc
	var done <-chan error
	return component{name: "api",
		start: func(ctx context.Context) error {
			a.api = api.NewServer(api.Deps{Store: a.store, Audit: a.audit, Roles: apiserve.Roles(a.cfg.Roles), Status: a.status,
				LeasesChanged: a.binder.sync, Now: time.Now, Clock: a.clockWatch.forAnswer, Logger: a.log})
			ctx, stop = context.WithCancel(ctx)
			done = apiserve.Serve(ctx, a.api, a.cfg.API)
			return nil
		},
		stop: func() error {
			stop()
			if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
				return err
			}
			return nil
		},
	}
}

// monitoringComponent runs the self-check and the metrics endpoint.
func (a *Agent) monitoringComponent() component {
	var stop func() error
	return component{name: "monitoring",
		start: func(ctx context.Context) (err error) {
			stop, err = a.startMonitoring(ctx)
			return err
		},
		stop: func() error { return stop() },
	}
}

// maintenanceComponent reconciles, delivers the lease spool and sweeps
// retention once, then runs the periodic work and reloads until stopped.
func (a *Agent) maintenanceComponent() component {
	var stop context.CancelFunc
	done := make(chan struct{})
	return component{name: "maintenance",
		start: func(ctx context.Context) error {
			a.sweeper = &sweeper.Sweeper{Plane: a.sweepPlane, Clock: a.clock, Records: a.recorder, Logger: a.log}
			a.recon = &reconcile.Reconciler{Plane: a.reconcilePlane, Store: a.store, Records: a.recorder, Clock: a.clock}
			m := a.mapping
			a.log.Info("translating", "subscribers", m.Subscribers, "pool_addresses", len(m.Pool),
				"block_size", m.BlockSize, "ratio", m.Ratio, logattr.Epoch, a.epoch.ID, logattr.PinDir, a.cfg.BPFFSDir)
			ctx, stop = context.WithCancel(ctx)
			a.reconcileOnce(ctx)
			a.deliverLeaseSpool()
			a.retention(time.Now())
			go func() {
				defer close(done)
				a.maintain(ctx)
			}()
			// The last component: from here the agent is what a start
			// promises, so systemd (Type=notify) and `blocknat status
			// --wait` may go on.
			a.ready.Store(true)
			a.notify("READY=1", fmt.Sprintf("STATUS=translating: %d subscribers on %d public addresses, epoch %d",
				m.Subscribers, len(m.Pool), a.epoch.ID))
			return nil
		},
		stop: func() error {
			a.ready.Store(false)
			a.notify("STOPPING=1", "STATUS=stopping; the data plane keeps translating")
			stop()
			<-done
			a.log.Info("stopping; the data plane keeps translating", logattr.PinDir, a.cfg.BPFFSDir)
			return nil
		},
	}
}

// notify tells the service manager state (sd_notify); outside one it
// does nothing. A manager that cannot be told is logged, not fatal: the
// agent translates and records all the same.
func (a *Agent) notify(state ...string) {
	if _, err := sdnotify.Notify(state...); err != nil {
		a.log.Warn("could not tell the service manager", logattr.Err, err.Error())
	}
}

// sweepPlane is the plane in force as the sweeper works on it.
func (a *Agent) sweepPlane() sweeper.Plane {
	p := a.current()
	sp := sweeper.Plane{Tables: p.nat, Mapping: p.mapping, Timeouts: sweeperTimeouts(p.cfg)}
	if o := overflowOf(p.cfg); o != nil {
		sp.Overflow, sp.OverflowTables = o, p.nat
	}
	return sp
}

// reconcilePlane is the plane in force as the reconciler reads it.
func (a *Agent) reconcilePlane() reconcile.Plane {
	p := a.current()
	return reconcile.Plane{Tables: p.nat, Mapping: p.mapping, Overflow: overflowOf(p.cfg), Epoch: p.epoch.ID}
}

// The configuration's translation into what each part takes.

// interfaces lists the configuration's interfaces with their roles, inside
// first, in the order written.
func interfaces(cfg *config.Config) []loader.Interface {
	var out []loader.Interface
	for _, name := range cfg.Inside.Interfaces {
		out = append(out, loader.Interface{Name: name, Role: loader.RoleInside})
	}
	for _, name := range cfg.Outside.Interfaces {
		out = append(out, loader.Interface{Name: name, Role: loader.RoleOutside})
	}
	return out
}

// storePath is where the record store lives under state_dir.
func storePath(cfg *config.Config) string { return filepath.Join(cfg.StateDir, "records") }

// params are the data plane's parameters for cfg under epoch.
func params(cfg *config.Config, m *mapping.Mapping, epoch uint32) loader.Params {
	// Validate has parsed the exemptions of every configuration that
	// reaches here, so this cannot fail.
	ex, _ := cfg.Exemptions()
	return loader.Params{Mapping: m, Epoch: epoch, MaxFlows: cfg.MaxFlows,
		FilterAPDF: cfg.Filtering == config.FilteringAddressPort, UDPInboundRefresh: cfg.Timeouts.UDPInboundRefresh,
		Exempt: ex.Destinations, PublicInside: ex.Public, Overflow: overflowOf(cfg), PCP: cfg.PCPSettings().Enabled}
}

// overflowOf is the configuration's overflow layout, nil when it is off;
// Validate has built it for every configuration that reaches here.
func overflowOf(cfg *config.Config) *mapping.Overflow {
	o, _ := cfg.OverflowLayout()
	return o
}

func sweeperTimeouts(cfg *config.Config) sweeper.Timeouts {
	return sweeper.Timeouts{
		UDP: time.Duration(cfg.Timeouts.UDP), TCPEstablished: time.Duration(cfg.Timeouts.TCPEstablished),
		TCPTransitory: time.Duration(cfg.Timeouts.TCPTransitory), ICMP: time.Duration(cfg.Timeouts.ICMP),
		BlockIdle: time.Duration(cfg.Timeouts.BlockIdle),
	}
}

func diskLimits(cfg *config.Config) diskspace.Limits {
	return diskspace.Limits{MinFree: uint64(cfg.Disk.MinFree), Reserve: uint64(cfg.Disk.Reserve)}
}

func interfacePolicies(cfg *config.Config, rules config.SourceRules) map[string]loader.InterfacePolicy {
	out := map[string]loader.InterfacePolicy{}
	for _, name := range cfg.Inside.Interfaces {
		p := loader.InterfacePolicy{Prefixes: rules.InterfacePrefixes[name], RequireBinding: rules.RequireBinding[name]}
		if len(p.Prefixes) > 0 || p.RequireBinding {
			out[name] = p
		}
	}
	return out
}

// exportOptions turns the configuration's export section into the
// exporters' options. The addresses were checked when it was loaded.
func exportOptions(c config.Export, log *slog.Logger) export.Options {
	o := export.Options{Logger: log}
	if x := c.IPFIX; x != nil {
		o.IPFIX = &export.IPFIXOptions{Collector: netip.MustParseAddrPort(x.Collector),
			TemplateRefresh: time.Duration(x.TemplateRefresh), ObservationDomain: x.ObservationDomain}
	}
	if x := c.Syslog; x != nil {
		o.Syslog = &export.SyslogOptions{Address: netip.MustParseAddrPort(x.Address), Network: x.Network, AppName: x.AppName}
	}
	return o
}

// auditDir is where the audit log lives under state_dir.
func auditDir(cfg *config.Config) string { return filepath.Join(cfg.StateDir, "audit") }

// openAudit opens the audit log as every API server does (userspace/apiserve).
func openAudit(cfg *config.Config, a *Agent) (*audit.Log, error) {
	return apiserve.OpenAudit(auditDir(cfg), cfg.AuditKeyPath(), cfg.Audit, cfg.Retention, a.log)
}

