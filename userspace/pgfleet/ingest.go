package pgfleet

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/blocknat/blocknat/userspace/audit"
	"github.com/blocknat/blocknat/userspace/store"
)

// Stream names, as the progress table and errors spell them.
const (
	StreamStore = "store"
	StreamAudit = "audit"
)

// Progress is the highest seq of each of a router's streams the database
// holds with none missing before it.
type Progress struct{ Store, Audit uint64 }

// GapError says a batch began after Have+1: the events between are
// missing, and nothing of the batch was stored.
type GapError struct {
	Router, Stream string
	Have, Got      uint64
}

func (e *GapError) Error() string {
	return fmt.Sprintf("router %s stream %s: the database holds seq %d, the batch continues at %d: seq %d to %d are missing",
		e.Router, e.Stream, e.Have, e.Got, e.Have+1, e.Got-1)
}

// gapCode is the SQLSTATE the ingest functions raise for a gap; its
// detail is "have got".
const gapCode = "BNGAP"

// maxRouterBytes bounds a router name, as blocknat.check_router does.
const maxRouterBytes = 128

func checkRouter(router string) error {
	if router == "" || len(router) > maxRouterBytes || !utf8.ValidString(router) || strings.ContainsRune(router, 0) {
		return fmt.Errorf("router %q: must be 1 to %d bytes of UTF-8 without NUL", router, maxRouterBytes)
	}
	return nil
}

// Progress returns where router's streams stand.
func (db *DB) Progress(ctx context.Context, router string) (Progress, error) {
	if err := checkRouter(router); err != nil {
		return Progress{}, err
	}
	var st, au int64
	if err := db.pool.QueryRow(ctx, "SELECT store_seq, audit_seq FROM blocknat.progress($1)", router).Scan(&st, &au); err != nil {
		return Progress{}, fmt.Errorf("progress of router %s in %s: %w", router, db.target, err)
	}
	return Progress{Store: uint64(st), Audit: uint64(au)}, nil
}

// The JSON of one outbox event, as blocknat.ingest reads it. Byte fields
// are hex: JSON strings must be Unicode, and a DHCP hostname need not be.
type wireEvent struct {
	Seq   uint64      `json:"seq"`
	Kind  uint8       `json:"k"`
	Rec   *wireRecord `json:"r,omitempty"`
	Lease *wireLease  `json:"l,omitempty"`
	Epoch *wireEpoch  `json:"ep,omitempty"`
}

type wireRecord struct {
	Subscriber uint32 `json:"sub"`
	Inside     string `json:"in"`
	Public     string `json:"pub"`
	PortLo     uint16 `json:"lo"`
	PortHi     uint16 `json:"hi"`
	StartMS    int64  `json:"s"`
	EndMS      int64  `json:"e"` // 0 while open
	Epoch      uint32 `json:"ep"`
	Flags      uint32 `json:"fl"`
}

type wireLease struct {
	Inside   string `json:"in"`
	MAC      string `json:"mac"`
	ClientID string `json:"cid"`
	Hostname string `json:"host"`
	Source   string `json:"src"`
	StartNS  int64  `json:"s"`
	EndNS    int64  `json:"e"` // 0: infinite
}

type wireEpoch struct {
	ID         uint32     `json:"id"`
	StartNS    int64      `json:"s"`
	RecordedNS int64      `json:"rec"`
	Prefixes   []string   `json:"pfx"`
	Pool       []string   `json:"pool"`
	PortLo     uint16     `json:"plo"`
	PortHi     uint16     `json:"phi"`
	BlockSize  uint16     `json:"bs"`
	Ratio      uint32     `json:"ratio"`
	Hash       string     `json:"hash"`
	Clock      *wireClock `json:"clock"`
}

type wireClock struct {
	Unreadable   bool  `json:"unreadable"`
	Synchronised bool  `json:"synchronised"`
	EstErrorUS   int64 `json:"est_error_us"`
	MaxErrorUS   int64 `json:"max_error_us"`
	ReadAtNS     int64 `json:"read_at_ns"`
}

func unixNS(t time.Time, field string) (int64, error) {
	if t.IsZero() || t.Before(time.Unix(0, 0)) {
		return 0, fmt.Errorf("%s: %s is missing or before 1970", field, t.UTC().Format(time.RFC3339Nano))
	}
	return t.UnixNano(), nil
}

func encodeRecord(r store.Record, closed bool) (*wireRecord, error) {
	r = r.AsStored()
	w := &wireRecord{Subscriber: r.Subscriber, PortLo: r.PortLo, PortHi: r.PortHi, Epoch: r.Epoch, Flags: uint32(r.Flags)}
	var err error
	if w.Inside, err = addrString(r.Inside, "record.inside"); err != nil {
		return nil, err
	}
	if w.Public, err = addrString(r.Public, "record.public"); err != nil {
		return nil, err
	}
	if r.PortLo > r.PortHi {
		return nil, fmt.Errorf("record.port_lo: %d above port_hi %d", r.PortLo, r.PortHi)
	}
	start, err := unixNS(r.Start, "record.start")
	if err != nil {
		return nil, err
	}
	w.StartMS = start / int64(time.Millisecond)
	if closed {
		end, err := unixNS(r.End, "record.end")
		if err != nil {
			return nil, err
		}
		if end < start {
			return nil, fmt.Errorf("record.end: %s is before its start", r.End.UTC().Format(time.RFC3339Nano))
		}
		w.EndMS = end / int64(time.Millisecond)
	} else if !r.End.IsZero() {
		return nil, fmt.Errorf("record.end: an open record has none")
	}
	return w, nil
}

