package api

import (
	"bufio"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/blocknat/blocknat/userspace/audit"
	"github.com/blocknat/blocknat/userspace/logattr"
	"github.com/blocknat/blocknat/userspace/store"
	"github.com/blocknat/blocknat/userspace/wire"
)

func (s *Server) parseLookup(r *http.Request, rep *reply) (func(*reply) *failure, *failure) {
	var req wire.LookupRequest
	if f := decodeBody(r, &req, false); f != nil {
		return nil, f
	}
	setCriterion(rep, "ip", req.IP)
	if req.Port != 0 {
		rep.criteria["port"] = strconv.Itoa(int(req.Port))
	}
	setCriterion(rep, "time", req.Time)
	setCriterion(rep, "tolerance", req.Tolerance)
	rep.purpose = clipPurpose(req.Purpose)

	ip, err := netip.ParseAddr(req.IP)
	if err != nil || !ip.Unmap().Is4() {
		return nil, malformed(http.StatusBadRequest, "ip: %q is not an IPv4 address", req.IP)
	}
	ip = ip.Unmap()
	if req.Port == 0 {
		return nil, malformed(http.StatusBadRequest, "port: missing or 0; give the public source port, 1-65535")
	}
	t, precision, f := parseStatedTime("time", req.Time)
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
		case tolerance > wire.MaxTolerance:
			return nil, malformed(http.StatusBadRequest, "tolerance: %s is more than the maximum %s", req.Tolerance, wire.MaxTolerance)
		}
	}
	if f := needPurpose(req.Purpose); f != nil {
		return nil, f
	}
	return func(rep *reply) *failure {
		// The searched interval is half-open, [from, to); the store's
		// intervals are closed, so its upper bound is the last nanosecond.
		from, to := t.Add(-tolerance), t.Add(precision+tolerance)
		recs, err := s.store.LookupInterval(ip, req.Port, from, to.Add(-time.Nanosecond))
		if err != nil {
			return fromStore("store lookup", err)
		}
		cands, _, f := s.candidates(recs)
		if f != nil {
			return f
		}
		for i := range cands {
			cands[i].Coverage = coverageOf(cands[i], from, to)
			lo, hi := clipInterval(cands[i].Start, cands[i].End, from, to)
			if f := s.resolveLeases(&cands[i], lo, hi, hi.Equal(to)); f != nil {
				return f
			}
		}
		owners, f := s.owners(ip, req.Port, from, to, cands)
		if f != nil {
			return f
		}
		rep.detail = plural(len(cands), "candidate")
		rep.outcome = outcomeOf(len(cands))
		rep.subjects = subjectsOf(cands, nil)
		for _, o := range owners {
			if o.Mapped {
				rep.subjects = append(rep.subjects, subjectInside(o.Inside))
			}
		}
		query := wire.LookupQuery{
			IP: ip, Port: req.Port, Time: t.UTC(), Precision: precision.String(), Tolerance: tolerance.String(),
			From: from.UTC(), To: to.UTC(),
		}
		ans := wire.LookupResponse{Query: query, Candidates: cands, Owners: owners}
		if s.clock != nil {
			// Read as the answer is given, so it states the clock the
			// answer's own times (the audit entry's) rest on.
			ans.Clock = s.clock()
		}
		return rep.setDocument(ans)
	}, nil
}

