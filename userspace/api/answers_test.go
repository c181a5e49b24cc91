package api

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/blocknat/blocknat/userspace/api/client"
	"github.com/blocknat/blocknat/userspace/audit"
	"github.com/blocknat/blocknat/userspace/store"
	"github.com/blocknat/blocknat/userspace/wire"
)

func TestLookupAnswer(t *testing.T) {
	h := newHarness(t, harnessOptions{roles: rootRoles(RoleInvestigator)})
	ctx := context.Background()

	// 13:00:01+01:00 is the same instant as 12:00:01Z; the whole second
	// widened by ±2s reaches back into A's interval and forward into B's.
	ans, err := h.client.Lookup(ctx, wire.LookupRequest{IP: "198.51.100.10", Port: 15123, Time: "2026-11-20T13:00:01+01:00", Tolerance: "2s", Purpose: "case 1"})
	if err != nil {
		t.Fatalf("Lookup: %v", err)
	}
	if ans.AuditSeq != h.log.Len() {
		t.Errorf("audit_seq %d, log length %d", ans.AuditSeq, h.log.Len())
	}
	q := ans.Query
	if !q.Time.Equal(mustTime(t, "2026-11-20T12:00:01Z")) || q.Time.Location() != time.UTC ||
		!q.From.Equal(mustTime(t, "2026-11-20T11:59:59Z")) || !q.To.Equal(mustTime(t, "2026-11-20T12:00:04Z")) || q.Tolerance != "2s" ||
		q.Precision != "1s" {
		t.Errorf("query %+v", q)
	}
	if len(ans.Candidates) != 2 {
		t.Fatalf("%d candidates, want 2: %+v", len(ans.Candidates), ans.Candidates)
	}
	a, b := ans.Candidates[0], ans.Candidates[1]
	if a.Subscriber != 27 || a.Inside != fixtureA.Inside || a.Public != fixturePublic || a.PortLo != 14632 || a.PortHi != 15135 ||
		!a.Start.Equal(mustTime(t, "2026-11-20T11:58:40.120Z")) || a.End == nil || !a.End.Equal(mustTime(t, "2026-11-20T12:00:00.5Z")) ||
		a.Epoch != 1 || len(a.Flags) != 0 {
		t.Errorf("candidate A %+v", a)
	}
	if a.EpochInForce == nil || a.EpochInForce.ID != 1 || !a.EpochInForce.Start.Equal(mustTime(t, "2026-11-01T00:00:00Z")) ||
		a.EpochInForce.BlockSize != 504 || a.EpochInForce.Ratio != 128 || len(a.EpochInForce.Hash) != 64 {
		t.Errorf("candidate A epoch %+v", a.EpochInForce)
	}
	if b.Subscriber != 40 || b.End != nil || b.Epoch != 2 || !slices.Equal(b.Flags, []string{wire.FlagRecovered}) ||
		b.EpochInForce == nil || b.EpochInForce.ID != 2 || b.EpochInForce.BlockSize != 500 {
		t.Errorf("candidate B %+v (epoch %+v)", b, b.EpochInForce)
	}

	// The open record is JSON null, not a zero time.
	resp, body := h.raw("POST", wire.PathLookup, `{"ip":"198.51.100.10","port":15300,"time":"2026-11-20T12:10:00Z","purpose":"case 1"}`)
	if resp.StatusCode != 200 || !strings.Contains(body, `"end":null`) || !strings.Contains(body, `"flags":["recovered"]`) {
		t.Errorf("open record answer %d %s", resp.StatusCode, body)
	}
	// A port outside every block at that address.
	ans, err = h.client.Lookup(ctx, wire.LookupRequest{IP: "198.51.100.10", Port: 2000, Time: "2026-11-20T12:10:00Z", Purpose: "case 1"})
	if err != nil || len(ans.Candidates) != 0 || ans.Candidates == nil {
		t.Errorf("lookup of an unused port: %+v, %v", ans, err)
	}
}

