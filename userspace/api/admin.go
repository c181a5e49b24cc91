package api

import (
	"fmt"
	"net/http"
	"net/url"
	"strconv"

	"github.com/blocknat/blocknat/userspace/audit"
	"github.com/blocknat/blocknat/userspace/auditwire"
	"github.com/blocknat/blocknat/userspace/wire"
)

func (s *Server) parseStatus(r *http.Request, rep *reply) (func(*reply) *failure, *failure) {
	if f := noQuery(r, rep); f != nil {
		return nil, f
	}
	return func(rep *reply) *failure {
		resp := wire.StatusResponse{Audit: wire.AuditStatus{Entries: s.audit.Len()}}
		if s.status != nil {
			// The agent reads the store for its own figures; taking them
			// from it reads the store once and keeps the two in step.
			agent, st, err := s.status(r.Context())
			if err != nil {
				return internal("agent status: %v", err)
			}
			resp.Agent, resp.Store = &agent, storeStatusOf(st)
		} else {
			st, err := s.store.Stats()
			if err != nil {
				return internal("store stats: %v", err)
			}
			resp.Store = storeStatusOf(st)
		}
		if s.fleetStatus != nil {
			fleet, err := s.fleetStatus(r.Context())
			if err != nil {
				return internal("fleet status: %v", err)
			}
			resp.Fleet = fleet
		}
		rep.outcome, rep.detail = audit.OutcomeAnswered, ""
		rep.answer = func(seq uint64) any {
			resp.AuditSeq = seq
			return resp
		}
		return nil
	}, nil
}

func (s *Server) parseAuditShow(r *http.Request, rep *reply) (func(*reply) *failure, *failure) {
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		rep.criteria["query"] = truncate(r.URL.RawQuery)
		return nil, malformed(http.StatusBadRequest, "query: %v", err)
	}
	for k, v := range q {
		rep.criteria[truncate(k)] = truncate(v[0])
	}
	for k, v := range q {
		if k != "from" && k != "limit" {
			return nil, malformed(http.StatusBadRequest, "query parameter %q: unknown (from, limit)", truncate(k))
		}
		if len(v) > 1 {
			return nil, malformed(http.StatusBadRequest, "query parameter %q: given %d times", k, len(v))
		}
	}
	limit := wire.DefaultAuditLimit
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > wire.MaxAuditLimit {
			return nil, malformed(http.StatusBadRequest, "limit: %q is not a number from 1 to %d", truncate(v), wire.MaxAuditLimit)
		}
		limit = n
	}
	var from uint64
	fromGiven := q.Has("from")
	if fromGiven {
		n, err := strconv.ParseUint(q.Get("from"), 10, 64)
		if err != nil {
			return nil, malformed(http.StatusBadRequest, "from: %q is not an entry sequence number", truncate(q.Get("from")))
		}
		from = n
	}
	return func(rep *reply) *failure {
		// Len is the seq of the newest entry (seqs are 1-based).
		total := s.audit.Len()
		if !fromGiven {
			// The newest entries. Entries removed by retention are
			// skipped, so the answer may hold fewer than limit.
			from = 1
			if total >= uint64(limit) {
				from = total - uint64(limit) + 1
			}
		}
		entries, err := s.audit.Entries(from, limit)
		if err != nil {
			return internal("audit entries from %d: %v", from, err)
		}
		rep.outcome = outcomeOf(len(entries))
		rep.detail = fmt.Sprintf("%d entries", len(entries))
		if len(entries) == 1 {
			rep.detail = "1 entry"
		}
		rep.answer = func(seq uint64) any {
			return wire.AuditShowResponse{AuditSeq: seq, Total: total, Entries: auditwire.EntriesOf(entries)}
		}
		return nil
	}, nil
}

func (s *Server) parseAuditVerify(r *http.Request, rep *reply) (func(*reply) *failure, *failure) {
	if f := noQuery(r, rep); f != nil {
		return nil, f
	}
	// The body is empty or {}; anything else is a field this version does
	// not know.
	if f := decodeBody(r, &struct{}{}, true); f != nil {
		return nil, f
	}
	return func(rep *reply) *failure {
		report, err := s.audit.Verify()
		if err != nil {
			return internal("audit verify: %v", err)
		}
		resp := auditwire.ReportOf(report)
		// Verification ran and has an answer either way; a failed check is
		// in the detail, where an auditor reading the log finds it.
		rep.outcome = audit.OutcomeAnswered
		if resp.OK {
			rep.detail = fmt.Sprintf("ok: entries %d-%d, %d checkpoints", resp.FirstSeq, resp.LastSeq, resp.Checkpoints)
		} else {
			rep.detail = fmt.Sprintf("failed: %d problems, first: %s", len(report.Problems), report.Problems[0])
		}
		rep.answer = func(seq uint64) any {
			resp.AuditSeq = seq
			return resp
		}
		return nil
	}, nil
}
