// Package api is blocknat's query API: the server the agent runs over a unix
// socket (and optionally TLS with client certificates). The requests and
// answers are userspace/wire's types, which the server converts the store's
// and the audit log's into; the client the CLI uses is userspace/api/client.
//
// # Protocol
//
// HTTP/1.1 with JSON bodies:
//
//	POST /v1/lookup        LookupRequest  -> LookupResponse   (investigator)
//	POST /v1/history       HistoryRequest -> HistoryResponse  (investigator)
//	POST /v1/export        ExportRequest  -> CSV or JSONL stream (investigator)
//	GET  /v1/status                       -> StatusResponse   (admin)
//	GET  /v1/audit?from=SEQ&limit=N       -> AuditShowResponse (auditor)
//	POST /v1/audit/verify                 -> AuditVerifyResponse (auditor)
//
// Times are RFC 3339 with an explicit zone ("Z" or ±hh:mm); a time without
// one is malformed, because a bare local time names a different instant on
// every machine. Bodies are at most wire.MaxBodyBytes and unknown fields are
// malformed, so that a misspelt field is never silently ignored. A purpose
// (case reference) is at most wire.MaxPurposeBytes (256) bytes; a longer one is
// malformed (400), audited with the purpose cut to that length. Whatever a
// request sends, its audit entry is at most audit.MaxEntryBytes (16 KiB) as
// written, after JSON escaping.
//
// # The audit rule
//
// Every request appends exactly one audit entry before the first byte of its
// response is written: answered, empty, refused (no role, no purpose),
// malformed (bad JSON, bad time, unknown path, wrong method) or failed. The
// handler therefore works in two halves: dispatch reads the request and
// computes the whole answer without touching the ResponseWriter, then the
// entry is appended, and only then is the answer written. If the append
// fails, the client gets 503 and no data. An export is counted first, the
// count is audited, and then the records are streamed.
//
// One exception bounds what an operator without any role can make the log
// hold: its refusals are rate-limited per operator (RefusalBurst entries,
// refilled at RefusalsPerMinute). Past the budget a refusal is answered 429
// with Retry-After, no data and no audit seq, and is counted instead of
// appended; the count is written as one entry, action wire.ActionRefusals and
// detail "N refused from OPERATOR …", when the operator's next refusal is
// allowed (N then includes it), by a flush every 10 s once a token is back,
// or when the server stops. Every refusal is thus in some entry's count,
// and such an operator grows the log by at most RefusalBurst +
// RefusalsPerMinute entries a minute (plus one at shutdown).
//
// Outcomes and HTTP statuses: answered and empty are 200; refused is 403
// (missing role, or a lookup, history or export without a purpose: a purpose
// or case reference is a precondition of access, not a syntax rule);
// malformed is 400, 404 (unknown path), 405 (wrong method) or 413 (body too
// large); error is 500; a failed audit append is 503; a refusal past the
// rate limit above is 429.
//
// # Identity
//
// On the unix socket the operator is the peer's uid from SO_PEERCRED,
// written "uid:1001(alice)" when the name resolves. Over TLS it is the
// subject common name of the verified client certificate, "cert:CN=alice".
// Roles maps both to roles. An operator with no role at all (or one the
// transport did not identify) is refused before its body is read, and its
// entry holds only who, when, the action of the path and the outcome: no
// criteria, no purpose, nothing it sent. An operator with some role but not
// the one needed is refused after parsing, with what it asked on record.
// Connections are capped at accept, before anything is read: at most
// MaxConnsPerUID (default DefaultMaxConnsPerUID, 32) open connections per
// peer uid on the unix socket, and MaxConns (default DefaultMaxConns: half
// of RLIMIT_NOFILE after 512 descriptors kept for the store, the audit log
// and the BPF objects, at least 16 and at most 1024) over every listener.
// Over TLS only the total applies, as the certificate is known only after
// the handshake. A connection over a cap is closed at once, unanswered and
// unaudited (nothing was asked), and logged at most every 10 s with a count.
// A request net/http turns away before any handler runs (a garbage request
// line, a malformed header line, headers over 16 KiB, an HTTP version other
// than 1.x, a failed TLS handshake, plain HTTP on the TLS port) is answered
// by net/http itself and not audited either (no handler read it); it is
// logged at most every 10 s with a count, its reason and the peer's uid or
// TLS address, never what it sent. Server.Counters has the cumulative
// counts of both, and of the refusals past the budget, for /metrics.
//
// # Fleet answers
//
// A fleet service (blocknatd fleet) serves this API over every router's
// replicated records: its Store names the router of each record, epoch and
// lease, and implements RouterEpochs. A lookup's or a history's records of
// one subscriber holding one block are then one candidate, whatever
// routers recorded them, listing each record in wire.Record.Intervals
// with its router (a failover between two routers with the same mapping
// names the subscriber once, with both intervals); its coverage counts
// only the time some record covers. Owners are computed on each router's
// own epoch timeline and name the router; a lease that several routers
// heard is listed once, naming them. An export lists each router's
// records as they are, naming the router: a "router" field in JSONL, a
// trailing router column in CSV (wire.CSVHeaderFleet). With a router's
// own store, which names no router, every answer is as described above.
//
// Nothing about destinations exists in the store,
// and nothing about them is logged or audited.
package api

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/blocknat/blocknat/userspace/audit"
	"github.com/blocknat/blocknat/userspace/logattr"
	"github.com/blocknat/blocknat/userspace/store"
	"github.com/blocknat/blocknat/userspace/wire"
)

