package agent

import (
	"context"
	"encoding/binary"
	"errors"
	"github.com/blocknat/blocknat/test/testutil"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/blocknat/blocknat/loader"
	"github.com/blocknat/blocknat/userspace/events"
	"github.com/blocknat/blocknat/userspace/metrics"
	"github.com/blocknat/blocknat/userspace/store"
)

// ring stands in for the kernel's ring buffer; the loader and end-to-end
// tests prove the kernel side with the real one.
type ring struct {
	ch     chan []byte
	closed chan struct{}
	once   sync.Once
}

func (r *ring) Read() (loader.BlockEvent, error) {
	var e loader.BlockEvent
	select {
	case b := <-r.ch:
		_, err := binary.Decode(b, binary.NativeEndian, &e)
		return e, err
	case <-r.closed:
		return e, loader.ErrEventsClosed
	}
}

func (r *ring) Close() error { r.once.Do(func() { close(r.closed) }); return nil }

// kernel fires canaries into the ring as bpf/canary.c does, or fails as
// the canary program does when the ring buffer is full.
type kernel struct {
	ring  *ring
	clock events.Clock
	full  bool
}

func (k *kernel) Fire(seq, epoch uint32) error {
	if k.full {
		return loader.ErrCanaryNotSubmitted
	}
	b, err := binary.Append(nil, binary.NativeEndian, loader.BlockEvent{TimeNs: k.clock.MonoNow(), Subscriber: seq, Epoch: epoch, Kind: loader.BlockEventCanary})
	if err != nil {
		return err
	}
	k.ring.ch <- b
	return nil
}

// brokenStore refuses writes while broken, as a full or failing disk does.
type brokenStore struct {
	mu     sync.Mutex
	broken bool
	st     *store.Store
}

func (b *brokenStore) Apply(ops []store.Op) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.broken {
		return errors.New("write records: no space left on device")
	}
	return b.st.Apply(ops)
}

func (b *brokenStore) set(broken bool) {
	b.mu.Lock()
	b.broken = broken
	b.mu.Unlock()
}

func alarmGauge(t *testing.T, snap metrics.Snapshot) float64 {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(metrics.NewCollector(func() metrics.Snapshot { return snap }, nil))
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() == metrics.RecordsAlarm {
			return f.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatal("no alarm metric")
	return 0
}

// TestSelfCheckBrokenStore: with a real Recorder and store behind the
// canary, a store that refuses writes fails the self-check, raises the
// alarm and logs an error; when the store writes again, the next check
// passes and clears the alarm. A full ring buffer and a closed store fail
// it too.
func TestSelfCheckBrokenStore(t *testing.T) {
	st, err := store.Open("records", store.Options{FS: vfs.NewMem(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	sink := &brokenStore{st: st}
	clock := &events.SystemClock{}
	logs := &testutil.Buffer{}
	log := slog.New(slog.NewTextHandler(logs, nil))
	rec := events.NewRecorder(sink, events.Options{Clock: clock, Logger: log, FlushInterval: 5 * time.Millisecond})
	rb := &ring{ch: make(chan []byte, 16), closed: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- rec.Run(ctx, rb) }()
	defer func() {
		cancel()
		<-done
	}()
	k := &kernel{ring: rb, clock: clock}
	check := newSelfCheck(k, st, 3, time.Minute, log)
	check.timeout = 300 * time.Millisecond
	snapshot := func() metrics.Snapshot {
		return metrics.Snapshot{Records: rec.Health(), SelfCheck: check.State()}
	}

	if err := check.once(context.Background()); err != nil {
		t.Fatalf("healthy store: %v\n%s", err, logs)
	}
	if s := check.State(); s.Checks != 1 || s.Failing || s.LastSuccess.IsZero() || alarmGauge(t, snapshot()) != 0 {
		t.Fatalf("after a good check: %+v, alarm %v", s, alarmGauge(t, snapshot()))
	}

	sink.set(true)
	err = check.once(context.Background())
	if err == nil || !strings.Contains(err.Error(), "not in the record store") {
		t.Fatalf("broken store: err %v, want the canary missing from the store", err)
	}
	s := check.State()
	if !s.Failing || s.Failures != 1 || s.LastError == "" {
		t.Errorf("state after a lost canary: %+v", s)
	}
	if got := alarmGauge(t, snapshot()); got != 1 {
		t.Errorf("alarm %v with the store refusing writes, want 1", got)
	}
	if !strings.Contains(logs.String(), "level=ERROR msg=\"self-check failed") {
		t.Errorf("no error logged for the lost canary:\n%s", logs)
	}
	// The self-check alone holds the alarm up: a later write that happens
	// to succeed clears the Recorder's failure, not the check's.
	if a := snapshot().Alarms(); len(a) == 0 || !strings.Contains(strings.Join(a, "; "), "self-check failed") {
		t.Errorf("alarms %q, want the self-check named", a)
	}

	sink.set(false)
	if err := check.once(context.Background()); err != nil {
		t.Fatalf("repaired store: %v", err)
	}
	if s := check.State(); s.Failing || s.Checks != 3 || s.Failures != 1 {
		t.Errorf("state after recovery: %+v", s)
	}
	testutil.Eventually(t, 5*time.Second, func() bool { return !rec.Health().Failing }, "the Recorder to write again")
	if got := alarmGauge(t, snapshot()); got != 0 {
		t.Errorf("alarm %v after the store recovered, want 0 (%q)", got, snapshot().Alarms())
	}
	if !strings.Contains(logs.String(), "self-check passes again") {
		t.Errorf("recovery not logged:\n%s", logs)
	}

	k.full = true
	if err := check.once(context.Background()); !errors.Is(err, loader.ErrCanaryNotSubmitted) {
		t.Errorf("full ring buffer: err %v, want ErrCanaryNotSubmitted", err)
	}
	k.full = false
	if alarmGauge(t, snapshot()) != 1 {
		t.Error("a full ring buffer did not raise the alarm")
	}

	st.Close()
	if err := check.once(context.Background()); err == nil || !errors.Is(err, store.ErrClosed) && !strings.Contains(err.Error(), "not in the record store") {
		t.Errorf("closed store: err %v", err)
	}
	if !check.State().Failing {
		t.Error("a closed store passed the self-check")
	}
}

// TestSelfCheckCancelledNotCounted: a check cut short by shutdown is
// neither a failure nor a pass.
func TestSelfCheckCancelledNotCounted(t *testing.T) {
	st, err := store.Open("records", store.Options{FS: vfs.NewMem(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	// Nothing reads the ring: the canary never arrives.
	k := &kernel{ring: &ring{ch: make(chan []byte, 1), closed: make(chan struct{})}, clock: &events.SystemClock{}}
	check := newSelfCheck(k, st, 1, time.Minute, slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := check.once(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err %v, want the context's", err)
	}
	if s := check.State(); s.Checks != 0 || s.Failing {
		t.Errorf("state %+v after a cancelled check", s)
	}
}

// TestSelfCheckDisabledRaisesAlarm: a self-check that cannot run (the
// canary program did not load) is an alarm, not silence.
func TestSelfCheckDisabledRaisesAlarm(t *testing.T) {
	check := newSelfCheck(nil, nil, 1, time.Minute, slog.New(slog.DiscardHandler))
	check.disabled(errors.New("load canary program: operation not permitted"))
	if got := alarmGauge(t, metrics.Snapshot{SelfCheck: check.State()}); got != 1 {
		t.Errorf("alarm %v, want 1", got)
	}
	var none *selfCheck
	if s := none.State(); s.Enabled || s.Failing {
		t.Errorf("self-check turned off: %+v", s)
	}
}
