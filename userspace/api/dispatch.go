package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"runtime/debug"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/blocknat/blocknat/userspace/audit"
	"github.com/blocknat/blocknat/userspace/auditwire"
	"github.com/blocknat/blocknat/userspace/diskspace"
	"github.com/blocknat/blocknat/userspace/logattr"
	"github.com/blocknat/blocknat/userspace/store"
	"github.com/blocknat/blocknat/userspace/wire"
)

// reply is a computed answer that has not been written yet. Its first half
// becomes the audit entry; its second half is written after the append.
type reply struct {
	action   string
	role     string
	criteria map[string]string
	purpose  string
	outcome  audit.Outcome
	detail   string
	// subjects are the subscribers and devices the request or its answer
	// named ("inside:ADDR", "mac:MAC"), for subject-access requests.
	subjects []string
	// roleless marks the refusal of an operator without any role, which
	// is rate-limited (see refusalLimiter).
	roleless bool

	status  int
	header  http.Header
	message string // for anything but an answer
	// answer builds the JSON body of an answer once the audit seq is known.
	answer func(seq uint64) any
	// document is an answer that is evidence (lookup, history): its bytes
	// are hashed into the entry (answerSHA256) and sent unchanged inside
	// a wire.Answered envelope with the entry's proof.
	document     []byte
	answerSHA256 string
	// stream writes an answer that is too large to hold (an export); it
	// sets its own headers and status.
	stream func(w http.ResponseWriter, seq uint64)
}

// failure ends a request without an answer.
type failure struct {
	status  int
	outcome audit.Outcome
	msg     string
}

func (f *failure) Error() string { return f.msg }

func malformed(status int, format string, args ...any) *failure {
	return &failure{status: status, outcome: audit.OutcomeMalformed, msg: fmt.Sprintf(format, args...)}
}

func refused(format string, args ...any) *failure {
	return &failure{status: http.StatusForbidden, outcome: audit.OutcomeRefused, msg: fmt.Sprintf(format, args...)}
}

func internal(format string, args ...any) *failure {
	return &failure{status: http.StatusInternalServerError, outcome: audit.OutcomeError, msg: fmt.Sprintf(format, args...)}
}

// fromStore classifies a store error: the store rejects some arguments the
// API lets through (a port no block can hold), which is the caller's
// mistake, not the agent's.
func fromStore(step string, err error) *failure {
	if errors.Is(err, store.ErrInvalid) {
		return malformed(http.StatusBadRequest, "%s: %v", step, err)
	}
	if errors.Is(err, diskspace.ErrLow) {
		// Writes resume by themselves when there is room; 503 tells the
		// lease hook to queue and a person to come back.
		f := internal("%s: %v", step, err)
		f.status = http.StatusServiceUnavailable
		return f
	}
	return internal("%s: %v", step, err)
}

func (r *reply) fail(f *failure) {
	r.status, r.outcome, r.message, r.detail = f.status, f.outcome, f.msg, f.msg
	r.answer, r.stream, r.document, r.answerSHA256 = nil, nil, nil, ""
}

// route is one endpoint. parse reads and checks the request; it records the
// criteria and purpose as given even when it fails, so that a refused or
// malformed request is audited with what it asked. run computes the answer.
type route struct {
	action string
	method string
	role   Role
	parse  func(s *Server, r *http.Request, rep *reply) (run func(rep *reply) *failure, f *failure)
}

var routes = map[string]route{
	wire.PathLookup:       {wire.ActionLookup, http.MethodPost, RoleInvestigator, (*Server).parseLookup},
	wire.PathHistory:      {wire.ActionHistory, http.MethodPost, RoleInvestigator, (*Server).parseHistory},
	wire.PathExport:       {wire.ActionExport, http.MethodPost, RoleInvestigator, (*Server).parseExport},
	wire.PathStatus:       {wire.ActionStatus, http.MethodGet, RoleAdmin, (*Server).parseStatus},
	wire.PathAudit:        {wire.ActionAuditShow, http.MethodGet, RoleAuditor, (*Server).parseAuditShow},
	wire.PathAuditVerify:  {wire.ActionAuditVerify, http.MethodPost, RoleAuditor, (*Server).parseAuditVerify},
	wire.PathAuditSubject: {wire.ActionAuditSubject, http.MethodPost, RoleAuditor, (*Server).parseAuditSubject},
	wire.PathLeases:       {wire.ActionLeases, http.MethodPost, RoleDHCP, (*Server).parseLeases},
}