// Store is what the API reads; *store.Store satisfies it.
type Store interface {
	LookupInterval(ip netip.Addr, port uint16, from, to time.Time) ([]store.Record, error)
	NearestRecords(sub uint32, public netip.Addr, portLo uint16, from, to time.Time) (before, after *store.Record, err error)
	History(inside netip.Addr, from, to time.Time) ([]store.Record, error)
	Export(from, to time.Time, fn func(store.Record) error) error
	ExportWithLeases(from, to time.Time, fn func(store.Record, []store.Lease) error) error
	EpochAt(t time.Time) (store.Epoch, error)
	Epochs() ([]store.Epoch, error)
	LeasesOf(inside netip.Addr, from, to time.Time) ([]store.Lease, error)
	LeasesByMAC(mac net.HardwareAddr, from, to time.Time) ([]store.Lease, error)
	ApplyLeases(evs []store.LeaseEvent) error
	Stats() (store.Stats, error)
}

// Auditor is the tamper-evident audit log.
type Auditor interface {
	// AppendProved fills Seq, Time, Prev and Hash, makes the entry
	// durable and returns it with the signed head that covers it.
	AppendProved(e audit.Entry) (audit.Entry, audit.SignedRecord, error)
	Len() uint64
	// Scan calls fn for every entry whose time is in [from, to], in order.
	Scan(from, to time.Time, fn func(audit.Entry) error) error
	Entries(fromSeq uint64, limit int) ([]audit.Entry, error)
	Verify() (audit.Report, error)
}

// Deps are what the server needs from the agent.
type Deps struct {
	Store Store
	Audit Auditor
	Roles Roles
	// Status returns the agent's status and the store figures it read for
	// it, so that a status request reads the store once; nil leaves
	// wire.StatusResponse.Agent null and the server reads the store itself.
	Status func(ctx context.Context) (wire.Status, store.Stats, error)
	// Fleet, set by a fleet service, returns its status for
	// wire.StatusResponse.Fleet; nil leaves it out.
	Fleet func(ctx context.Context) (*wire.FleetStatus, error)
	// LeasesChanged, when set, is called after lease events are on disk,
	// so that the agent can rebind addresses to MACs in the data plane
	// before the new device's first packet.
	LeasesChanged func()
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Clock reads the router's clock-synchronisation state for a lookup's
	// or a history's answer (wire.LookupResponse.Clock); nil leaves it out.
	Clock func() *wire.ClockState
	// MaxConnsPerUID caps the open connections of one uid on the unix
	// socket (0 = DefaultMaxConnsPerUID); MaxConns caps them in total over
	// every listener (0 = DefaultMaxConns, from RLIMIT_NOFILE). A
	// connection over a cap is closed at accept.
	MaxConnsPerUID, MaxConns int
	// Logger receives one line per request (operator, action, outcome and
	// audit seq; never criteria, which only the audit log holds); nil means
	// slog.Default.
	Logger *slog.Logger
}

