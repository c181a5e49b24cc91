package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/blocknat/blocknat/test/testutil"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/blocknat/blocknat/userspace/api/client"
	"github.com/blocknat/blocknat/userspace/audit"
	"github.com/blocknat/blocknat/userspace/store"
	"github.com/blocknat/blocknat/userspace/wire"
)

const lookupBody = `{"ip":"198.51.100.10","port":15123,"time":"2026-11-20T12:00:01Z","tolerance":"2s","purpose":"case 2026-4411"}`

// TestEveryRequestAuditedOnce sends every kind of request and checks that
// each appends exactly one entry, before the response (watchedAuditor), with
// the criteria as given, and that the response names that entry.
func TestEveryRequestAuditedOnce(t *testing.T) {
	h := newHarness(t, harnessOptions{
		roles: rootRoles(RoleInvestigator, RoleAuditor, RoleAdmin, RoleDHCP),
		status: func(context.Context) (wire.Status, store.Stats, error) {
			return wire.Status{Subscribers: 2}, store.Stats{}, nil
		},
	})
	leaseEvent := `{"kind":"add","time":"2026-11-20T12:59:00Z","inside":"100.64.0.27","mac":"02:00:00:00:00:1b","expires":"2026-11-20T13:59:00Z","source":"dnsmasq"}`
	big := `{"ip":"198.51.100.10","port":15123,"time":"2026-11-20T12:00:01Z","purpose":"` + strings.Repeat("x", wire.MaxBodyBytes) + `"}`
	tests := []struct {
		name, method, path, body string
		status                   int
		action                   string
		outcome                  audit.Outcome
		criteria                 map[string]string // exactly these
		purpose                  string
		inMessage                string // in the error message, or in the body of an answer
	}{
		{"lookup answered", "POST", wire.PathLookup, lookupBody, 200, wire.ActionLookup, audit.OutcomeAnswered,
			map[string]string{"ip": "198.51.100.10", "port": "15123", "time": "2026-11-20T12:00:01Z", "tolerance": "2s"}, "case 2026-4411", `"inside":"100.64.0.27"`},
		{"lookup empty", "POST", wire.PathLookup, `{"ip":"198.51.100.10","port":15123,"time":"2026-11-20T12:00:01Z","purpose":"case 1"}`, 200, wire.ActionLookup, audit.OutcomeEmpty,
			map[string]string{"ip": "198.51.100.10", "port": "15123", "time": "2026-11-20T12:00:01Z"}, "case 1", `"candidates":[]`},
		{"lookup missing purpose", "POST", wire.PathLookup, `{"ip":"198.51.100.10","port":15123,"time":"2026-11-20T12:00:01Z"}`, 403, wire.ActionLookup, audit.OutcomeRefused,
			map[string]string{"ip": "198.51.100.10", "port": "15123", "time": "2026-11-20T12:00:01Z"}, "", "purpose required"},
		{"lookup blank purpose", "POST", wire.PathLookup, `{"ip":"198.51.100.10","port":15123,"time":"2026-11-20T12:00:01Z","purpose":"  "}`, 403, wire.ActionLookup, audit.OutcomeRefused,
			map[string]string{"ip": "198.51.100.10", "port": "15123", "time": "2026-11-20T12:00:01Z"}, "  ", "purpose required"},
		{"lookup time without zone", "POST", wire.PathLookup, `{"ip":"198.51.100.10","port":15123,"time":"2026-11-20T12:00:01","purpose":"case 1"}`, 400, wire.ActionLookup, audit.OutcomeMalformed,
			map[string]string{"ip": "198.51.100.10", "port": "15123", "time": "2026-11-20T12:00:01"}, "case 1", "has no time zone"},
		{"lookup unknown field", "POST", wire.PathLookup, `{"ip":"198.51.100.10","port":15123,"time":"2026-11-20T12:00:01Z","destination":"203.0.113.9","purpose":"case 1"}`, 400, wire.ActionLookup, audit.OutcomeMalformed,
			nil, "", `unknown field "destination"`},
		{"lookup bad json", "POST", wire.PathLookup, `{"ip": 198.51`, 400, wire.ActionLookup, audit.OutcomeMalformed, nil, "", "body:"},
		{"lookup two objects", "POST", wire.PathLookup, lookupBody + `{}`, 400, wire.ActionLookup, audit.OutcomeMalformed, nil, "", "data after the JSON object"},
		{"lookup empty body", "POST", wire.PathLookup, ``, 400, wire.ActionLookup, audit.OutcomeMalformed, nil, "", "body: empty"},
		{"lookup purpose too long", "POST", wire.PathLookup, `{"ip":"198.51.100.10","port":15123,"time":"2026-11-20T12:00:01Z","purpose":"` + strings.Repeat("x", wire.MaxPurposeBytes+1) + `"}`, 400, wire.ActionLookup, audit.OutcomeMalformed,
			map[string]string{"ip": "198.51.100.10", "port": "15123", "time": "2026-11-20T12:00:01Z"}, strings.Repeat("x", wire.MaxPurposeBytes) + "…", "at most 256 bytes"},
		{"lookup body too large", "POST", wire.PathLookup, big, 413, wire.ActionLookup, audit.OutcomeMalformed, nil, "", "larger than"},
		{"lookup negative tolerance", "POST", wire.PathLookup, `{"ip":"198.51.100.10","port":15123,"time":"2026-11-20T12:00:01Z","tolerance":"-1s","purpose":"p"}`, 400, wire.ActionLookup, audit.OutcomeMalformed,
			map[string]string{"ip": "198.51.100.10", "port": "15123", "time": "2026-11-20T12:00:01Z", "tolerance": "-1s"}, "p", "negative"},
		{"lookup tolerance over cap", "POST", wire.PathLookup, `{"ip":"198.51.100.10","port":15123,"time":"2026-11-20T12:00:01Z","tolerance":"25h","purpose":"p"}`, 400, wire.ActionLookup, audit.OutcomeMalformed,
			map[string]string{"ip": "198.51.100.10", "port": "15123", "time": "2026-11-20T12:00:01Z", "tolerance": "25h"}, "p", "maximum"},
		{"lookup ipv6", "POST", wire.PathLookup, `{"ip":"2001:db8::1","port":15123,"time":"2026-11-20T12:00:01Z","purpose":"p"}`, 400, wire.ActionLookup, audit.OutcomeMalformed,
			map[string]string{"ip": "2001:db8::1", "port": "15123", "time": "2026-11-20T12:00:01Z"}, "p", "not an IPv4 address"},
		{"lookup port too large", "POST", wire.PathLookup, `{"ip":"198.51.100.10","port":70000,"time":"2026-11-20T12:00:01Z","purpose":"p"}`, 400, wire.ActionLookup, audit.OutcomeMalformed,
			nil, "", "body:"},
		{"unknown path", "GET", "/v1/who?x=1", ``, 404, wire.ActionUnknown, audit.OutcomeMalformed,
			map[string]string{"method": "GET", "path": "/v1/who", "query": "x=1"}, "", "unknown path"},
		{"wrong method", "GET", wire.PathLookup, ``, 405, wire.ActionLookup, audit.OutcomeMalformed,
			map[string]string{"method": "GET"}, "", "method not allowed"},
		{"history answered", "POST", wire.PathHistory, `{"subscriber":"100.64.0.27","from":"2026-11-20T00:00:00Z","to":"2026-11-21T00:00:00+01:00","purpose":"case 7"}`, 200, wire.ActionHistory, audit.OutcomeAnswered,
			map[string]string{"subscriber": "100.64.0.27", "from": "2026-11-20T00:00:00Z", "to": "2026-11-21T00:00:00+01:00"}, "case 7", `"subscriber":27`},
		{"history empty", "POST", wire.PathHistory, `{"subscriber":"100.64.0.99","from":"2026-11-20T00:00:00Z","to":"2026-11-21T00:00:00Z","purpose":"case 7"}`, 200, wire.ActionHistory, audit.OutcomeEmpty,
			map[string]string{"subscriber": "100.64.0.99", "from": "2026-11-20T00:00:00Z", "to": "2026-11-21T00:00:00Z"}, "case 7", `"records":[]`},
		{"history reversed range", "POST", wire.PathHistory, `{"subscriber":"100.64.0.27","from":"2026-11-21T00:00:00Z","to":"2026-11-20T00:00:00Z","purpose":"case 7"}`, 400, wire.ActionHistory, audit.OutcomeMalformed,
			map[string]string{"subscriber": "100.64.0.27", "from": "2026-11-21T00:00:00Z", "to": "2026-11-20T00:00:00Z"}, "case 7", "before from"},
		{"export answered", "POST", wire.PathExport, `{"from":"2026-11-20T00:00:00Z","to":"2026-11-21T00:00:00Z","format":"csv","purpose":"court order 12"}`, 200, wire.ActionExport, audit.OutcomeAnswered,
			map[string]string{"from": "2026-11-20T00:00:00Z", "to": "2026-11-21T00:00:00Z", "format": "csv"}, "court order 12", "100.64.0.40"},
		{"export empty", "POST", wire.PathExport, `{"from":"2026-10-20T00:00:00Z","to":"2026-10-21T00:00:00Z","format":"jsonl","purpose":"court order 12"}`, 200, wire.ActionExport, audit.OutcomeEmpty,
			map[string]string{"from": "2026-10-20T00:00:00Z", "to": "2026-10-21T00:00:00Z", "format": "jsonl"}, "court order 12", ""},
		{"export bad format", "POST", wire.PathExport, `{"from":"2026-11-20T00:00:00Z","to":"2026-11-21T00:00:00Z","format":"xml","purpose":"p"}`, 400, wire.ActionExport, audit.OutcomeMalformed,
			map[string]string{"from": "2026-11-20T00:00:00Z", "to": "2026-11-21T00:00:00Z", "format": "xml"}, "p", "format"},
		{"export missing purpose", "POST", wire.PathExport, `{"from":"2026-11-20T00:00:00Z","to":"2026-11-21T00:00:00Z","format":"csv"}`, 403, wire.ActionExport, audit.OutcomeRefused,
			map[string]string{"from": "2026-11-20T00:00:00Z", "to": "2026-11-21T00:00:00Z", "format": "csv"}, "", "purpose required"},
		{"status", "GET", wire.PathStatus, ``, 200, wire.ActionStatus, audit.OutcomeAnswered, nil, "", `"subscribers":2`},
		{"status with query", "GET", wire.PathStatus + "?verbose=1", ``, 400, wire.ActionStatus, audit.OutcomeMalformed,
			map[string]string{"query": "verbose=1"}, "", "takes none"},
		{"audit show", "GET", wire.PathAudit + "?from=1&limit=2", ``, 200, wire.ActionAuditShow, audit.OutcomeAnswered,
			map[string]string{"from": "1", "limit": "2"}, "", `"seq":2`},
		{"audit show bad limit", "GET", wire.PathAudit + "?limit=0", ``, 400, wire.ActionAuditShow, audit.OutcomeMalformed,
			map[string]string{"limit": "0"}, "", "limit"},
		{"audit show unknown parameter", "GET", wire.PathAudit + "?operator=alice", ``, 400, wire.ActionAuditShow, audit.OutcomeMalformed,
			map[string]string{"operator": "alice"}, "", "unknown"},
		{"audit verify", "POST", wire.PathAuditVerify, ``, 200, wire.ActionAuditVerify, audit.OutcomeAnswered, nil, "", `"ok":true`},
		{"audit verify unknown field", "POST", wire.PathAuditVerify, `{"deep":true}`, 400, wire.ActionAuditVerify, audit.OutcomeMalformed, nil, "", "unknown field"},
		{"history by mac", "POST", wire.PathHistory, `{"mac":"02:00:00:00:00:99","from":"2026-11-20T00:00:00Z","to":"2026-11-21T00:00:00Z","purpose":"case 7"}`, 200, wire.ActionHistory, audit.OutcomeEmpty,
			map[string]string{"mac": "02:00:00:00:00:99", "from": "2026-11-20T00:00:00Z", "to": "2026-11-21T00:00:00Z"}, "case 7", `"records":[]`},
		{"history subscriber and mac", "POST", wire.PathHistory, `{"subscriber":"100.64.0.27","mac":"02:00:00:00:00:99","from":"2026-11-20T00:00:00Z","to":"2026-11-21T00:00:00Z","purpose":"case 7"}`, 400, wire.ActionHistory, audit.OutcomeMalformed,
			map[string]string{"subscriber": "100.64.0.27", "mac": "02:00:00:00:00:99", "from": "2026-11-20T00:00:00Z", "to": "2026-11-21T00:00:00Z"}, "case 7", "not both"},
		{"history bad mac", "POST", wire.PathHistory, `{"mac":"02:00","from":"2026-11-20T00:00:00Z","to":"2026-11-21T00:00:00Z","purpose":"case 7"}`, 400, wire.ActionHistory, audit.OutcomeMalformed,
			map[string]string{"mac": "02:00", "from": "2026-11-20T00:00:00Z", "to": "2026-11-21T00:00:00Z"}, "case 7", "hardware address"},
		{"export by subscriber", "POST", wire.PathExport, `{"from":"2026-11-20T00:00:00Z","to":"2026-11-21T00:00:00Z","format":"csv","subscriber":"100.64.0.40","purpose":"court order 12"}`, 200, wire.ActionExport, audit.OutcomeAnswered,
			map[string]string{"from": "2026-11-20T00:00:00Z", "to": "2026-11-21T00:00:00Z", "format": "csv", "subscriber": "100.64.0.40"}, "court order 12", "100.64.0.40"},
		{"audit subject", "POST", wire.PathAuditSubject, `{"subscriber":"100.64.0.27","from":"2026-11-01T00:00:00Z","to":"2027-01-01T00:00:00Z"}`, 200, wire.ActionAuditSubject, audit.OutcomeAnswered,
			map[string]string{"subscriber": "100.64.0.27", "from": "2026-11-01T00:00:00Z", "to": "2027-01-01T00:00:00Z"}, "", `"subject":"inside:100.64.0.27"`},
		{"audit subject without subject", "POST", wire.PathAuditSubject, `{"from":"2026-11-01T00:00:00Z","to":"2027-01-01T00:00:00Z"}`, 400, wire.ActionAuditSubject, audit.OutcomeMalformed,
			map[string]string{"from": "2026-11-01T00:00:00Z", "to": "2027-01-01T00:00:00Z"}, "", "subscriber or mac"},
		{"leases answered", "POST", wire.PathLeases, `{"events":[` + leaseEvent + `]}`, 200, wire.ActionLeases, audit.OutcomeAnswered,
			map[string]string{"events": "1"}, "", `"accepted":1`},
		{"leases empty", "POST", wire.PathLeases, `{"events":[]}`, 400, wire.ActionLeases, audit.OutcomeMalformed,
			map[string]string{"events": "0"}, "", "at least one"},
		{"leases bad event", "POST", wire.PathLeases, `{"events":[{"kind":"grab","time":"2026-11-20T12:59:00Z","inside":"100.64.0.27","mac":"02:00:00:00:00:1b","source":"dnsmasq"}]}`, 400, wire.ActionLeases, audit.OutcomeMalformed,
			map[string]string{"events": "1"}, "", "events[0]"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before, appends := h.log.Len(), h.auditor.appends.Load()
			resp, body := h.raw(tc.method, tc.path, tc.body)
			if got := h.auditor.appends.Load() - appends; got != 1 {
				t.Fatalf("%d audit appends, want exactly 1", got)
			}
			seq := h.log.Len()
			if seq != before+1 {
				t.Fatalf("audit log grew from %d to %d, want one entry", before, seq)
			}
			if resp.StatusCode != tc.status {
				t.Errorf("status %d, want %d; body %s", resp.StatusCode, tc.status, body)
			}
			if got := resp.Header.Get(wire.HeaderAuditSeq); got != strconv.FormatUint(seq, 10) {
				t.Errorf("%s = %q, want %d", wire.HeaderAuditSeq, got, seq)
			}
			e := h.lastEntry()
			if e.Operator != operatorName() || e.Action != tc.action || e.Outcome != tc.outcome || e.Purpose != tc.purpose {
				t.Errorf("entry operator %q action %q outcome %q purpose %q, want %q %q %q %q",
					e.Operator, e.Action, e.Outcome, e.Purpose, operatorName(), tc.action, tc.outcome, tc.purpose)
			}
			if len(e.Criteria) != len(tc.criteria) {
				t.Errorf("criteria %v, want %v", e.Criteria, tc.criteria)
			}
			for k, v := range tc.criteria {
				if e.Criteria[k] != v {
					t.Errorf("criteria[%q] = %q, want %q (all: %v)", k, e.Criteria[k], v, e.Criteria)
				}
			}
			if tc.status == 200 && !strings.Contains(body, tc.inMessage) {
				t.Errorf("body %q does not contain %q", body, tc.inMessage)
			}
			if tc.status != 200 {
				var er wire.ErrorResponse
				if err := json.Unmarshal([]byte(body), &er); err != nil {
					t.Fatalf("error body %q: %v", body, err)
				}
				if !strings.Contains(er.Error, tc.inMessage) {
					t.Errorf("error %q does not contain %q", er.Error, tc.inMessage)
				}
				if er.Outcome != string(tc.outcome) || er.AuditSeq != seq || er.Error != e.Detail {
					t.Errorf("error body %+v; want outcome %s, seq %d, error = entry detail %q", er, tc.outcome, seq, e.Detail)
				}
				if tc.status == 405 && resp.Header.Get("Allow") != http.MethodPost {
					t.Errorf("Allow = %q, want POST", resp.Header.Get("Allow"))
				}
			} else if resp.Header.Get("Content-Type") == "application/json" {
				var ans struct {
					AuditSeq uint64 `json:"audit_seq"`
				}
				if err := json.Unmarshal([]byte(body), &ans); err != nil || ans.AuditSeq != seq {
					t.Errorf("answer audit_seq %d (%v), want %d", ans.AuditSeq, err, seq)
				}
			}
		})
	}
	report, err := h.log.Verify()
	if err != nil || !report.OK() {
		t.Fatalf("audit log after the requests: %v %+v", err, report.Problems)
	}
}