func encodeLease(l store.Lease, ended bool) (*wireLease, error) {
	w := &wireLease{
		MAC: hex.EncodeToString(l.MAC), ClientID: hex.EncodeToString(l.ClientID),
		Hostname: hex.EncodeToString([]byte(l.Hostname)), Source: hex.EncodeToString([]byte(l.Source)),
	}
	var err error
	if w.Inside, err = addrString(l.Inside, "lease.inside"); err != nil {
		return nil, err
	}
	if len(l.MAC) == 0 {
		return nil, fmt.Errorf("lease.mac: missing")
	}
	if w.StartNS, err = unixNS(l.Start, "lease.start"); err != nil {
		return nil, err
	}
	switch {
	case ended:
		if w.EndNS, err = unixNS(l.End, "lease.end"); err != nil {
			return nil, err
		}
		if w.EndNS < w.StartNS {
			return nil, fmt.Errorf("lease.end: %s is before its start", l.End.UTC().Format(time.RFC3339Nano))
		}
	case !l.End.IsZero():
		if w.EndNS, err = unixNS(l.End, "lease.end"); err != nil {
			return nil, err
		}
	}
	return w, nil
}

func encodeEpoch(e store.Epoch) (*wireEpoch, error) {
	w := &wireEpoch{ID: e.ID, PortLo: e.PortLo, PortHi: e.PortHi, BlockSize: e.BlockSize, Ratio: e.Ratio,
		Hash: hex.EncodeToString(e.Hash[:]), Prefixes: []string{}, Pool: []string{}}
	var err error
	if w.StartNS, err = unixNS(e.Start, "epoch.start"); err != nil {
		return nil, err
	}
	if w.RecordedNS, err = unixNS(e.Recorded, "epoch.recorded"); err != nil {
		return nil, err
	}
	for i, p := range e.Prefixes {
		if !p.IsValid() || !p.Addr().Unmap().Is4() {
			return nil, fmt.Errorf("epoch.prefixes[%d]: %v is not an IPv4 prefix", i, p)
		}
		w.Prefixes = append(w.Prefixes, p.Addr().Unmap().String()+"/"+strconv.Itoa(p.Bits()))
	}
	for i, a := range e.Pool {
		s, err := addrString(a, fmt.Sprintf("epoch.pool[%d]", i))
		if err != nil {
			return nil, err
		}
		w.Pool = append(w.Pool, s)
	}
	if c := e.Clock; c != nil {
		w.Clock = &wireClock{Unreadable: c.Unreadable, Synchronised: c.Synchronised,
			EstErrorUS: c.EstimatedError.Microseconds(), MaxErrorUS: c.MaxError.Microseconds()}
		if !c.ReadAt.IsZero() {
			w.Clock.ReadAtNS = c.ReadAt.UnixNano()
		}
	}
	return w, nil
}

func encodeEvent(ev *store.OutboxEvent) (wireEvent, error) {
	w := wireEvent{Seq: ev.Seq, Kind: uint8(ev.Kind)}
	if ev.Seq == 0 {
		return w, fmt.Errorf("seq: 0 (seqs start at 1)")
	}
	var err error
	switch ev.Kind {
	case store.OutboxOpen, store.OutboxClose:
		w.Rec, err = encodeRecord(ev.Record, ev.Kind == store.OutboxClose)
	case store.OutboxLeaseHeld, store.OutboxLeaseEnded:
		w.Lease, err = encodeLease(ev.Lease, ev.Kind == store.OutboxLeaseEnded)
	case store.OutboxEpoch:
		w.Epoch, err = encodeEpoch(ev.Epoch)
	default:
		err = fmt.Errorf("kind: %v is unknown", ev.Kind)
	}
	return w, err
}

// Ingest stores a batch of router's store outbox, in seq order, and
// returns the stream's last seq. Events at or below it are deliveries
// already taken and are skipped; a batch that does not continue from it
// returns *GapError and stores nothing. The whole batch is one
// transaction.
func (db *DB) Ingest(ctx context.Context, router string, evs []store.OutboxEvent) (last uint64, err error) {
	if err := checkRouter(router); err != nil {
		return 0, err
	}
	if len(evs) == 0 {
		p, err := db.Progress(ctx, router)
		return p.Store, err
	}
	batch := make([]wireEvent, len(evs))
	for i := range evs {
		if batch[i], err = encodeEvent(&evs[i]); err != nil {
			return 0, fmt.Errorf("ingest router %s stream store: event seq %d (%s): %w", router, evs[i].Seq, evs[i].Kind, err)
		}
	}
	body, err := json.Marshal(batch)
	if err != nil {
		return 0, fmt.Errorf("ingest router %s stream store: encode: %w", router, err)
	}
	return db.call(ctx, "SELECT blocknat.ingest($1, $2::jsonb)", router, StreamStore, string(body))
}