func (s *Server) parseHistory(r *http.Request, rep *reply) (func(*reply) *failure, *failure) {
	var req wire.HistoryRequest
	if f := decodeBody(r, &req, false); f != nil {
		return nil, f
	}
	setCriterion(rep, "subscriber", req.Subscriber)
	setCriterion(rep, "mac", req.MAC)
	setCriterion(rep, "from", req.From)
	setCriterion(rep, "to", req.To)
	rep.purpose = clipPurpose(req.Purpose)

	sel, f := parseSelector(req.Subscriber, req.MAC, true)
	if f != nil {
		return nil, f
	}
	from, to, f := parseRange(req.From, req.To)
	if f != nil {
		return nil, f
	}
	if f := needPurpose(req.Purpose); f != nil {
		return nil, f
	}
	return func(rep *reply) *failure {
		sels, leases, f := s.selectRecords(sel, from, to)
		if f != nil {
			return f
		}
		recs := make([]store.Record, len(sels))
		for i, x := range sels {
			recs[i] = x.rec
		}
		cands, groups, f := s.candidates(recs)
		if f != nil {
			return f
		}
		for i := range cands {
			// A fleet's merged candidate is resolved over the span of
			// its records.
			lo, hi := sels[groups[i][0]].lo, sels[groups[i][0]].hi
			for _, j := range groups[i][1:] {
				lo, hi = minTime(lo, sels[j].lo), maxTime(hi, sels[j].hi)
			}
			if f := s.resolveLeases(&cands[i], lo, hi, false); f != nil {
				return f
			}
		}
		rep.detail = plural(len(cands), "record")
		rep.outcome = outcomeOf(len(cands))
		rep.subjects = subjectsOf(cands, leases)
		query := wire.HistoryQuery{Subscriber: sel.inside, From: from.UTC(), To: to.UTC()}
		if sel.mac != nil {
			query.MAC = sel.mac.String()
			rep.subjects = append(rep.subjects, subjectMAC(sel.mac))
		} else {
			rep.subjects = append(rep.subjects, subjectInside(sel.inside))
		}
		ans := wire.HistoryResponse{Query: query, Records: cands, Leases: leases}
		if s.clock != nil {
			ans.Clock = s.clock() // as for a lookup
		}
		return rep.setDocument(ans)
	}, nil
}

// candidates turns records into an answer's candidates, each with the
// epoch in force at its start: one a record on a router, one a subscriber
// and block in a fleet (groupRecords), whose groups are returned as
// indices into recs.
func (s *Server) candidates(recs []store.Record) ([]wire.Record, [][]int, *failure) {
	groups := groupRecords(recs)
	out := make([]wire.Record, 0, len(groups))
	for _, g := range groups {
		members := make([]store.Record, len(g))
		for i, j := range g {
			members[i] = recs[j]
		}
		rec := members[0]
		c := mergedRecord(members)
		e, err := s.epochAt(rec)
		switch {
		case errors.Is(err, store.ErrNotFound):
			// Shown as unknown rather than failing: the record itself is
			// still the answer.
		case err != nil:
			return nil, nil, internal("store epoch at %s: %v", rec.Start.UTC().Format(time.RFC3339Nano), err)
		default:
			c.EpochInForce = epochSummaryOf(e)
		}
		out = append(out, c)
	}
	return out, groups, nil
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
	var req wire.ExportRequest
	if f := decodeBody(r, &req, false); f != nil {
		return nil, f
	}
	setCriterion(rep, "from", req.From)
	setCriterion(rep, "to", req.To)
	setCriterion(rep, "format", req.Format)
	setCriterion(rep, "subscriber", req.Subscriber)
	setCriterion(rep, "mac", req.MAC)
	rep.purpose = clipPurpose(req.Purpose)

	from, to, f := parseRange(req.From, req.To)
	if f != nil {
		return nil, f
	}
	if req.Format != wire.FormatCSV && req.Format != wire.FormatJSONL {
		return nil, malformed(http.StatusBadRequest, "format: %q is not %s or %s", req.Format, wire.FormatCSV, wire.FormatJSONL)
	}
	sel, f := parseSelector(req.Subscriber, req.MAC, false)
	if f != nil {
		return nil, f
	}
	if f := needPurpose(req.Purpose); f != nil {
		return nil, f
	}
	return func(rep *reply) *failure {
		if sel.any() {
			return s.exportSelected(rep, sel, from, to, req.Format)
		}
		// Count first, so that the count and the subjects it names are
		// audited before any record leaves; the stream then reads the
		// store a second time.
		var count int64
		subjects := map[string]struct{}{}
		err := s.store.ExportWithLeases(from, to, func(rec store.Record, leases []store.Lease) error {
			count++
			subjects[subjectInside(rec.Inside)] = struct{}{}
			for _, l := range leases {
				subjects[subjectMAC(l.MAC)] = struct{}{}
			}
			return nil
		})
		if err != nil {
			return fromStore("store export (count)", err)
		}
		for subj := range subjects {
			rep.subjects = append(rep.subjects, subj)
		}
		rep.detail = fmt.Sprintf("%s as %s", plural(int(count), "record"), req.Format)
		rep.outcome = outcomeOf(int(count))
		rep.stream = func(w http.ResponseWriter, seq uint64) {
			s.streamExport(w, seq, req.Format, count, func(fn func(wire.Record) error) error {
				return s.store.ExportWithLeases(from, to, func(rec store.Record, leases []store.Lease) error {
					lo, hi := clipInterval(rec.Start, endOf(rec), from, to)
					return fn(recordOf(rec, leaseInfos(leases, lo, hi)))
				})
			})
		}
		return nil
	}, nil
}

