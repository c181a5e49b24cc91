package leasehook_test

import (
	"bufio"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/blocknat/blocknat/userspace/leasehook"
)

var spoolBase = time.Date(2026, 12, 1, 23, 0, 0, 0, time.UTC)

// numbered is a valid event whose hostname carries who made it and its
// sequence, so that tests can check identity and order of what arrives.
func numbered(producer, seq int) leasehook.Event {
	exp := spoolBase.Add(time.Hour)
	return leasehook.Event{
		Kind:     leasehook.KindAdd,
		Time:     spoolBase.Add(time.Duration(producer*1_000_000+seq) * time.Microsecond),
		Inside:   fmt.Sprintf("100.64.%d.%d", producer%256, seq%250+1),
		MAC:      fmt.Sprintf("02:00:00:00:%02x:%02x", producer%256, seq%256),
		Hostname: fmt.Sprintf("p%d-%d", producer, seq),
		Expires:  &exp,
		Source:   leasehook.SourceDnsmasq,
	}
}

func hostnames(evs []leasehook.Event) []string {
	var out []string
	for _, ev := range evs {
		out = append(out, ev.Hostname)
	}
	return out
}

func openSpool(t *testing.T, dir string) *leasehook.Spool {
	t.Helper()
	s, err := leasehook.OpenSpool(dir)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// recorder is a send that keeps what it was given.
type recorder struct {
	mu      sync.Mutex
	batches [][]leasehook.Event
	fail    func(batch []leasehook.Event) error
}

func (r *recorder) send(batch []leasehook.Event) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail != nil {
		if err := r.fail(batch); err != nil {
			return err
		}
	}
	r.batches = append(r.batches, slices.Clone(batch))
	return nil
}

func (r *recorder) all() []leasehook.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []leasehook.Event
	for _, b := range r.batches {
		out = append(out, b...)
	}
	return out
}

func TestOpenSpoolCreatesPrivateDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "spool", "lease")
	openSpool(t, dir)
	info, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if perm := info.Mode().Perm(); perm != 0o700 {
		t.Errorf("spool mode %o, want 700", perm)
	}
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, nil, 0o600)
	if _, err := leasehook.OpenSpool(file); err == nil {
		t.Error("OpenSpool on a file succeeded")
	}
}

func TestSpoolDeliversInEventOrder(t *testing.T) {
	s := openSpool(t, t.TempDir())
	// Put out of order, and more than one batch's worth.
	const n = 600
	perm := rand.Perm(n)
	for _, i := range perm {
		if err := s.Put(numbered(1, i)); err != nil {
			t.Fatal(err)
		}
	}
	// Same time, two events: the sequence number keeps Put order.
	same := numbered(2, 0)
	second := same
	second.Hostname = "p2-0-second"
	s.Put(same)
	s.Put(second)

	var r recorder
	got, err := s.Deliver(r.send)
	if err != nil || got != n+2 {
		t.Fatalf("Deliver = %d, %v; want %d, nil", got, err, n+2)
	}
	var want []string
	for i := range n {
		want = append(want, fmt.Sprintf("p1-%d", i))
	}
	want = append(want, "p2-0", "p2-0-second")
	if names := hostnames(r.all()); !slices.Equal(names, want) {
		t.Errorf("delivery order differs from event order: first %q", names[:5])
	}
	if len(r.batches) < 3 {
		t.Errorf("%d events in %d sends; want them batched", n, len(r.batches))
	}
	for _, b := range r.batches {
		if len(b) > 256 {
			t.Errorf("batch of %d", len(b))
		}
	}
	if left, _ := s.Len(); left != 0 {
		t.Errorf("%d events left after delivery", left)
	}
	if got, err := s.Deliver(r.send); got != 0 || err != nil {
		t.Errorf("second Deliver = %d, %v", got, err)
	}
}

