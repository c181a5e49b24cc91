package leasehook_test

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/blocknat/blocknat/userspace/leasehook"
)

func TestRunDeliversQueueBeforeNewEvents(t *testing.T) {
	s := openSpool(t, t.TempDir())
	s.Put(numbered(1, 0))
	s.Put(numbered(1, 1))
	var r recorder
	if err := leasehook.Run([]leasehook.Event{numbered(1, 2)}, s, r.send); err != nil {
		t.Fatal(err)
	}
	if got := hostnames(r.all()); !slices.Equal(got, []string{"p1-0", "p1-1", "p1-2"}) {
		t.Errorf("delivered %q", got)
	}
	if n, _ := s.Len(); n != 0 {
		t.Errorf("%d left in the spool", n)
	}
}

func TestRunQueuesWhenAgentIsDown(t *testing.T) {
	down := errors.New("connection refused")
	for _, tc := range []struct {
		name   string
		queued int // already in the spool
	}{
		{"queue empty, new send fails", 0},
		{"queue send fails, new events not sent ahead of it", 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := openSpool(t, t.TempDir())
			for i := range tc.queued {
				s.Put(numbered(1, i))
			}
			r := recorder{fail: func([]leasehook.Event) error { return down }}
			events := []leasehook.Event{numbered(1, 10), numbered(1, 11)}
			err := leasehook.Run(events, s, r.send)
			var queued *leasehook.QueuedError
			if !errors.As(err, &queued) || queued.Events != 2 || !errors.Is(err, down) {
				t.Fatalf("Run error %v, want a *QueuedError for 2 events wrapping the send's", err)
			}
			if n, _ := s.Len(); n != tc.queued+2 {
				t.Fatalf("%d in the spool, want %d", n, tc.queued+2)
			}
			r.fail = nil
			if err := leasehook.Run(nil, s, r.send); err != nil {
				t.Fatal(err)
			}
			var want []string
			for i := range tc.queued {
				want = append(want, numbered(1, i).Hostname)
			}
			want = append(want, "p1-10", "p1-11")
			if got := hostnames(r.all()); !slices.Equal(got, want) {
				t.Errorf("once the agent is back, delivered %q, want %q", got, want)
			}
		})
	}
}

// A delivery that hangs must not make the next hook hang with it, nor lose
// its event.
func TestRunQueuesWhenLockIsHeld(t *testing.T) {
	dir := t.TempDir()
	holder := openSpool(t, dir)
	holder.Put(numbered(1, 0))
	inSend, release := make(chan struct{}), make(chan struct{})
	done := make(chan error, 1)
	go func() {
		_, err := holder.Deliver(func([]leasehook.Event) error {
			close(inSend)
			<-release
			return errors.New("timed out")
		})
		done <- err
	}()
	<-inSend

	s := openSpool(t, dir)
	s.LockWait = 100 * time.Millisecond
	var r recorder
	start := time.Now()
	err := leasehook.Run([]leasehook.Event{numbered(1, 1)}, s, r.send)
	var queued *leasehook.QueuedError
	if !errors.As(err, &queued) {
		t.Fatalf("Run error %v, want *QueuedError", err)
	}
	if waited := time.Since(start); waited > 5*time.Second {
		t.Errorf("Run waited %v for the lock", waited)
	}
	if len(r.all()) != 0 {
		t.Error("Run sent without the lock")
	}
	close(release)
	<-done
	if _, err := s.Deliver(r.send); err != nil {
		t.Fatal(err)
	}
	if got := hostnames(r.all()); !slices.Equal(got, []string{"p1-0", "p1-1"}) {
		t.Errorf("delivered %q", got)
	}
}

func TestRunReportsLossWhenItCannotQueue(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "spool")
	s := openSpool(t, dir)
	os.RemoveAll(dir)
	err := leasehook.Run([]leasehook.Event{numbered(1, 0)}, s, func([]leasehook.Event) error { return errors.New("down") })
	var queued *leasehook.QueuedError
	if err == nil || errors.As(err, &queued) {
		t.Fatalf("Run error %v, want a plain error: nothing was queued", err)
	}
}

func TestRunRefusesInvalidEvents(t *testing.T) {
	s := openSpool(t, t.TempDir())
	bad := numbered(1, 0)
	bad.MAC = "nope"
	var r recorder
	err := leasehook.Run([]leasehook.Event{bad}, s, r.send)
	var fe *leasehook.FieldError
	if !errors.As(err, &fe) || fe.Field != "mac" {
		t.Fatalf("Run error %v, want a FieldError for mac", err)
	}
	if n, _ := s.Len(); n != 0 || len(r.all()) != 0 {
		t.Errorf("an invalid event was queued (%d) or sent (%d)", n, len(r.all()))
	}
	if err := s.Put(bad); !errors.As(err, &fe) {
		t.Errorf("Put of an invalid event: %v", err)
	}
}

func TestRunDeliversPastCorruptFiles(t *testing.T) {
	dir := t.TempDir()
	s := openSpool(t, dir)
	os.WriteFile(filepath.Join(dir, "0000000000000000001-00000001-00000001-00000000.json"), []byte("garbage"), 0o600)
	var r recorder
	err := leasehook.Run([]leasehook.Event{numbered(1, 0)}, s, r.send)
	var corrupt *leasehook.CorruptError
	if !errors.As(err, &corrupt) {
		t.Fatalf("Run error %v, want *CorruptError", err)
	}
	if got := hostnames(r.all()); !slices.Equal(got, []string{"p1-0"}) {
		t.Errorf("delivered %q; the new event must still go", got)
	}
}
