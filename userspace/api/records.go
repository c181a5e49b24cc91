package api

import (
	"bufio"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/blocknat/blocknat/userspace/audit"
	"github.com/blocknat/blocknat/userspace/logattr"
	"github.com/blocknat/blocknat/userspace/store"
)

func (s *Server) parseLookup(r *http.Request, rep *reply) (func(*reply) *failure, *failure) {
	var req LookupRequest
	if f := decodeBody(r, &req, false); f != nil {
		return nil, f
	}
	setCriterion(rep, "ip", req.IP)
	if req.Port != 0 {
		rep.criteria["port"] = strconv.Itoa(int(req.Port))
	}
	setCriterion(rep, "time", req.Time)
	setCriterion(rep, "tolerance", req.Tolerance)
	rep.purpose = req.Purpose

	ip, err := netip.ParseAddr(req.IP)
	if err != nil || !ip.Unmap().Is4() {
		return nil, malformed(http.StatusBadRequest, "ip: %q is not an IPv4 address", req.IP)
	}
	ip = ip.Unmap()
	if req.Port == 0 {
		return nil, malformed(http.StatusBadRequest, "port: missing or 0; give the public source port, 1-65535")
	}
	t, f := parseTime("time", req.Time)
	if f != nil {
		return nil, f
	}
	var tolerance time.Duration
	if req.Tolerance != "" {
		tolerance, err = time.ParseDuration(req.Tolerance)
		switch {
		case err != nil:
			return nil, malformed(http.StatusBadRequest, "tolerance: %q is not a duration such as 2s or 500ms", req.Tolerance)
		case tolerance < 0:
			return nil, malformed(http.StatusBadRequest, "tolerance: %s is negative", req.Tolerance)
		case tolerance > MaxTolerance:
			return nil, malformed(http.StatusBadRequest, "tolerance: %s is more than the maximum %s", req.Tolerance, MaxTolerance)
		}
	}
	if f := needPurpose(req.Purpose); f != nil {
		return nil, f
	}
	return func(rep *reply) *failure {
		recs, err := s.store.Lookup(ip, req.Port, t, tolerance)
		if err != nil {
			return fromStore("store lookup", err)
		}
		cands, f := s.candidates(recs)
		if f != nil {
			return f
		}
		rep.detail = plural(len(cands), "candidate")
		rep.outcome = outcomeOf(len(cands))
		query := LookupQuery{
			IP: ip, Port: req.Port, Time: t.UTC(), Tolerance: tolerance.String(),
			From: t.Add(-tolerance).UTC(), To: t.Add(tolerance).UTC(),
		}
		rep.answer = func(seq uint64) any {
			return LookupResponse{AuditSeq: seq, Query: query, Candidates: cands}
		}
		return nil
	}, nil
}

func (s *Server) parseHistory(r *http.Request, rep *reply) (func(*reply) *failure, *failure) {
	var req HistoryRequest
	if f := decodeBody(r, &req, false); f != nil {
		return nil, f
	}
	setCriterion(rep, "subscriber", req.Subscriber)
	setCriterion(rep, "from", req.From)
	setCriterion(rep, "to", req.To)
	rep.purpose = req.Purpose

	inside, err := netip.ParseAddr(req.Subscriber)
	if err != nil || !inside.Unmap().Is4() {
		return nil, malformed(http.StatusBadRequest, "subscriber: %q is not an inside IPv4 address", req.Subscriber)
	}
	inside = inside.Unmap()
	from, to, f := parseRange(req.From, req.To)
	if f != nil {
		return nil, f
	}
	if f := needPurpose(req.Purpose); f != nil {
		return nil, f
	}
	return func(rep *reply) *failure {
		recs, err := s.store.History(inside, from, to)
		if err != nil {
			return fromStore("store history", err)
		}
		cands, f := s.candidates(recs)
		if f != nil {
			return f
		}
		rep.detail = plural(len(cands), "record")
		rep.outcome = outcomeOf(len(cands))
		query := HistoryQuery{Subscriber: inside, From: from.UTC(), To: to.UTC()}
		rep.answer = func(seq uint64) any {
			return HistoryResponse{AuditSeq: seq, Query: query, Records: cands}
		}
		return nil
	}, nil
}

// candidates adds to each record the epoch in force at its start.
func (s *Server) candidates(recs []store.Record) ([]Candidate, *failure) {
	out := make([]Candidate, 0, len(recs))
	for _, rec := range recs {
		c := candidateOf(rec)
		e, err := s.store.EpochAt(rec.Start)
		switch {
		case errors.Is(err, store.ErrNotFound):
			// Shown as unknown rather than failing: the record itself is
			// still the answer.
		case err != nil:
			return nil, internal("store epoch at %s: %v", rec.Start.UTC().Format(time.RFC3339Nano), err)
		default:
			c.EpochInForce = epochSummaryOf(e)
		}
		out = append(out, c)
	}
	return out, nil
}