func TestSpoolKeepsEverythingAcrossFailedSend(t *testing.T) {
	s := openSpool(t, t.TempDir())
	const n = 300 // two batches
	for i := range n {
		s.Put(numbered(1, i))
	}
	down := errors.New("agent down")
	sends := 0
	r := recorder{fail: func([]leasehook.Event) error {
		sends++
		if sends == 2 {
			return down
		}
		return nil
	}}
	got, err := s.Deliver(r.send)
	if !errors.Is(err, down) {
		t.Fatalf("Deliver error %v, want the send's", err)
	}
	first := len(r.all())
	if got != first || first == 0 || first == n {
		t.Fatalf("delivered %d (reported %d) before the failing batch", first, got)
	}
	if left, _ := s.Len(); left != n-first {
		t.Fatalf("%d left, want %d: a failed batch must stay queued", left, n-first)
	}
	r.fail = nil
	if got, err := s.Deliver(r.send); err != nil || got != n-first {
		t.Fatalf("retry Deliver = %d, %v", got, err)
	}
	var want []string
	for i := range n {
		want = append(want, fmt.Sprintf("p1-%d", i))
	}
	if names := hostnames(r.all()); !slices.Equal(names, want) {
		t.Errorf("across the failure, delivered %d events not once each in order", len(names))
	}
}

func TestSpoolMovesUndecodableFilesAside(t *testing.T) {
	dir := t.TempDir()
	s := openSpool(t, dir)
	s.Put(numbered(1, 0))
	s.Put(numbered(1, 2))
	// Named to sort between the two good events.
	middle := fmt.Sprintf("%019d-00000001-00000001-00000000.json", numbered(1, 1).Time.UnixNano())
	os.WriteFile(filepath.Join(dir, middle), []byte("{not json"), 0o600)
	invalid := fmt.Sprintf("%019d-00000001-00000002-00000000.json", numbered(1, 1).Time.UnixNano())
	os.WriteFile(filepath.Join(dir, invalid), []byte(`{"kind":"grant","time":"2026-12-01T23:00:00Z"}`), 0o600)
	// Not events: a half-written temporary file and a stray file.
	os.WriteFile(filepath.Join(dir, ".tmp-123"), []byte("{"), 0o600)
	os.WriteFile(filepath.Join(dir, "README"), []byte("x"), 0o600)

	var r recorder
	got, err := s.Deliver(r.send)
	var corrupt *leasehook.CorruptError
	if !errors.As(err, &corrupt) {
		t.Fatalf("Deliver error %v, want *CorruptError", err)
	}
	if got != 2 || !slices.Equal(hostnames(r.all()), []string{"p1-0", "p1-2"}) {
		t.Errorf("delivered %d: %q; want the two good events past the bad ones", got, hostnames(r.all()))
	}
	if len(corrupt.Files) != 2 || !strings.Contains(err.Error(), "2 files") {
		t.Errorf("error %q does not count the two bad files", err)
	}
	for _, name := range []string{middle, invalid} {
		if _, err := os.Stat(filepath.Join(dir, "bad", name)); err != nil {
			t.Errorf("bad file not kept: %v", err)
		}
	}
	if got, err := s.Deliver(r.send); got != 0 || err != nil {
		t.Errorf("after moving aside, Deliver = %d, %v; the queue must not stay blocked", got, err)
	}
	for _, name := range []string{".tmp-123", "README"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			t.Errorf("%s touched: %v", name, err)
		}
	}
}

// produce is one hook's life, count times over: Run with a new event while
// send fails at random, as an agent that comes and goes would. send runs under
// the spool lock, so appending to delivered needs no lock of its own beyond
// what guards the slice against the race detector.
func produce(s *leasehook.Spool, producer, count int, failRate float64, deliver func([]leasehook.Event)) error {
	send := func(batch []leasehook.Event) error {
		if rand.Float64() < failRate {
			return errors.New("agent away")
		}
		deliver(batch)
		return nil
	}
	for i := range count {
		err := leasehook.Run([]leasehook.Event{numbered(producer, i)}, s, send)
		var queued *leasehook.QueuedError
		if err != nil && !errors.As(err, &queued) {
			return fmt.Errorf("producer %d event %d: %w", producer, i, err)
		}
	}
	return nil
}