// Server serves the API. Its Handler may be mounted anywhere, but only
// ServeUnix and ServeTLS establish who is asking; requests arriving any
// other way are refused (and audited).
type Server struct {
	store       Store
	audit       Auditor
	roles       Roles
	status      func(ctx context.Context) (wire.Status, store.Stats, error)
	fleetStatus func(ctx context.Context) (*wire.FleetStatus, error)
	leased      func()
	now         func() time.Time
	clock       func() *wire.ClockState
	log         *slog.Logger

	refusals   refusalLimiter
	conns      *connCaps
	rejections *rejections
}

// Timeouts of the HTTP server. An export extends its write deadline as it
// goes (exportWriteTimeout per stretch), so WriteTimeout only bounds the
// small answers.
const (
	readHeaderTimeout  = 10 * time.Second
	readTimeout        = 30 * time.Second
	writeTimeout       = 60 * time.Second
	idleTimeout        = 2 * time.Minute
	shutdownTimeout    = 5 * time.Second
	exportWriteTimeout = 30 * time.Second
)

// logKeyAuditSeq is the log attribute of an audit sequence number.
const logKeyAuditSeq = "audit_seq"

// NewServer returns a server. Store and Audit are required: without an
// audit log no request may be answered, so a nil one is a programming error
// and panics.
func NewServer(d Deps) *Server {
	if d.Store == nil {
		panic("api.NewServer: Deps.Store is nil")
	}
	if d.Audit == nil {
		panic("api.NewServer: Deps.Audit is nil")
	}
	s := &Server{store: d.Store, audit: d.Audit, roles: d.Roles, status: d.Status, fleetStatus: d.Fleet, leased: d.LeasesChanged,
		now: d.Now, clock: d.Clock, log: d.Logger}
	if s.now == nil {
		s.now = time.Now
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	s.conns = newConnCaps(d.MaxConnsPerUID, d.MaxConns, s.log)
	s.rejections = &rejections{log: s.log}
	return s
}

// Handler returns the API's handler.
func (s *Server) Handler() http.Handler { return http.HandlerFunc(s.serveHTTP) }

func (s *Server) httpServer() *http.Server {
	return &http.Server{
		Handler:           s.Handler(),
		ConnContext:       connContext,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    16 << 10,
		// "OPTIONS *" would otherwise be answered by net/http itself,
		// unaudited; this way it reaches dispatch as an unknown path.
		DisableGeneralOptionsHandler: true,
		// The protocol is HTTP/1.1; an empty, non-nil map keeps net/http
		// from offering HTTP/2 over TLS.
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
		ErrorLog: log.New(&errorLog{rejections: s.rejections,
			next: slog.NewLogLogger(s.log.Handler(), slog.LevelWarn).Writer()}, "", 0),
	}
}

// ServeUnix serves on a unix socket at path until ctx is done. It creates
// the socket's directory, removes a stale socket left by a previous agent
// (but refuses if one still answers), and makes the socket world-writable:
// anyone may ask, roles decide, and every refusal is audited.
func (s *Server) ServeUnix(ctx context.Context, path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("api socket %s: create directory: %w", path, err)
	}
	if err := removeStaleSocket(path); err != nil {
		return err
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("api socket %s: listen: %w", path, err)
	}
	// Removing the socket file at close would race a successor that has
	// already bound the path; removeStaleSocket handles what we leave.
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	if err := os.Chmod(path, 0o666); err != nil {
		ln.Close()
		return fmt.Errorf("api socket %s: chmod: %w", path, err)
	}
	s.log.Info("api listening", logattr.Path, path)
	return s.serve(ctx, s.capConns(ln), "unix "+path)
}

