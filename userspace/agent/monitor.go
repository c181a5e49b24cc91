package agent

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/blocknat/blocknat/loader"
	"github.com/blocknat/blocknat/userspace/logattr"
	"github.com/blocknat/blocknat/userspace/metrics"
)

// claimInterfaces refuses interfaces that run someone else's XDP program,
// or, when the operator asked for it, removes those programs.
func (a *Agent) claimInterfaces(replace bool) error {
	removed, err := loader.CheckForeignXDP(interfaces(a.cfg), a.cfg.BPFFSDir, replace)
	for _, p := range removed {
		a.log.Warn("replaced an XDP program blocknat did not attach", logattr.Interface, p.Interface,
			logattr.ProgramID, uint32(p.ID), logattr.ProgramName, p.Name, logattr.Mode, p.Mode)
	}
	return err
}

// startMonitoring starts the self-check and the metrics endpoint. The
// returned function stops both and waits for them; call it before the
// Recorder stops, so no canary is lost to the shutdown itself.
func (a *Agent) startMonitoring(ctx context.Context) (func() error, error) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var serveErr error
	stop := func() error {
		cancel()
		wg.Wait()
		return serveErr
	}

	if iv := time.Duration(a.cfg.SelfCheck.Interval); iv > 0 {
		canary, err := a.nat.LoadCanary()
		a.selfcheck = newSelfCheck(canary, a.store, a.epoch.ID, iv, a.log)
		if err != nil {
			a.selfcheck.disabled(fmt.Errorf("load canary program: %w", err))
		} else {
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer canary.Close()
				a.selfcheck.run(ctx)
			}()
		}
	}

	wg.Add(1)
	go func() {
		defer wg.Done()
		a.clockWatch.run(ctx, clockInterval(a.cfg))
	}()

	if listen := a.cfg.Metrics.Listen; listen != "" {
		reg, err := metrics.Registry(metrics.NewCollector(a.lockedSnapshot, a.writes))
		if err != nil {
			return nil, errorsJoinStop(err, stop)
		}
		ln, err := metrics.Listen(listen)
		if err != nil {
			return nil, errorsJoinStop(err, stop)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			serveErr = metrics.Serve(ctx, ln, reg, a.log)
		}()
		a.log.Info("serving metrics", logattr.Listen, ln.Addr().String(), logattr.Path, metrics.Path)
	}
	return stop, nil
}

func errorsJoinStop(err error, stop func() error) error {
	if serr := stop(); serr != nil {
		return fmt.Errorf("%w (and stopping: %v)", err, serr)
	}
	return err
}

// lockedSnapshot is snapshot for callers that do not already hold natMu.
func (a *Agent) lockedSnapshot() metrics.Snapshot {
	a.natMu.RLock()
	defer a.natMu.RUnlock()
	return a.snapshot()
}

// snapshot reads every figure the metrics endpoint and `blocknat status`
// report, once, so the two always agree. The caller holds natMu for reading.
func (a *Agent) snapshot() metrics.Snapshot {
	s := metrics.Snapshot{Epoch: a.epoch.ID, Records: a.recorder.Health(), SelfCheck: a.selfcheck.State(),
		Clock: a.clockWatch.figures()}
	if dp, err := a.nat.Stats(); err != nil {
		s.Errors = append(s.Errors, metrics.ErrPart("data plane counters", err))
	} else {
		s.DataPlane = dp
	}
	if u, err := metrics.ScanBlocks(a.nat, a.mapping.BlockSize, uint64(loader.MonotonicNow())); err != nil {
		s.Errors = append(s.Errors, metrics.ErrPart("kernel tables", err))
	} else {
		s.Blocks = &u
	}
	if o := overflowOf(a.cfg); o != nil {
		if u, err := metrics.ScanOverflow(a.nat, o); err != nil {
			s.Errors = append(s.Errors, metrics.ErrPart("overflow blocks", err))
		} else {
			s.Overflow = &u
		}
	}
	if a.writes != nil {
		s.Writes = a.writes.Stats()
	}
	if a.pcp != nil {
		s.PCP = pcpFiguresOf(a.pcp.Stats())
	}
	s.Replication = a.replicationState()
	if st, err := a.store.Stats(); err != nil {
		s.Errors = append(s.Errors, metrics.ErrPart("record store", err))
	} else {
		s.Store = &st
	}
	a.mu.Lock()
	s.RetentionSweep = a.retentionAt
	a.mu.Unlock()
	if a.audit != nil {
		s.AuditEntries = a.audit.Len()
	}
	var err error
	if s.Guard, err = a.guardFigures(); err != nil {
		s.Errors = append(s.Errors, metrics.ErrPart("nftables guard", err))
	}
	if a.disk != nil {
		s.Disk = a.disk.State()
	}
	if a.audit != nil {
		s.Audit = a.audit.Health()
	}
	if a.api != nil {
		c := a.api.Counters()
		s.API = metrics.APIFigures{Rejected: c.Rejected, ConnsOverCap: c.ConnsOverCap, RefusalsSummarised: c.RefusalsSummarised}
	}
	return s
}