// TestAuditFailureWithholdsAnswer makes Append fail: the client gets 503
// and nothing of the answer, for every kind of request.
func TestAuditFailureWithholdsAnswer(t *testing.T) {
	h := newHarness(t, harnessOptions{roles: rootRoles(RoleInvestigator, RoleAuditor, RoleAdmin)})
	h.auditor.failAll.Store(true)
	requests := []struct{ method, path, body string }{
		{"POST", wire.PathLookup, lookupBody},
		{"POST", wire.PathHistory, `{"subscriber":"100.64.0.27","from":"2026-11-20T00:00:00Z","to":"2026-11-21T00:00:00Z","purpose":"p"}`},
		{"POST", wire.PathExport, `{"from":"2026-11-20T00:00:00Z","to":"2026-11-21T00:00:00Z","format":"csv","purpose":"p"}`},
		{"GET", wire.PathStatus, ``},
		{"GET", wire.PathAudit, ``},
		{"POST", wire.PathAuditVerify, ``},
		{"POST", wire.PathLookup, `{"ip":"198.51.100.10"}`}, // a failure is withheld too: it would be unrecorded
		{"GET", "/v1/nowhere", ``},
	}
	for _, rq := range requests {
		appends := h.auditor.appends.Load()
		resp, body := h.raw(rq.method, rq.path, rq.body)
		if got := h.auditor.appends.Load() - appends; got != 1 {
			t.Errorf("%s %s: %d appends, want 1", rq.method, rq.path, got)
		}
		if resp.StatusCode != http.StatusServiceUnavailable {
			t.Errorf("%s %s: status %d, want 503", rq.method, rq.path, resp.StatusCode)
		}
		for _, leak := range []string{"100.64.0", "198.51.100", "candidates", "subscriber", "records", "entries"} {
			if strings.Contains(body, leak) {
				t.Errorf("%s %s: 503 body %q holds %q", rq.method, rq.path, body, leak)
			}
		}
		for _, hd := range []string{wire.HeaderAuditSeq, wire.HeaderRecords} {
			if v := resp.Header.Get(hd); v != "" {
				t.Errorf("%s %s: header %s = %q on 503", rq.method, rq.path, hd, v)
			}
		}
		if !strings.Contains(body, "audit log unavailable") {
			t.Errorf("%s %s: body %q does not say why", rq.method, rq.path, body)
		}
	}
	if n := h.log.Len(); n != 0 {
		t.Errorf("log holds %d entries; Append failed every time", n)
	}
	_, err := h.client.Lookup(context.Background(), wire.LookupRequest{IP: "198.51.100.10", Port: 15123, Time: "2026-11-20T12:00:01Z", Purpose: "p"})
	var apiErr *client.Error
	if !errors.As(err, &apiErr) || apiErr.Status != 503 || apiErr.AuditSeq != 0 {
		t.Errorf("client error %v, want *client.Error with status 503 and no audit seq", err)
	}
}

