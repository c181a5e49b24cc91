package agent

import (
	"context"
	"time"

	"github.com/blocknat/blocknat/userspace/replicate"
)

// replicateComponent copies the store's outbox and the audit log to
// PostgreSQL (replicate.postgres); nothing when the router does not
// replicate. It never fails the start: a database that cannot be reached
// leaves the changes in the outbox, on the router's disk, and raises the
// alarm once they are older than replicate.max_lag. It starts last and
// stops first, so that whatever the Recorder commits while the agent runs
// is in the outbox for it, and what it has not sent waits for the next
// start.
func (a *Agent) replicateComponent() component {
	var stop context.CancelFunc
	done := make(chan error, 1)
	return component{name: "replication",
		start: func(ctx context.Context) error {
			set := a.cfg.ReplicateSettings()
			if !set.Enabled() {
				close(done)
				return nil
			}
			r := replicate.New(replicate.Config{
				Router: set.Router, Connect: replicate.Postgres(set.Postgres), Close: replicate.ClosePostgres,
				Store: a.store, Audit: a.audit, Batch: set.Batch, MaxLag: time.Duration(set.MaxLag), Log: a.log,
			})
			a.mu.Lock()
			a.replicator = r
			a.mu.Unlock()
			ctx, stop = context.WithCancel(ctx)
			go func() { done <- r.Run(ctx) }()
			return nil
		},
		stop: func() error {
			if stop == nil {
				return nil
			}
			stop()
			return <-done
		},
	}
}

// replicationState is the replicator's figures for a snapshot; nil when
// the router does not replicate.
func (a *Agent) replicationState() *replicate.State {
	a.mu.Lock()
	r := a.replicator
	a.mu.Unlock()
	if r == nil {
		return nil
	}
	st := r.State()
	return &st
}
