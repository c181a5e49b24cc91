package api

import (
	"context"
	"crypto/sha256"
	"errors"
	"github.com/blocknat/blocknat/test/testutil"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/blocknat/blocknat/userspace/api/client"
	"github.com/blocknat/blocknat/userspace/audit"
	"github.com/blocknat/blocknat/userspace/store"
	"github.com/blocknat/blocknat/userspace/wire"
	"github.com/cockroachdb/pebble/v2/vfs"
)

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func mustTime(t testing.TB, s string) time.Time {
	t.Helper()
	v, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// The fixture: epoch 1 from 2026-11-01 in which subscriber 27 holds
// 198.51.100.10 ports 14632-15135 until 12:00:00.5; epoch 2 from 12:00:01 in
// which subscriber 40 holds an overlapping block from 12:00:02.25, found by
// the reconciler and still open.
var (
	fixturePublic = netip.MustParseAddr("198.51.100.10")
	fixtureA      = store.Record{
		Subscriber: 27, Inside: netip.MustParseAddr("100.64.0.27"), Public: fixturePublic,
		PortLo: 14632, PortHi: 15135, Epoch: 1,
	}
	fixtureB = store.Record{
		Subscriber: 40, Inside: netip.MustParseAddr("100.64.0.40"), Public: fixturePublic,
		PortLo: 14900, PortHi: 15399, Epoch: 2, Flags: store.FlagRecovered,
	}
)

func openFixtureStore(t *testing.T) *store.Store {
	t.Helper()
	c := testutil.NewClock(mustTime(t, "2026-11-20T13:00:00Z"), 0)
	st, err := store.Open("db", store.Options{FS: vfs.NewMem(), Now: c.Now, Logger: quietLogger()})
	if err != nil {
		t.Fatalf("store.Open: %v", err)
	}
	t.Cleanup(func() { st.Close() })
	for _, e := range []store.Epoch{
		{ID: 1, Start: mustTime(t, "2026-11-01T00:00:00Z"), Prefixes: []netip.Prefix{netip.MustParsePrefix("100.64.0.0/24")},
			Pool: []netip.Addr{fixturePublic, netip.MustParseAddr("198.51.100.11")}, PortLo: 1024, PortHi: 65535, BlockSize: 504, Ratio: 128,
			Hash: sha256.Sum256([]byte("epoch 1"))},
		{ID: 2, Start: mustTime(t, "2026-11-20T12:00:01Z"), Prefixes: []netip.Prefix{netip.MustParsePrefix("100.64.0.0/23")},
			Pool: []netip.Addr{fixturePublic, netip.MustParseAddr("198.51.100.11")}, PortLo: 1024, PortHi: 65535, BlockSize: 500, Ratio: 129,
			Hash: sha256.Sum256([]byte("epoch 2"))},
	} {
		if err := st.PutEpoch(e); err != nil {
			t.Fatalf("PutEpoch %d: %v", e.ID, err)
		}
	}
	a, b := fixtureA, fixtureB
	a.Start = mustTime(t, "2026-11-20T11:58:40.120Z")
	b.Start = mustTime(t, "2026-11-20T12:00:02.250Z")
	release := store.Record{Subscriber: a.Subscriber, Public: a.Public, PortLo: a.PortLo, End: mustTime(t, "2026-11-20T12:00:00.500Z")}
	if err := st.Apply([]store.Op{{Kind: store.OpActivate, Record: a}, {Kind: store.OpRelease, Record: release}}); err != nil {
		t.Fatalf("Apply A: %v", err)
	}
	if err := st.Apply([]store.Op{{Kind: store.OpActivate, Record: b}}); err != nil {
		t.Fatalf("Apply B: %v", err)
	}
	return st
}

func openAuditLog(t *testing.T) (*audit.Log, string) {
	t.Helper()
	dir := t.TempDir()
	l, err := audit.Open(dir, audit.Options{KeyPath: filepath.Join(t.TempDir(), "audit.key")})
	if err != nil {
		t.Fatalf("audit.Open: %v", err)
	}
	t.Cleanup(func() { l.Close() })
	return l, dir
}

// watchedAuditor wraps an Auditor and checks the audit rule from the
// inside: when Append runs, nothing of the response may have been written.
type watchedAuditor struct {
	Auditor
	t       *testing.T
	written *atomic.Bool
	appends atomic.Int64
	failAll atomic.Bool
	last    atomic.Pointer[audit.Entry]
}

var errAuditDown = errors.New("audit disk on fire")

func (a *watchedAuditor) AppendProved(e audit.Entry) (audit.Entry, audit.SignedRecord, error) {
	if a.written.Load() {
		a.t.Errorf("audit Append for %s (%s) ran after the response was written", e.Action, e.Outcome)
	}
	a.appends.Add(1)
	if a.failAll.Load() {
		return audit.Entry{}, audit.SignedRecord{}, errAuditDown
	}
	out, head, err := a.Auditor.AppendProved(e)
	if err == nil {
		a.last.Store(&out)
	}
	return out, head, err
}

// watchWriter notes the first byte of a response.
type watchWriter struct {
	http.ResponseWriter
	written *atomic.Bool
}

func (w *watchWriter) WriteHeader(code int) {
	w.written.Store(true)
	w.ResponseWriter.WriteHeader(code)
}

func (w *watchWriter) Write(b []byte) (int, error) {
	w.written.Store(true)
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the connection.
func (w *watchWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// harness is a server on a real unix socket in a temporary directory, with
// a real store and a real audit log, watched for the audit rule.
type harness struct {
	t       *testing.T
	store   *store.Store
	log     *audit.Log
	logDir  string
	auditor *watchedAuditor
	server  *Server
	socket  string
	client  *client.Client
	// http sends requests as given, on the same socket.
	http *http.Client
}

type harnessOptions struct {
	roles  Roles
	store  Store // nil: the fixture store
	status func(context.Context) (wire.Status, store.Stats, error)
	fleet  func(context.Context) (*wire.FleetStatus, error)
	now    func() time.Time // nil: time.Now
	// maxConnsPerUID and maxConns are the connection caps (0: defaults).
	maxConnsPerUID, maxConns int
	// socketDir holds the socket (nil: a temporary directory).
	socketDir string
	// logger is the server's logger (nil: discards).
	logger *slog.Logger
}

func rootRoles(roles ...Role) Roles {
	return Roles{UIDs: map[uint32][]Role{uint32(os.Getuid()): roles}}
}

func newHarness(t *testing.T, o harnessOptions) *harness {
	t.Helper()
	h := &harness{t: t, store: openFixtureStore(t)}
	h.log, h.logDir = openAuditLog(t)
	var written atomic.Bool
	h.auditor = &watchedAuditor{Auditor: h.log, t: t, written: &written}
	var st Store = h.store
	if o.store != nil {
		st = o.store
	}
	logger := o.logger
	if logger == nil {
		logger = quietLogger()
	}
	h.server = NewServer(Deps{Store: st, Audit: h.auditor, Roles: o.roles, Status: o.status, Fleet: o.fleet, Now: o.now, Logger: logger,
		MaxConnsPerUID: o.maxConnsPerUID, MaxConns: o.maxConns})

	dir := o.socketDir
	if dir == "" {
		dir = t.TempDir()
	}
	h.socket = filepath.Join(dir, "api.sock")
	ln, err := net.Listen("unix", h.socket)
	if err != nil {
		t.Fatal(err)
	}
	srv := h.server.httpServer()
	inner := srv.Handler
	srv.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		written.Store(false)
		inner.ServeHTTP(&watchWriter{ResponseWriter: w, written: &written}, r)
	})
	go srv.Serve(h.server.capConns(ln))
	t.Cleanup(func() { srv.Close() })

	h.client, err = client.Dial(h.socket)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { h.client.Close() })
	h.http = &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", h.socket)
		},
		DisableCompression: true,
	}}
	t.Cleanup(h.http.CloseIdleConnections)
	return h
}

// raw sends a request as given and returns the response with its body read.
func (h *harness) raw(method, path, body string) (*http.Response, string) {
	h.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, "http://blocknat"+path, rd)
	if err != nil {
		h.t.Fatal(err)
	}
	resp, err := h.http.Do(req)
	if err != nil {
		h.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		h.t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return resp, string(data)
}

// lastEntry returns the newest entry of the real log.
func (h *harness) lastEntry() audit.Entry {
	h.t.Helper()
	n := h.log.Len()
	es, err := h.log.Entries(n, 1)
	if err != nil || len(es) != 1 {
		h.t.Fatalf("audit entry %d: %v (%d entries)", n, err, len(es))
	}
	return es[0]
}

func operatorName() string {
	uid := strconv.Itoa(os.Getuid())
	name := "uid:" + uid
	if u, err := user.LookupId(uid); err == nil && u.Username != "" {
		name += "(" + u.Username + ")"
	}
	return name
}