// exportSelected answers an export narrowed to one subscriber or device. It
// is small enough to hold, so its subjects are audited like a history's.
func (s *Server) exportSelected(rep *reply, sel selector, from, to time.Time, format string) *failure {
	sels, leases, f := s.selectRecords(sel, from, to)
	if f != nil {
		return f
	}
	recs := make([]wire.Record, 0, len(sels))
	for _, x := range sels {
		ls, err := s.store.LeasesOf(x.rec.Inside, x.lo, x.hi)
		if err != nil {
			return fromStore("store leases of "+x.rec.Inside.String(), err)
		}
		recs = append(recs, recordOf(x.rec, leaseInfos(ls, x.lo, x.hi)))
	}
	rep.subjects = subjectsOf(recs, leases)
	if sel.mac != nil {
		rep.subjects = append(rep.subjects, subjectMAC(sel.mac))
	} else {
		rep.subjects = append(rep.subjects, subjectInside(sel.inside))
	}
	count := int64(len(recs))
	rep.detail = fmt.Sprintf("%s as %s", plural(int(count), "record"), format)
	rep.outcome = outcomeOf(int(count))
	rep.stream = func(w http.ResponseWriter, seq uint64) {
		s.streamExport(w, seq, format, count, func(fn func(wire.Record) error) error {
			for _, r := range recs {
				if err := fn(r); err != nil {
					return err
				}
			}
			return nil
		})
	}
	return nil
}

// streamExport writes the records each yields. The store may change between
// the count and the stream (a retention sweep, a block activated inside the
// range); a stream that does not hold exactly the announced records is cut
// off, and only a complete one ends with the trailer wire.TrailerRecordsWritten.
func (s *Server) streamExport(w http.ResponseWriter, seq uint64, format string, count int64, each func(fn func(wire.Record) error) error) {
	h := w.Header()
	if format == wire.FormatCSV {
		h.Set("Content-Type", "text/csv; charset=utf-8")
	} else {
		h.Set("Content-Type", "application/jsonl")
	}
	h.Set(wire.HeaderRecords, strconv.FormatInt(count, 10))
	h.Set("Trailer", wire.TrailerRecordsWritten)
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	// The count goes out at once, so that a client can show progress
	// against it from the first record.
	rc.Flush()
	bw := bufio.NewWriterSize(w, 64<<10)
	var csvw *csv.Writer
	var enc *json.Encoder
	fleet := s.fleet()
	if format == wire.FormatCSV {
		csvw = csv.NewWriter(bw)
		if fleet {
			csvw.Write(wire.CSVHeaderFleet)
		} else {
			csvw.Write(wire.CSVHeader)
		}
	} else {
		enc = json.NewEncoder(bw)
	}
	var written int64
	// The store holds a read view open while fn runs, so a client that
	// stops reading must not hold it for long: each stretch of records
	// gets exportWriteTimeout to leave.
	err := each(func(rec wire.Record) error {
		if written%1000 == 0 {
			rc.SetWriteDeadline(time.Now().Add(exportWriteTimeout))
		}
		if written == count {
			return errExportChanged
		}
		written++
		if csvw != nil {
			row := csvRow(rec)
			if fleet {
				row = append(row, rec.Router)
			}
			csvw.Write(row)
			return csvw.Error()
		}
		return enc.Encode(rec)
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
	h.Set(wire.TrailerRecordsWritten, strconv.FormatInt(written, 10))
}

func csvRow(r wire.Record) []string {
	end := ""
	if r.End != nil {
		end = r.End.UTC().Format(time.RFC3339Nano)
	}
	macs := make([]string, 0, len(r.Leases))
	for _, l := range r.Leases {
		if !slices.Contains(macs, l.MAC) {
			macs = append(macs, l.MAC)
		}
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
		strings.Join(r.Flags, "|"),
		strings.Join(macs, "|"),
	}
}