func outcomeOf(n int) audit.Outcome {
	if n == 0 {
		return audit.OutcomeEmpty
	}
	return audit.OutcomeAnswered
}

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return strconv.Itoa(n) + " " + noun + "s"
}

// errExportChanged stops an export whose second pass finds more records
// than the first counted.
var errExportChanged = errors.New("export: more records than announced")

func (s *Server) parseExport(r *http.Request, rep *reply) (func(*reply) *failure, *failure) {
	var req ExportRequest
	if f := decodeBody(r, &req, false); f != nil {
		return nil, f
	}
	setCriterion(rep, "from", req.From)
	setCriterion(rep, "to", req.To)
	setCriterion(rep, "format", req.Format)
	rep.purpose = req.Purpose

	from, to, f := parseRange(req.From, req.To)
	if f != nil {
		return nil, f
	}
	if req.Format != FormatCSV && req.Format != FormatJSONL {
		return nil, malformed(http.StatusBadRequest, "format: %q is not %s or %s", req.Format, FormatCSV, FormatJSONL)
	}
	if f := needPurpose(req.Purpose); f != nil {
		return nil, f
	}
	return func(rep *reply) *failure {
		// Count first, so that the count is audited before any record
		// leaves; the stream then reads the store a second time.
		var count int64
		if err := s.store.Export(from, to, func(store.Record) error { count++; return nil }); err != nil {
			return fromStore("store export (count)", err)
		}
		rep.detail = fmt.Sprintf("%s as %s", plural(int(count), "record"), req.Format)
		rep.outcome = outcomeOf(int(count))
		rep.stream = func(w http.ResponseWriter, seq uint64) {
			s.streamExport(w, from, to, req.Format, count, seq)
		}
		return nil
	}, nil
}

// streamExport writes the records of [from, to]. The store may change
// between the count and the stream (a retention sweep, a block activated
// inside the range); a stream that does not hold exactly the announced
// records is cut off, and only a complete one ends with the trailer
// TrailerRecordsWritten.
func (s *Server) streamExport(w http.ResponseWriter, from, to time.Time, format string, count int64, seq uint64) {
	h := w.Header()
	if format == FormatCSV {
		h.Set("Content-Type", "text/csv; charset=utf-8")
	} else {
		h.Set("Content-Type", "application/jsonl")
	}
	h.Set(HeaderRecords, strconv.FormatInt(count, 10))
	h.Set("Trailer", TrailerRecordsWritten)
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	// The count goes out at once, so that a client can show progress
	// against it from the first record.
	rc.Flush()
	bw := bufio.NewWriterSize(w, 64<<10)
	var csvw *csv.Writer
	var enc *json.Encoder
	if format == FormatCSV {
		csvw = csv.NewWriter(bw)
		csvw.Write(CSVHeader)
	} else {
		enc = json.NewEncoder(bw)
	}
	var written int64
	// The store holds a read view open while fn runs, so a client that
	// stops reading must not hold it for long: each stretch of records
	// gets exportWriteTimeout to leave.
	err := s.store.Export(from, to, func(rec store.Record) error {
		if written%1000 == 0 {
			rc.SetWriteDeadline(time.Now().Add(exportWriteTimeout))
		}
		if written == count {
			return errExportChanged
		}
		written++
		if csvw != nil {
			csvw.Write(csvRow(rec))
			return csvw.Error()
		}
		return enc.Encode(exportRecordOf(rec))
	})
	if csvw != nil && err == nil {
		csvw.Flush()
		err = csvw.Error()
	}
	if err == nil {
		err = bw.Flush()
	}
	if err == nil && written != count {
		err = fmt.Errorf("%d records announced, %d found", count, written)
	}
	if err != nil {
		// Cutting the connection leaves the chunked body without its end
		// and without the trailer, so no client can take it for complete.
		s.log.Warn("export stream incomplete; connection cut", logKeyAuditSeq, seq, logattr.Count, written, logattr.Err, err)
		panic(http.ErrAbortHandler)
	}
	h.Set(TrailerRecordsWritten, strconv.FormatInt(written, 10))
}

func csvRow(r store.Record) []string {
	end := ""
	if !r.Open() {
		end = r.End.UTC().Format(time.RFC3339Nano)
	}
	return []string{
		strconv.FormatUint(uint64(r.Subscriber), 10),
		r.Inside.String(),
		r.Public.String(),
		strconv.Itoa(int(r.PortLo)),
		strconv.Itoa(int(r.PortHi)),
		r.Start.UTC().Format(time.RFC3339Nano),
		end,
		strconv.FormatUint(uint64(r.Epoch), 10),
		strings.Join(flagNames(r.Flags), "|"),
	}
}