// TestRoles checks the SO_PEERCRED identity and the role mapping.
func TestRoles(t *testing.T) {
	ctx := context.Background()
	lookup := wire.LookupRequest{IP: "198.51.100.10", Port: 15123, Time: "2026-11-20T12:00:01Z", Tolerance: "2s", Purpose: "case 9"}

	t.Run("investigator", func(t *testing.T) {
		h := newHarness(t, harnessOptions{roles: rootRoles(RoleInvestigator)})
		ans, err := h.client.Lookup(ctx, lookup)
		if err != nil {
			t.Fatalf("Lookup: %v", err)
		}
		if len(ans.Candidates) != 2 {
			t.Errorf("%d candidates, want 2", len(ans.Candidates))
		}
		if e := h.lastEntry(); e.Operator != operatorName() || e.Role != string(RoleInvestigator) || e.Outcome != audit.OutcomeAnswered {
			t.Errorf("entry %+v", e)
		}
		// The same operator is no auditor.
		_, err = h.client.AuditShow(ctx, 0, 0)
		var apiErr *client.Error
		if !errors.As(err, &apiErr) || apiErr.Status != 403 || apiErr.Outcome != "refused" {
			t.Fatalf("AuditShow as investigator: %v, want refused", err)
		}
		if e := h.lastEntry(); e.Action != wire.ActionAuditShow || e.Outcome != audit.OutcomeRefused || e.Role != string(RoleAuditor) {
			t.Errorf("entry %+v", e)
		}
	})
	for name, roles := range map[string]Roles{
		"no role":     rootRoles(),
		"other uid":   {UIDs: map[uint32][]Role{4242: {RoleInvestigator}}},
		"wrong role":  rootRoles(RoleAuditor, RoleAdmin),
		"cert only":   {CertNames: map[string][]Role{"root": {RoleInvestigator}}},
		"empty roles": {},
	} {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t, harnessOptions{roles: roles})
			_, err := h.client.Lookup(ctx, lookup)
			var apiErr *client.Error
			if !errors.As(err, &apiErr) || apiErr.Status != 403 || apiErr.Outcome != "refused" {
				t.Fatalf("Lookup: %v, want refused", err)
			}
			if apiErr.AuditSeq != 1 || !strings.Contains(apiErr.Message, "needs the role investigator") {
				t.Errorf("error %+v", apiErr)
			}
			e := h.lastEntry()
			if e.Operator != operatorName() || e.Action != wire.ActionLookup || e.Outcome != audit.OutcomeRefused {
				t.Errorf("entry %+v", e)
			}
			if name == "wrong role" {
				// An operator with some role is judged on what it asked.
				if e.Purpose != "case 9" || e.Criteria["ip"] != "198.51.100.10" || e.Criteria["port"] != "15123" || e.Criteria["tolerance"] != "2s" {
					t.Errorf("refused entry lost the criteria: %+v", e)
				}
			} else if len(e.Criteria) != 0 || e.Purpose != "" {
				// Without any role, nothing it sent is kept.
				t.Errorf("entry of an operator without a role holds what it sent: %+v", e)
			}
			if strings.Contains(apiErr.Message, "100.64.0.") {
				t.Errorf("refusal leaks a subscriber: %s", apiErr.Message)
			}
		})
	}
}

