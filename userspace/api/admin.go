package api

import (
	"fmt"
	"net/http"
	"net/url"
	"strconv"

	"github.com/blocknat/blocknat/userspace/audit"
)

func (s *Server) parseStatus(r *http.Request, rep *reply) (func(*reply) *failure, *failure) {
	if f := noQuery(r, rep); f != nil {
		return nil, f
	}
	return func(rep *reply) *failure {
		st, err := s.store.Stats()
		if err != nil {
			return internal("store stats: %v", err)
		}
		resp := StatusResponse{Store: storeStatusOf(st), Audit: AuditStatus{Entries: s.audit.Len()}}
		if s.status != nil {
			doc, err := s.status(r.Context())
			if err != nil {
				return internal("agent status: %v", err)
			}
			resp.Agent = doc
		}
		rep.outcome, rep.detail = audit.OutcomeAnswered, ""
		rep.answer = func(seq uint64) any {
			resp.AuditSeq = seq
			return resp
		}
		return nil
	}, nil
}

// AuditShowResponse answers GET /v1/audit: entries exactly as the log holds
// them, so that a reader can recompute their hashes. The entry of this very
// request is appended after the entries are read, so it is not among them.
type AuditShowResponse struct {
	AuditSeq uint64 `json:"audit_seq"`
	// Total is the number of entries in the log before this request.
	Total   uint64        `json:"total"`
	Entries []audit.Entry `json:"entries"`
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
	limit := DefaultAuditLimit
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > MaxAuditLimit {
			return nil, malformed(http.StatusBadRequest, "limit: %q is not a number from 1 to %d", truncate(v), MaxAuditLimit)
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
		if entries == nil {
			entries = []audit.Entry{}
		}
		rep.outcome = outcomeOf(len(entries))
		rep.detail = fmt.Sprintf("%d entries", len(entries))
		if len(entries) == 1 {
			rep.detail = "1 entry"
		}
		rep.answer = func(seq uint64) any {
			return AuditShowResponse{AuditSeq: seq, Total: total, Entries: entries}
		}
		return nil
	}, nil
}

// AuditVerifyResponse answers POST /v1/audit/verify. It describes the log
// as it was before this request's own entry was appended.
type AuditVerifyResponse struct {
	AuditSeq    uint64         `json:"audit_seq,omitempty"` // absent for an offline verification
	OK          bool           `json:"ok"`
	Entries     uint64         `json:"entries"`
	Checkpoints int            `json:"checkpoints"`
	Anchors     int            `json:"anchors"`
	FirstSeq    uint64         `json:"first_seq"`
	LastSeq     uint64         `json:"last_seq"`
	HeadSeq     uint64         `json:"head_seq"`
	Problems    []AuditProblem `json:"problems"`
}

// AuditProblem is one finding of a verification.
type AuditProblem struct {
	Seq    uint64 `json:"seq"`
	File   string `json:"file"`
	Line   int    `json:"line"`
	Reason string `json:"reason"`
}

// VerifyResult converts an audit.Report to its wire form (AuditSeq 0), so
// that an offline verification reads like one done by the agent.
func VerifyResult(report audit.Report) AuditVerifyResponse {
	resp := AuditVerifyResponse{
		OK: report.OK(), Entries: report.Entries, Checkpoints: report.Checkpoints, Anchors: report.Anchors,
		FirstSeq: report.FirstSeq, LastSeq: report.LastSeq, HeadSeq: report.HeadSeq,
		Problems: make([]AuditProblem, 0, len(report.Problems)),
	}
	for _, p := range report.Problems {
		resp.Problems = append(resp.Problems, AuditProblem{Seq: p.Seq, File: p.File, Line: p.Line, Reason: p.Reason})
	}
	return resp
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
		resp := VerifyResult(report)
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