func TestHistoryAnswer(t *testing.T) {
	h := newHarness(t, harnessOptions{roles: rootRoles(RoleInvestigator)})
	ctx := context.Background()
	for _, tc := range []struct {
		inside string
		sub    uint32
		open   bool
	}{{"100.64.0.27", 27, false}, {"100.64.0.40", 40, true}} {
		ans, err := h.client.History(ctx, wire.HistoryRequest{Subscriber: tc.inside, From: "2026-11-20T00:00:00Z", To: "2026-11-20T23:59:59Z", Purpose: "case 2"})
		if err != nil {
			t.Fatalf("History %s: %v", tc.inside, err)
		}
		if len(ans.Records) != 1 || ans.Records[0].Subscriber != tc.sub || (ans.Records[0].End == nil) != tc.open {
			t.Errorf("history %s: %+v", tc.inside, ans.Records)
		}
		if ans.Query.Subscriber.String() != tc.inside || ans.AuditSeq != h.log.Len() {
			t.Errorf("history %s: query %+v seq %d", tc.inside, ans.Query, ans.AuditSeq)
		}
	}
}

// storeRecords is what the store itself exports, the reference for the API.
func storeRecords(t *testing.T, st Store, from, to string) []store.Record {
	t.Helper()
	var out []store.Record
	if err := st.Export(mustTime(t, from), mustTime(t, to), func(r store.Record) error { out = append(out, r); return nil }); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestExport(t *testing.T) {
	h := newHarness(t, harnessOptions{roles: rootRoles(RoleInvestigator)})
	ctx := context.Background()
	const from, to = "2026-11-19T00:00:00Z", "2026-11-21T00:00:00Z"
	want := storeRecords(t, h.store, from, to)
	if len(want) != 2 {
		t.Fatalf("fixture exports %d records, want 2", len(want))
	}

	t.Run("csv", func(t *testing.T) {
		var buf bytes.Buffer
		var calls [][2]int64
		res, err := h.client.Export(ctx, wire.ExportRequest{From: from, To: to, Format: wire.FormatCSV, Purpose: "order 1"}, &buf,
			func(done, total int64) { calls = append(calls, [2]int64{done, total}) })
		if err != nil {
			t.Fatalf("Export: %v", err)
		}
		if res.Records != 2 || res.Bytes != int64(buf.Len()) || res.AuditSeq != h.log.Len() {
			t.Errorf("result %+v, buffer %d bytes, log %d", res, buf.Len(), h.log.Len())
		}
		if len(calls) == 0 || calls[len(calls)-1] != [2]int64{2, 2} || calls[0][1] != 2 {
			t.Errorf("progress calls %v", calls)
		}
		rows, err := csv.NewReader(&buf).ReadAll()
		if err != nil {
			t.Fatalf("csv: %v", err)
		}
		if len(rows) != 3 || !slices.Equal(rows[0], wire.CSVHeader) {
			t.Fatalf("rows %v", rows)
		}
		for i, r := range want {
			if want := csvRow(recordOf(r, nil)); !slices.Equal(rows[i+1], want) {
				t.Errorf("row %d = %v, want %v", i+1, rows[i+1], want)
			}
		}
		if rows[1][6] == "" || rows[2][6] != "" || rows[2][8] != wire.FlagRecovered {
			t.Errorf("end/flags columns: %v", rows[1:])
		}
		e := h.lastEntry()
		if e.Action != wire.ActionExport || e.Outcome != audit.OutcomeAnswered || e.Detail != "2 records as csv" {
			t.Errorf("entry %+v", e)
		}
	})
	t.Run("jsonl", func(t *testing.T) {
		var buf bytes.Buffer
		if _, err := h.client.Export(ctx, wire.ExportRequest{From: from, To: to, Format: wire.FormatJSONL, Purpose: "order 1"}, &buf, nil); err != nil {
			t.Fatalf("Export: %v", err)
		}
		lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
		if len(lines) != len(want) {
			t.Fatalf("%d lines, want %d: %q", len(lines), len(want), buf.String())
		}
		for i, line := range lines {
			var got wire.Record
			dec := json.NewDecoder(strings.NewReader(line))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&got); err != nil {
				t.Fatalf("line %d: %v", i, err)
			}
			w := recordOf(want[i], nil)
			if got.Subscriber != w.Subscriber || got.Inside != w.Inside || !got.Start.Equal(w.Start) || (got.End == nil) != (w.End == nil) ||
				got.Epoch != w.Epoch || !slices.Equal(got.Flags, w.Flags) {
				t.Errorf("line %d = %+v, want %+v", i, got, w)
			}
		}
	})
	t.Run("empty", func(t *testing.T) {
		var buf bytes.Buffer
		res, err := h.client.Export(ctx, wire.ExportRequest{From: "2025-01-01T00:00:00Z", To: "2025-01-02T00:00:00Z", Format: wire.FormatCSV, Purpose: "order 1"}, &buf, nil)
		if err != nil || res.Records != 0 || buf.String() != strings.Join(wire.CSVHeader, ",")+"\n" {
			t.Errorf("empty export: %+v %v %q", res, err, buf.String())
		}
		if e := h.lastEntry(); e.Outcome != audit.OutcomeEmpty {
			t.Errorf("entry %+v", e)
		}
	})
}