// The JSON of one audit entry, as blocknat.ingest_audit reads it.
type wireAudit struct {
	Seq    uint64 `json:"seq"`
	TimeNS int64  `json:"t"`
	Hash   string `json:"h"`
	Entry  string `json:"e64"` // the entry's JSON, base64
}

// IngestAudit stores a batch of router's audit log, in seq order, with
// the rules of Ingest.
func (db *DB) IngestAudit(ctx context.Context, router string, es []audit.Entry) (last uint64, err error) {
	if err := checkRouter(router); err != nil {
		return 0, err
	}
	if len(es) == 0 {
		p, err := db.Progress(ctx, router)
		return p.Audit, err
	}
	batch := make([]wireAudit, len(es))
	for i := range es {
		e := &es[i]
		if e.Seq == 0 {
			return 0, fmt.Errorf("ingest router %s stream audit: entry %d: seq: 0 (seqs start at 1)", router, i)
		}
		t, err := unixNS(e.Time, "time")
		if err != nil {
			return 0, fmt.Errorf("ingest router %s stream audit: entry seq %d: %w", router, e.Seq, err)
		}
		line, err := json.Marshal(e)
		if err != nil {
			return 0, fmt.Errorf("ingest router %s stream audit: entry seq %d: encode: %w", router, e.Seq, err)
		}
		batch[i] = wireAudit{Seq: e.Seq, TimeNS: t, Hash: e.Hash, Entry: base64.StdEncoding.EncodeToString(line)}
	}
	body, err := json.Marshal(batch)
	if err != nil {
		return 0, fmt.Errorf("ingest router %s stream audit: encode: %w", router, err)
	}
	return db.call(ctx, "SELECT blocknat.ingest_audit($1, $2::jsonb)", router, StreamAudit, string(body))
}

// SkipAudit records that the router's audit entries have+1 to first-1
// are gone from its own log (its retention removed them before they
// reached the database) and moves its audit progress to first-1, which it
// returns. have is the progress the router read: if the database's
// differs, nothing changes and its progress is returned.
func (db *DB) SkipAudit(ctx context.Context, router string, have, first uint64) (uint64, error) {
	if err := checkRouter(router); err != nil {
		return 0, err
	}
	var last int64
	if err := db.pool.QueryRow(ctx, "SELECT blocknat.skip_audit($1, $2, $3)", router, int64(have), int64(first)).Scan(&last); err != nil {
		return 0, fmt.Errorf("skip router %s stream audit %d to %d in %s: %w", router, have+1, first-1, db.target, err)
	}
	return uint64(last), nil
}

// AuditHole is a run of a router's audit entries its own retention removed
// before they reached the database.
type AuditHole struct {
	Router         string
	FromSeq, ToSeq uint64
	Reported       time.Time
}

// AuditHoles lists the holes of every router's audit copy, by router and
// seq.
func (db *DB) AuditHoles(ctx context.Context) ([]AuditHole, error) {
	rows, err := db.pool.Query(ctx, "SELECT router, from_seq, to_seq, reported FROM blocknat.audit_holes ORDER BY router, from_seq")
	if err != nil {
		return nil, fmt.Errorf("audit holes in %s: %w", db.target, err)
	}
	var out []AuditHole
	for rows.Next() {
		var h AuditHole
		var from, to int64
		if err := rows.Scan(&h.Router, &from, &to, &h.Reported); err != nil {
			return nil, fmt.Errorf("audit holes in %s: %w", db.target, err)
		}
		h.FromSeq, h.ToSeq = uint64(from), uint64(to)
		out = append(out, h)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("audit holes in %s: %w", db.target, err)
	}
	return out, nil
}

// call runs an ingest function and turns its gap error into *GapError.
func (db *DB) call(ctx context.Context, sql, router, stream, body string) (uint64, error) {
	var last int64
	err := db.pool.QueryRow(ctx, sql, router, body).Scan(&last)
	if err == nil {
		return uint64(last), nil
	}
	if pgCode(err) == gapCode {
		if g := parseGap(err, router, stream); g != nil {
			return 0, g
		}
	}
	return 0, fmt.Errorf("ingest router %s stream %s into %s: %w", router, stream, db.target, err)
}

func parseGap(err error, router, stream string) *GapError {
	pe := asPgError(err)
	if pe == nil {
		return nil
	}
	have, got, ok := strings.Cut(pe.Detail, " ")
	if !ok {
		return nil
	}
	h, err1 := strconv.ParseUint(have, 10, 64)
	g, err2 := strconv.ParseUint(got, 10, 64)
	if err1 != nil || err2 != nil {
		return nil
	}
	return &GapError{Router: router, Stream: stream, Have: h, Got: g}
}