// maxCriterion caps a criterion taken from the URL of a request that names
// no route, which may be anything.
const maxCriterion = 256

// dispatch computes the reply to r. It never writes a response; a panic in
// a handler becomes an "error" reply so that it is audited like the rest.
func (s *Server) dispatch(r *http.Request, id identity) (rep *reply) {
	rep = &reply{action: wire.ActionUnknown, criteria: map[string]string{}}
	defer func() {
		if p := recover(); p != nil {
			s.log.Error("api handler panic", logattr.Action, rep.action, logattr.Err, fmt.Sprint(p), "stack", string(debug.Stack()))
			rep.fail(internal("internal error while answering %s", rep.action))
		}
	}()
	rt, ok := routes[r.URL.Path]
	// An operator with no role at all is refused before anything it sent
	// is read or kept: its entry names who, when, the action of the path
	// and the outcome, so that whoever may not ask cannot make the log
	// hold what they send.
	if !id.known || len(id.roles) == 0 {
		if ok {
			rep.action, rep.role = rt.action, string(rt.role)
		}
		rep.criteria = nil
		rep.fail(refusedWithoutRole(id, rep.action, rt.role))
		rep.roleless = true
		return rep
	}
	if !ok {
		rep.criteria["method"] = truncate(r.Method)
		rep.criteria["path"] = truncate(r.URL.Path)
		if r.URL.RawQuery != "" {
			rep.criteria["query"] = truncate(r.URL.RawQuery)
		}
		rep.fail(malformed(http.StatusNotFound, "unknown path %q", truncate(r.URL.Path)))
		return rep
	}
	// The entry's role is the one the request is judged under: the role
	// its action needs, whether or not the operator holds it.
	rep.action, rep.role = rt.action, string(rt.role)
	if r.Method != rt.method {
		rep.criteria["method"] = truncate(r.Method)
		rep.header = http.Header{"Allow": {rt.method}}
		rep.fail(malformed(http.StatusMethodNotAllowed, "%s %s: method not allowed (use %s)", truncate(r.Method), r.URL.Path, rt.method))
		return rep
	}
	run, f := rt.parse(s, r, rep)
	switch {
	case !id.has(rt.role):
		f = refused("operator %s has role %s; %s needs the role %s", id.operator, id.roleNames(), rt.action, rt.role)
	}
	if f != nil {
		rep.fail(f)
		return rep
	}
	if f := run(rep); f != nil {
		rep.fail(f)
	}
	return rep
}

// refusedWithoutRole is the refusal of an operator that holds no role (or
// that the transport did not identify). role is "" for an unknown path.
func refusedWithoutRole(id identity, action string, role Role) *failure {
	if !id.known {
		return refused("operator not identified: the API answers only on its unix socket or over TLS with a client certificate")
	}
	if role == "" {
		return refused("operator %s has no role", id.operator)
	}
	return refused("operator %s has role none; %s needs the role %s", id.operator, action, role)
}

// clipPurpose is the purpose as audited: a longer one than the protocol
// allows is cut to wire.MaxPurposeBytes (on a character boundary) and marked.
func clipPurpose(p string) string {
	if len(p) <= wire.MaxPurposeBytes {
		return p
	}
	cut := wire.MaxPurposeBytes
	for cut > 0 && !utf8.RuneStart(p[cut]) {
		cut--
	}
	return p[:cut] + "…"
}

func truncate(s string) string {
	if len(s) <= maxCriterion {
		return s
	}
	return s[:maxCriterion] + "…"
}

// write sends the reply; the audit entry is already appended, and proof is
// the signed head its append wrote.
func (r *reply) write(w http.ResponseWriter, proof audit.Proof) {
	seq := proof.Entry.Seq
	h := w.Header()
	for k, v := range r.header {
		h[k] = v
	}
	h.Set(wire.HeaderAuditSeq, strconv.FormatUint(seq, 10))
	switch {
	case r.document != nil:
		writeJSON(w, http.StatusOK, nil, wire.Answered{AuditSeq: seq, Evidence: wire.Evidence{
			AnswerSHA256: r.answerSHA256, Answer: r.document, Proof: auditwire.ProofOf(proof),
		}})
	case r.stream != nil:
		r.stream(w, seq)
	case r.answer != nil:
		writeJSON(w, http.StatusOK, nil, r.answer(seq))
	default:
		writeJSON(w, r.status, nil, wire.ErrorResponse{Error: r.message, Outcome: string(r.outcome), AuditSeq: seq})
	}
}