// TestUnidentifiedTransport mounts the handler where no identity is known
// (plain TCP): the request is refused, and audited.
func TestUnidentifiedTransport(t *testing.T) {
	log, _ := openAuditLog(t)
	srv := NewServer(Deps{Store: openFixtureStore(t), Audit: log, Logger: quietLogger(), Roles: rootRoles(RoleInvestigator)})
	ts := httptest.NewServer(srv.Handler())
	defer ts.Close()
	resp, err := http.Post(ts.URL+wire.PathLookup, "application/json", strings.NewReader(lookupBody))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden || log.Len() != 1 {
		t.Fatalf("status %d, %d entries", resp.StatusCode, log.Len())
	}
	es, _ := log.Entries(1, 1)
	if es[0].Operator != "unknown" || es[0].Outcome != audit.OutcomeRefused || es[0].Action != wire.ActionLookup || len(es[0].Criteria) != 0 || es[0].Purpose != "" {
		t.Errorf("entry %+v", es[0])
	}
}

// TestOptionsStarAudited: net/http answers "OPTIONS *" on its own unless
// told not to; it is a request like any other.
func TestOptionsStarAudited(t *testing.T) {
	h := newHarness(t, harnessOptions{roles: rootRoles(RoleInvestigator)})
	req := &http.Request{Method: "OPTIONS", URL: &url.URL{Scheme: "http", Host: "blocknat", Opaque: "*"}, Header: http.Header{}}
	resp, err := h.http.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound || h.log.Len() != 1 {
		t.Fatalf("status %d, %d entries", resp.StatusCode, h.log.Len())
	}
	if e := h.lastEntry(); e.Action != wire.ActionUnknown || e.Criteria["method"] != "OPTIONS" {
		t.Errorf("entry %+v", e)
	}
}