// checkExactlyOnce checks that each producer's events arrived once each and
// in the order the producer made them.
func checkExactlyOnce(t *testing.T, delivered []string, producers, count int) {
	t.Helper()
	next := make([]int, producers)
	seen := map[string]bool{}
	for _, name := range delivered {
		if seen[name] {
			t.Fatalf("%s delivered twice", name)
		}
		seen[name] = true
		var p, i int
		if _, err := fmt.Sscanf(name, "p%d-%d", &p, &i); err != nil {
			t.Fatalf("delivered %q", name)
		}
		if i != next[p] {
			t.Fatalf("producer %d: got event %d, want %d next", p, i, next[p])
		}
		next[p]++
	}
	if len(seen) != producers*count {
		t.Fatalf("delivered %d events, want %d", len(seen), producers*count)
	}
}

func TestSpoolConcurrentGoroutinesDeliverExactlyOnce(t *testing.T) {
	dir := t.TempDir()
	const producers, count = 6, 60
	var mu sync.Mutex
	var delivered []string
	deliver := func(batch []leasehook.Event) {
		mu.Lock()
		defer mu.Unlock()
		delivered = append(delivered, hostnames(batch)...)
	}
	var wg sync.WaitGroup
	errs := make(chan error, producers)
	for p := range producers {
		wg.Go(func() {
			// Each its own Spool, as each hook process has.
			s, err := leasehook.OpenSpool(dir)
			if err != nil {
				errs <- err
				return
			}
			errs <- produce(s, p, count, 0.3, deliver)
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if _, err := openSpool(t, dir).Deliver(func(b []leasehook.Event) error { deliver(b); return nil }); err != nil {
		t.Fatal(err)
	}
	checkExactlyOnce(t, delivered, producers, count)
}

// spoolHelperEnv makes the test binary a hook process for the test below.
const spoolHelperEnv = "LEASEHOOK_SPOOL_HELPER"

func TestSpoolConcurrentProcessesDeliverExactlyOnce(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(t.TempDir(), "delivered")
	const producers, count = 4, 40
	var cmds []*exec.Cmd
	for p := range producers {
		cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s,%s,%d,%d", spoolHelperEnv, dir, out, p, count))
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds = append(cmds, cmd)
	}
	for _, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Fatalf("helper: %v", err)
		}
	}
	appendTo := func(batch []leasehook.Event) error { return appendNames(out, batch) }
	if _, err := openSpool(t, dir).Deliver(appendTo); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var delivered []string
	for sc := bufio.NewScanner(f); sc.Scan(); {
		delivered = append(delivered, sc.Text())
	}
	checkExactlyOnce(t, delivered, producers, count)
}

// appendNames runs inside send, so under the spool lock: the file's line
// order is the global delivery order.
func appendNames(path string, batch []leasehook.Event) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	for _, name := range hostnames(batch) {
		fmt.Fprintln(f, name)
	}
	return f.Close()
}

// TestMain turns the test binary into one hook process when
// TestSpoolConcurrentProcessesDeliverExactlyOnce starts it.
func TestMain(m *testing.M) {
	if spec := os.Getenv(spoolHelperEnv); spec != "" {
		if err := spoolHelper(spec); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func spoolHelper(spec string) error {
	parts := strings.Split(spec, ",")
	if len(parts) != 4 {
		return fmt.Errorf("%s=%q: want dir,out,producer,count", spoolHelperEnv, spec)
	}
	producer, _ := strconv.Atoi(parts[2])
	count, _ := strconv.Atoi(parts[3])
	s, err := leasehook.OpenSpool(parts[0])
	if err != nil {
		return err
	}
	var failed error
	deliver := func(batch []leasehook.Event) {
		if err := appendNames(parts[1], batch); err != nil && failed == nil {
			failed = err
		}
	}
	if err := produce(s, producer, count, 0.3, deliver); err != nil {
		return err
	}
	return failed
}
