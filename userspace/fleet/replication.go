package fleet

import (
	"context"
	"time"

	"github.com/blocknat/blocknat/userspace/metrics"
	"github.com/blocknat/blocknat/userspace/replicate"
	"github.com/blocknat/blocknat/userspace/wire"
)

// replicationDrain bounds how long a stop waits for the fleet's last
// audit entries to reach the database.
const replicationDrain = 2 * time.Second

// replicationComponent copies the fleet's own audit log to the database.
func (s *Service) replicationComponent() component {
	var stop context.CancelFunc
	done := make(chan struct{})
	return component{name: "replication",
		start: func(ctx context.Context) error {
			db := s.db
			s.repl = replicate.New(replicate.Config{
				Router: s.cfg.RouterName(),
				// The service's own pool: the replicator never closes it.
				Connect: func(context.Context) (replicate.Sink, error) { return replicate.NewSink(db), nil },
				Audit:   s.audit.Log,
				MaxLag:  time.Duration(s.cfg.ReplicateMaxLag),
				Log:     s.log,
			})
			ctx, stop = context.WithCancel(context.WithoutCancel(ctx))
			go func() {
				defer close(done)
				s.repl.Run(ctx)
			}()
			return nil
		},
		stop: func() error {
			// The API has stopped: give the last requests' entries a
			// moment to reach the database. What is left stays in the
			// local chain and is sent at the next start.
			s.repl.Wake()
			deadline := time.Now().Add(replicationDrain)
			for s.repl.State().AuditSent < s.audit.Log.Len() && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
			stop()
			<-done
			return nil
		},
	}
}

func (s *Service) replicationStatus() *wire.ReplicationStatus {
	if s.repl == nil {
		return nil
	}
	st := s.repl.State()
	return metrics.ReplicationStatusOf(&st)
}