func writeJSON(w http.ResponseWriter, status int, header http.Header, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		// Only a programming error gets here; the entry is already written.
		status = http.StatusInternalServerError
		body, _ = json.Marshal(wire.ErrorResponse{Error: "encode answer: " + err.Error()})
	}
	for k, vs := range header {
		w.Header()[k] = vs
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)+1))
	w.WriteHeader(status)
	w.Write(append(body, '\n'))
}

// decodeBody reads a JSON object into dst: at most wire.MaxBodyBytes, no unknown
// fields, nothing after it. An empty body is allowed only when emptyOK.
func decodeBody(r *http.Request, dst any, emptyOK bool) *failure {
	data, err := io.ReadAll(http.MaxBytesReader(nil, r.Body, wire.MaxBodyBytes))
	if err != nil {
		if errors.As(err, new(*http.MaxBytesError)) {
			return malformed(http.StatusRequestEntityTooLarge, "body: larger than %d bytes", wire.MaxBodyBytes)
		}
		return malformed(http.StatusBadRequest, "body: read: %v", err)
	}
	if len(bytes.TrimSpace(data)) == 0 {
		if emptyOK {
			return nil
		}
		return malformed(http.StatusBadRequest, "body: empty; expected a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		return malformed(http.StatusBadRequest, "body: %v", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return malformed(http.StatusBadRequest, "body: data after the JSON object")
	}
	return nil
}

// noQuery rejects query parameters on endpoints that take none, for the
// same reason unknown JSON fields are rejected.
func noQuery(r *http.Request, rep *reply) *failure {
	if r.URL.RawQuery == "" {
		return nil
	}
	rep.criteria["query"] = truncate(r.URL.RawQuery)
	return malformed(http.StatusBadRequest, "query parameters: %s takes none", r.URL.Path)
}

// Layouts used to explain a rejected time.
const (
	layoutNoZone = "2006-01-02T15:04:05.999999999"
	layoutDate   = "2006-01-02"
)

// parseTime reads an RFC 3339 time with an explicit zone.
func parseTime(field, v string) (time.Time, *failure) {
	if v == "" {
		return time.Time{}, malformed(http.StatusBadRequest, "%s: missing; give an RFC 3339 time with a zone, such as 2026-11-20T12:00:01Z", field)
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err == nil {
		return t, nil
	}
	if _, err := time.Parse(layoutNoZone, v); err == nil {
		return time.Time{}, malformed(http.StatusBadRequest,
			"%s: %q has no time zone; add Z for UTC or an offset such as +01:00 (a time without a zone names a different instant on every machine)", field, v)
	}
	if _, err := time.Parse(layoutDate, v); err == nil {
		return time.Time{}, malformed(http.StatusBadRequest, "%s: %q is a date; give a time of day and a zone, such as %sT12:00:01Z", field, v, v)
	}
	return time.Time{}, malformed(http.StatusBadRequest, "%s: %q is not an RFC 3339 time with a zone, such as 2026-11-20T12:00:01Z: %v", field, v, err)
}

func parseRange(fromText, toText string) (from, to time.Time, f *failure) {
	if from, f = parseTime("from", fromText); f != nil {
		return
	}
	if to, f = parseTime("to", toText); f != nil {
		return
	}
	if to.Before(from) {
		f = malformed(http.StatusBadRequest, "to: %s is before from %s", toText, fromText)
	}
	return
}

// needPurpose refuses a request for records that names no purpose, and
// rejects one that is too long to be a case reference.
func needPurpose(purpose string) *failure {
	if len(purpose) > wire.MaxPurposeBytes {
		return malformed(http.StatusBadRequest, "purpose: %d bytes; a purpose or case reference is at most %d bytes", len(purpose), wire.MaxPurposeBytes)
	}
	if strings.TrimSpace(purpose) == "" {
		return refused("purpose required: lookup, history and export must name a purpose or case reference")
	}
	return nil
}

// setCriterion records a criterion that was given.
func setCriterion(rep *reply, key, value string) {
	if value != "" {
		rep.criteria[key] = value
	}
}