// TestRolelessRefusedUnread sends every kind of request as an operator
// without any role: each is refused before its body is read, and its entry
// holds who, when, the action of the path and the outcome, nothing more.
func TestRolelessRefusedUnread(t *testing.T) {
	h := newHarness(t, harnessOptions{roles: Roles{UIDs: map[uint32][]Role{4242: {RoleInvestigator}}}})
	huge := `{"ip":"198.51.100.10","purpose":"` + strings.Repeat("<", 4*wire.MaxBodyBytes) + `"}`
	tests := []struct{ method, path, body, action string }{
		{"POST", wire.PathLookup, lookupBody, wire.ActionLookup},
		{"POST", wire.PathLookup, huge, wire.ActionLookup},
		{"POST", wire.PathLookup, `{"ip": 198.51`, wire.ActionLookup},
		{"GET", wire.PathLookup, ``, wire.ActionLookup},
		{"POST", wire.PathHistory, `{"subscriber":"100.64.0.27","from":"2026-11-20T00:00:00Z","to":"2026-11-21T00:00:00Z","purpose":"p"}`, wire.ActionHistory},
		{"POST", wire.PathExport, `{"from":"2026-11-20T00:00:00Z","to":"2026-11-21T00:00:00Z","format":"csv","purpose":"p"}`, wire.ActionExport},
		{"GET", wire.PathStatus + "?verbose=1", ``, wire.ActionStatus},
		{"GET", wire.PathAudit + "?operator=alice", ``, wire.ActionAuditShow},
		{"POST", wire.PathLeases, `{"events":[]}`, wire.ActionLeases},
		{"GET", "/v1/who?x=" + strings.Repeat("<", 1000), ``, wire.ActionUnknown},
	}
	for _, tc := range tests {
		before := h.log.Len()
		resp, body := h.raw(tc.method, tc.path, tc.body)
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("%s %s: status %d, want 403; body %s", tc.method, tc.path[:min(len(tc.path), 40)], resp.StatusCode, body)
		}
		if h.log.Len() != before+1 {
			t.Fatalf("%s %s: log grew from %d to %d, want one entry", tc.method, tc.action, before, h.log.Len())
		}
		e := h.lastEntry()
		if e.Operator != operatorName() || e.Action != tc.action || e.Outcome != audit.OutcomeRefused ||
			len(e.Criteria) != 0 || e.Purpose != "" || len(e.Subjects) != 0 || e.AnswerSHA256 != "" {
			t.Errorf("%s %s: entry %+v, want only who, when, what kind and the outcome", tc.method, tc.action, e)
		}
		if len(e.Detail) > 200 || strings.Contains(e.Detail, "198.51") || strings.Contains(e.Detail, "<") {
			t.Errorf("%s %s: detail %q holds what the request sent", tc.method, tc.action, e.Detail)
		}
		for _, leak := range []string{"100.64.0", "candidates", "records"} {
			if strings.Contains(body, leak) {
				t.Errorf("%s %s: body %q holds %q", tc.method, tc.action, body, leak)
			}
		}
	}
}

