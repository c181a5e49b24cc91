package agent

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/blocknat/blocknat/userspace/logattr"
	"github.com/blocknat/blocknat/userspace/metrics"
	"github.com/blocknat/blocknat/userspace/store"
)

// canaryFirer puts a canary event into the kernel's ring buffer
// (*loader.Canary).
type canaryFirer interface {
	Fire(seq, epoch uint32) error
}

// canaryFinder looks a canary up in the record store (*store.Store).
type canaryFinder interface {
	Canary(seq uint32, since time.Time) (store.Canary, error)
}

// Self-check timing: how long a canary may take from the kernel to a
// lookup, and how often the store is asked meanwhile. The Recorder commits
// within 50ms; ten seconds without the canary on disk is a store in
// trouble, which is what the alarm is for.
const (
	canaryTimeout = 10 * time.Second
	canaryPoll    = 50 * time.Millisecond
)

// selfCheck proves, every interval, that records are still being written:
// a canary event travels kernel -> ring buffer -> Recorder -> store and is
// looked up again. Logging that silently stops is the failure the law cares
// about most, so a lost canary raises blocknat_records_alarm and logs an
// error; the next canary that arrives clears it.
type selfCheck struct {
	fire     canaryFirer
	find     canaryFinder
	epoch    uint32
	interval time.Duration
	timeout  time.Duration
	log      *slog.Logger

	mu    sync.Mutex
	seq   uint32
	state metrics.SelfCheckState
}

func newSelfCheck(fire canaryFirer, find canaryFinder, epoch uint32, interval time.Duration, log *slog.Logger) *selfCheck {
	var b [4]byte
	// A random first sequence number: a canary left in the store by an
	// earlier run of the agent cannot pass for this run's.
	_, _ = rand.Read(b[:])
	return &selfCheck{fire: fire, find: find, epoch: epoch, interval: interval, timeout: min(canaryTimeout, interval), log: log,
		seq: binary.NativeEndian.Uint32(b[:]), state: metrics.SelfCheckState{Enabled: true, Interval: interval}}
}

// disabled reports a self-check that could not be set up as failing, so
// the alarm says so rather than the check silently never running.
func (c *selfCheck) disabled(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.state.Failing, c.state.LastError, c.state.LastAt = true, err.Error(), time.Now()
	c.log.Error("self-check cannot run: records are not being verified", logattr.Err, err.Error())
}

// run checks at once, then every interval, until ctx ends.
func (c *selfCheck) run(ctx context.Context) {
	tick := time.NewTicker(c.interval)
	defer tick.Stop()
	for {
		c.once(ctx)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// once fires one canary and waits for it in the store. A check cut short
// by ctx is not counted.
func (c *selfCheck) once(ctx context.Context) error {
	c.mu.Lock()
	c.seq++
	seq := c.seq
	c.mu.Unlock()
	// The canary's time is the kernel's, converted to wall time; a
	// minute's slack covers the conversion and a stepped clock.
	since := time.Now().Add(-time.Minute)
	err := c.fire.Fire(seq, c.epoch)
	if err != nil {
		err = fmt.Errorf("canary %d: kernel to ring buffer: %w", seq, err)
	} else {
		err = c.await(ctx, seq, since)
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	c.record(err)
	return err
}

func (c *selfCheck) await(ctx context.Context, seq uint32, since time.Time) error {
	deadline := time.Now().Add(c.timeout)
	for {
		_, err := c.find.Canary(seq, since)
		if err == nil {
			return nil
		}
		if !errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("canary %d: lookup in the record store: %w", seq, err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("canary %d: not in the record store %s after the kernel sent it", seq, c.timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(canaryPoll):
		}
	}
}

func (c *selfCheck) record(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	c.state.Checks++
	c.state.LastAt = now
	if err != nil {
		c.state.Failures++
		c.state.Failing, c.state.LastError = true, err.Error()
		c.log.Error("self-check failed: block records may not be written", logattr.Err, err.Error())
		return
	}
	if c.state.Failing {
		c.log.Info("self-check passes again: block records are written")
	}
	c.state.Failing, c.state.LastError, c.state.LastSuccess = false, "", now
}

// State is the self-check's state for metrics and status.
func (c *selfCheck) State() metrics.SelfCheckState {
	if c == nil {
		return metrics.SelfCheckState{}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state
}