func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("api socket %s: %w", path, err)
	}
	if fi.Mode().Type() != os.ModeSocket {
		return fmt.Errorf("api socket %s: exists and is not a socket (%s); not removing it", path, fi.Mode().Type())
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("api socket %s: another process is serving on it", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("api socket %s: remove stale socket: %w", path, err)
	}
	return nil
}

// ServeTLS serves on addr with TLS until ctx is done. cfg must require and
// verify client certificates (tls.RequireAndVerifyClientCert with ClientCAs
// set), since the certificate is the operator's identity: a client without
// one fails the handshake and never reaches the handler.
func (s *Server) ServeTLS(ctx context.Context, addr string, cfg *tls.Config) error {
	if cfg == nil || cfg.ClientAuth != tls.RequireAndVerifyClientCert || cfg.ClientCAs == nil {
		return fmt.Errorf("api tls %s: config must set ClientAuth to RequireAndVerifyClientCert and ClientCAs", addr)
	}
	cfg = cfg.Clone()
	cfg.NextProtos = []string{"http/1.1"}
	if cfg.MinVersion < tls.VersionTLS12 {
		cfg.MinVersion = tls.VersionTLS12
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("api tls %s: listen: %w", addr, err)
	}
	s.log.Info("api listening", logattr.Path, "tls "+ln.Addr().String())
	return s.serve(ctx, tls.NewListener(s.capConns(ln), cfg), "tls "+addr)
}

func (s *Server) serve(ctx context.Context, ln net.Listener, what string) error {
	srv := s.httpServer()
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	// Summaries of rate-limited refusals are written once a token is back
	// even when the operator stopped asking, and all of them at the end.
	defer s.flushRefusals(true)
	flush := time.NewTicker(refusalFlushEvery)
	defer flush.Stop()
	for running := true; running; {
		select {
		case err := <-done:
			return fmt.Errorf("api %s: serve: %w", what, err)
		case <-flush.C:
			s.flushRefusals(false)
		case <-ctx.Done():
			running = false
		}
	}
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		// A long export is cut off rather than holding the agent's exit.
		srv.Close()
	}
	if err := <-done; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("api %s: serve: %w", what, err)
	}
	return nil
}

// serveHTTP is the audit rule in code: dispatch computes the answer without
// writing, the entry is appended, and only then is anything written.
func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	id := s.identify(r)
	rep := s.dispatch(r, id)
	e := audit.Entry{
		Operator:     id.operator,
		Role:         rep.role,
		Action:       rep.action,
		Criteria:     rep.criteria,
		Purpose:      rep.purpose,
		Outcome:      rep.outcome,
		Detail:       rep.detail,
		Subjects:     rep.subjects,
		AnswerSHA256: rep.answerSHA256,
	}
	var earlier uint64
	if rep.roleless {
		ok, n, retryAfter := s.refusals.allow(id.operator, s.now())
		if !ok {
			// Counted, and summarised in a later entry; nothing is
			// logged per request either, or the flood would go there.
			writeRateLimited(w, retryAfter)
			return
		}
		if earlier = n; n > 0 {
			e = refusalSummary(n+1, id.operator)
		}
	}
	entry, head, err := s.audit.AppendProved(e)
	if err != nil {
		if rep.roleless {
			// Unrecorded, so counted for a later summary.
			s.refusals.giveBack(id.operator, earlier+1)
		}
		s.log.Error("audit append failed; answer withheld",
			logattr.Operator, id.operator, logattr.Action, rep.action, logattr.Outcome, string(rep.outcome), logattr.Err, err)
		writeJSON(w, http.StatusServiceUnavailable, nil, wire.ErrorResponse{
			Error: "audit log unavailable: the request could not be recorded, so it is not answered; the agent retries every second " +
				"and answers again once it can write (blocknat_alarm{reason=\"audit\"} says why)",
		})
		return
	}
	s.log.Info("api request", logattr.Operator, id.operator, logattr.Action, rep.action,
		logattr.Outcome, string(rep.outcome), logKeyAuditSeq, entry.Seq)
	rep.write(w, audit.Proof{Entry: entry, Signed: head})
}
