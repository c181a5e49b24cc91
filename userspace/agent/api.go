package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/blocknat/blocknat/userspace/api"
	"github.com/blocknat/blocknat/userspace/leasehook"
	"github.com/blocknat/blocknat/userspace/logattr"
	"github.com/blocknat/blocknat/userspace/metrics"
	"github.com/blocknat/blocknat/userspace/store"
	"github.com/blocknat/blocknat/userspace/wire"
)

// status is the admin's view of the agent, from the snapshot the metrics
// endpoint reads too, and the store's figures for the answer's own part.
func (a *Agent) status(context.Context) (wire.Status, store.Stats, error) {
	a.natMu.RLock()
	defer a.natMu.RUnlock()
	st := wire.Status{Started: a.started, Epoch: a.epoch.ID, EpochSince: a.epoch.Start, Subscribers: a.mapping.Subscribers,
		PoolAddresses: len(a.mapping.Pool), BlockSize: a.mapping.BlockSize, Ready: a.ready.Load()}
	snap := a.snapshot()
	statusOfSnapshot(&st, snap)
	if snap.Store == nil {
		// The snapshot names the error in Unreadable; the store's part
		// of the answer cannot be given without it.
		return wire.Status{}, store.Stats{}, fmt.Errorf("store stats: %s", strings.Join(st.Unreadable, "; "))
	}
	ss := *snap.Store
	h := snap.Records
	st.Records = wire.RecordStatus{Writing: !h.Failing, LastError: h.LastError, LastWrite: h.LastWrite, EventsRead: h.EventsRead,
		Written: h.RecordsWritten, Dropped: h.Dropped, OpenRecords: ss.OpenRecords, DiskBytes: ss.DiskBytes, OldestRetained: ss.OldestRetained}
	a.mu.Lock()
	st.Records.Recovered, st.Records.ClosedByRecon = a.lastReconcile.Recovered, a.lastReconcile.Closed
	st.Sweep = wire.SweepStatus{Flows: a.lastSweep.Flows, ActiveBlocks: a.lastSweep.ActiveBlocks, Expired: a.lastSweep.Expired, Released: a.lastSweep.Released}
	a.mu.Unlock()
	st.Retention = wire.RetentionStatus{Period: a.cfg.Retention.Records.String(), LastAt: snap.RetentionSweep}
	st.AuditEntries = snap.AuditEntries
	return st, ss, nil
}

// statusOfSnapshot fills the figures `blocknat status` shares with the
// metrics endpoint.
func statusOfSnapshot(st *wire.Status, s metrics.Snapshot) {
	st.DataPlane = s.DataPlane
	st.Alarm = s.Alarms()
	if st.Alarm == nil {
		st.Alarm = []string{}
	}
	sc := s.SelfCheck
	st.SelfCheck = wire.SelfCheckStatus{Enabled: sc.Enabled, Checks: sc.Checks, Failures: sc.Failures, Failing: sc.Failing,
		LastAt: sc.LastAt, LastSuccess: sc.LastSuccess, LastError: sc.LastError}
	if sc.Interval > 0 {
		st.SelfCheck.Interval = sc.Interval.String()
	}
	if b := s.Blocks; b != nil {
		st.Blocks = &wire.BlockStatus{Active: b.ActiveBlocks, Flows: b.Flows, BlockSize: int(b.BlockSize), Full: b.Full}
		if b.ActiveBlocks > 0 {
			st.Blocks.MeanUtilisation = b.Sum / float64(b.ActiveBlocks)
		}
		for i, bound := range metrics.UtilisationBuckets {
			if i < len(b.Counts) {
				st.Blocks.Utilisation = append(st.Blocks.Utilisation, wire.UtilisationBucket{AtMost: bound, Blocks: b.Counts[i]})
			}
		}
	}
	if o := s.Overflow; o != nil {
		st.Overflow = &wire.OverflowStatus{InUse: o.InUse, Free: o.Free, MaxBlocks: int(o.MaxBlocks),
			Claims: s.DataPlane["overflow_claims"], RefusedMax: s.DataPlane["overflow_refused_max"], RefusedPool: s.DataPlane["overflow_refused_pool"]}
	}
	st.PCP = metrics.PCPStatusOf(s.PCP)
	st.Replication = metrics.ReplicationStatusOf(s.Replication)
	g := s.Guard
	st.Guard = wire.GuardStatus{Installed: g.Installed, Problem: g.Problem, Interfaces: g.Interfaces,
		DroppedPackets: g.DroppedPackets, DroppedBytes: g.DroppedBytes, Missing: g.Missing}
	for _, p := range g.Prefixes {
		st.Guard.Prefixes = append(st.Guard.Prefixes, p.String())
	}
	d := s.Disk
	st.Disk = wire.DiskStatus{FreeBytes: d.Free, SizeBytes: d.Size, MinFreeBytes: d.MinFree, Low: d.Low, ReserveBytes: d.Reserve,
		ReserveHeldBytes: d.Held, ReserveReleased: d.Released, Error: d.Err}
	if d.Low {
		st.Disk.Since = d.Since
	}
	st.Clock = wire.ClockStatus{ClockState: clockStateOf(s.Clock), Bound: s.Clock.Bound.String()}
	st.AuditLog = wire.AuditLogStatus{Failing: s.Audit.Failing, LastError: s.Audit.LastError, Since: s.Audit.Since}
	w := s.Writes
	st.StoreWrites = wire.StoreWritesStatus{Commits: w.Count, Errors: w.Errors, MeanSeconds: w.Mean.Seconds(),
		LastSeconds: w.Last.Seconds(), MaxSeconds: w.Max.Seconds()}
	for _, err := range s.Errors {
		st.Unreadable = append(st.Unreadable, err.Error())
	}
}

// deliverLeaseSpool stores the lease events that `blocknat lease` queued
// while the agent was away. A spool the agent may not read (it belongs to
// the DHCP server's user) is left to the next hook call, which delivers it
// through the API.
func (a *Agent) deliverLeaseSpool() {
	dir := a.cfg.Leases.Spool
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return
	}
	spool, err := leasehook.OpenSpool(dir)
	if err != nil {
		a.log.Warn("lease spool not delivered; the next lease hook call delivers it", logattr.Path, dir, logattr.Err, err)
		return
	}
	invalid := 0
	n, err := spool.Deliver(func(evs []leasehook.Event) error {
		out := make([]store.LeaseEvent, 0, len(evs))
		for _, e := range evs {
			ev, err := api.StoreLeaseEvent(e, time.Now())
			if err != nil {
				// The hook validated it before queueing; one that fails
				// now must not hold back the rest of the queue.
				invalid++
				a.log.Error("queued lease event refused", logattr.Path, dir, logattr.Err, err)
				continue
			}
			out = append(out, ev)
		}
		if len(out) == 0 {
			return nil
		}
		return a.store.ApplyLeases(out)
	})
	if err != nil {
		a.log.Warn("lease spool partly delivered; the next lease hook call delivers the rest", logattr.Path, dir, logattr.Count, n, logattr.Err, err)
		return
	}
	if n > 0 {
		a.log.Info("queued lease events delivered", logattr.Path, dir, logattr.Count, n-invalid, "refused", invalid)
	}
}