// shiftingStore exports a different number of records on its second pass,
// as when the store changes between the count and the stream.
type shiftingStore struct {
	Store
	delta int // records added (>0) or dropped (<0) on every pass after the first
	calls int
}

func (s *shiftingStore) ExportWithLeases(from, to time.Time, fn func(store.Record, []store.Lease) error) error {
	s.calls++
	var recs []store.Record
	if err := s.Store.Export(from, to, func(r store.Record) error { recs = append(recs, r); return nil }); err != nil {
		return err
	}
	if s.calls > 1 {
		if s.delta > 0 {
			extra := recs[len(recs)-1]
			extra.Subscriber = 99
			recs = append(recs, extra)
		} else {
			recs = recs[:len(recs)+s.delta]
		}
	}
	for _, r := range recs {
		if err := fn(r, nil); err != nil {
			return err
		}
	}
	return nil
}

func TestExportChangedBetweenCountAndStream(t *testing.T) {
	for _, delta := range []int{+1, -1} {
		t.Run(strconv.Itoa(delta), func(t *testing.T) {
			shifting := &shiftingStore{Store: openFixtureStore(t), delta: delta}
			h := newHarness(t, harnessOptions{roles: rootRoles(RoleInvestigator), store: shifting})
			var buf bytes.Buffer
			_, err := h.client.Export(context.Background(),
				wire.ExportRequest{From: "2026-11-19T00:00:00Z", To: "2026-11-21T00:00:00Z", Format: wire.FormatJSONL, Purpose: "p"}, &buf, nil)
			if err == nil {
				t.Fatalf("export that changed by %d records succeeded: %q", delta, buf.String())
			}
			t.Logf("export error: %v", err)
			if strings.Contains(buf.String(), `"subscriber":99`) {
				t.Errorf("a record beyond the announced count was sent: %q", buf.String())
			}
			if e := h.lastEntry(); e.Detail != "2 records as jsonl" {
				t.Errorf("entry %+v", e)
			}
		})
	}
}

func TestParseTime(t *testing.T) {
	for _, ok := range []string{"2026-11-20T12:00:01Z", "2026-11-20T12:00:01.123456789Z", "2026-11-20T13:00:01+01:00", "2026-11-20T07:00:01-05:00"} {
		if got, f := parseTime("time", ok); f != nil || !got.Equal(mustTime(t, ok)) {
			t.Errorf("parseTime(%q) = %v, %v", ok, got, f)
		}
	}
	for in, want := range map[string]string{
		"":                        "missing",
		"2026-11-20T12:00:01":     "has no time zone",
		"2026-11-20T12:00:01.5":   "has no time zone",
		"2026-11-20":              "is a date",
		"2026-11-20 12:00:01Z":    "not an RFC 3339 time",
		"20 Nov 2026 12:00 UTC":   "not an RFC 3339 time",
		"2026-11-20T12:00:01+01":  "not an RFC 3339 time",
		"2026-11-20T25:00:01Z":    "not an RFC 3339 time",
		"1763640001":              "not an RFC 3339 time",
		"2026-11-20T12:00:01 UTC": "not an RFC 3339 time",
	} {
		_, f := parseTime("time", in)
		if f == nil || f.outcome != audit.OutcomeMalformed || !strings.Contains(f.msg, want) {
			t.Errorf("parseTime(%q) = %v, want malformed %q", in, f, want)
		}
	}
}

func TestClientErrorMessage(t *testing.T) {
	h := newHarness(t, harnessOptions{roles: rootRoles(RoleInvestigator)})
	_, err := h.client.Lookup(context.Background(), wire.LookupRequest{IP: "198.51.100.10", Port: 15123, Time: "2026-11-20T12:00:01", Purpose: "p"})
	var apiErr *client.Error
	if !errors.As(err, &apiErr) {
		t.Fatalf("error %v is not *client.Error", err)
	}
	if want := "malformed: time: \"2026-11-20T12:00:01\" has no time zone"; !strings.HasPrefix(err.Error(), want) ||
		!strings.HasSuffix(err.Error(), "(audit entry 1)") {
		t.Errorf("error %q, want %q … (audit entry 1)", err, want)
	}
}