// TestRefusalFlood sends 1000 requests as an operator without a role, 100ms
// apart: the log grows by at most the budget (RefusalBurst, plus one entry
// per refill, plus the summary at shutdown), every request past it gets 429
// with Retry-After and no data, and the counts in the entries add up to
// 1000.
func TestRefusalFlood(t *testing.T) {
	c := testutil.NewClock(mustTime(t, "2026-11-20T13:00:00Z"), 0)
	h := newHarness(t, harnessOptions{roles: Roles{UIDs: map[uint32][]Role{4242: {RoleInvestigator}}}, now: c.Now})
	const requests, step = 1000, 100 * time.Millisecond
	limited := 0
	for i := range requests {
		resp, body := h.raw("POST", wire.PathLookup, lookupBody)
		switch resp.StatusCode {
		case http.StatusForbidden:
		case http.StatusTooManyRequests:
			limited++
			if ra, err := strconv.Atoi(resp.Header.Get("Retry-After")); err != nil || ra < 1 || ra > int(refusalRefill/time.Second) {
				t.Fatalf("request %d: Retry-After %q", i, resp.Header.Get("Retry-After"))
			}
			if resp.Header.Get(wire.HeaderAuditSeq) != "" {
				t.Fatalf("request %d: 429 names an audit seq", i)
			}
		default:
			t.Fatalf("request %d: status %d, want 403 or 429; body %s", i, resp.StatusCode, body)
		}
		if strings.Contains(body, "100.64.0") || strings.Contains(body, "candidates") {
			t.Fatalf("request %d: refusal holds data: %s", i, body)
		}
		c.Advance(step)
	}
	h.auditor.written.Store(false) // the flush answers no request
	h.server.flushRefusals(true)
	bound := uint64(RefusalBurst + requests*step/refusalRefill + 1)
	if n := h.log.Len(); n > bound {
		t.Errorf("log holds %d entries after %d refusals over %v, want at most %d", n, requests, requests*step, bound)
	}
	if got := h.server.Counters().RefusalsSummarised; got != uint64(limited) {
		t.Errorf("RefusalsSummarised %d, want %d (the refusals answered 429)", got, limited)
	}
	if limited < requests-int(bound) {
		t.Errorf("%d requests answered 429, want at least %d", limited, requests-int(bound))
	}
	es, err := h.log.Entries(1, int(h.log.Len()))
	if err != nil {
		t.Fatal(err)
	}
	var total uint64
	for _, e := range es {
		switch e.Action {
		case wire.ActionLookup:
			total++
		case wire.ActionRefusals:
			var n uint64
			var op string
			if _, err := fmt.Sscanf(e.Detail, "%d refused from %s", &n, &op); err != nil || op != operatorName() || n == 0 {
				t.Errorf("summary entry detail %q: %v", e.Detail, err)
			}
			total += n
		default:
			t.Errorf("entry %+v", e)
		}
		if e.Outcome != audit.OutcomeRefused || len(e.Criteria) != 0 || e.Purpose != "" {
			t.Errorf("entry %+v", e)
		}
	}
	if total != requests {
		t.Errorf("entries count %d refusals, want %d (%d entries)", total, requests, len(es))
	}
	t.Logf("%d refusals: %d entries, %d answered 429", requests, len(es), limited)
}

// TestEscapedBodyBounded sends requests whose fields are full of '<', which
// JSON escapes to six bytes each: every line the audit log writes is at
// most audit.MaxEntryBytes, and the log verifies.
func TestEscapedBodyBounded(t *testing.T) {
	h := newHarness(t, harnessOptions{roles: rootRoles(RoleInvestigator, RoleAuditor)})
	lt := func(n int) string { return strings.Repeat("<", n) }
	third := wire.MaxBodyBytes/3 - 100
	bodies := []struct{ path, body string }{
		{wire.PathLookup, `{"ip":"` + lt(third) + `","port":1,"time":"` + lt(third) + `","tolerance":"` + lt(third) + `","purpose":"p"}`},
		{wire.PathLookup, `{"ip":"198.51.100.10","port":15123,"time":"2026-11-20T12:00:01Z","purpose":"` + lt(wire.MaxBodyBytes-200) + `"}`},
		{wire.PathHistory, `{"subscriber":"` + lt(third) + `","mac":"` + lt(third) + `","from":"` + lt(third) + `","purpose":"p"}`},
		{wire.PathAudit + "?" + lt(4000) + "=" + lt(4000), ``},
	}
	for i, b := range bodies {
		method := "POST"
		if b.body == "" {
			method = "GET"
		}
		before := h.log.Len()
		resp, _ := h.raw(method, b.path, b.body)
		if resp.StatusCode != http.StatusBadRequest || h.log.Len() != before+1 {
			t.Errorf("request %d: status %d, log %d -> %d", i, resp.StatusCode, before, h.log.Len())
		}
	}
	segs, err := filepath.Glob(filepath.Join(h.logDir, "audit-*.jsonl"))
	if err != nil || len(segs) == 0 {
		t.Fatalf("segments: %v %v", segs, err)
	}
	lines := 0
	for _, seg := range segs {
		data, err := os.ReadFile(seg)
		if err != nil {
			t.Fatal(err)
		}
		for line := range strings.SplitAfterSeq(string(data), "\n") {
			if line == "" {
				continue
			}
			lines++
			if len(line) > audit.MaxEntryBytes {
				t.Errorf("%s: a line of %d bytes, over MaxEntryBytes %d", filepath.Base(seg), len(line), audit.MaxEntryBytes)
			}
		}
	}
	if lines != len(bodies) {
		t.Errorf("%d lines, want %d", lines, len(bodies))
	}
	if r, err := h.log.Verify(); err != nil || !r.OK() {
		t.Errorf("verify: %v %+v", err, r.Problems)
	}
}
