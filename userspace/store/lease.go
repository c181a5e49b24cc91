package store

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// LeaseEventKind is what a DHCP server reported.
type LeaseEventKind uint8

const (
	LeaseAdd     LeaseEventKind = iota + 1 // a lease was granted (dnsmasq "add", Kea leases4_committed / lease4_select)
	LeaseRenew                             // an existing lease was renewed or re-announced (dnsmasq "old", Kea lease4_renew / lease4_rebind)
	LeaseRelease                           // the lease ended: released, expired, declined (dnsmasq "del", Kea lease4_release / lease4_expire / lease4_decline)
)

func (k LeaseEventKind) String() string {
	switch k {
	case LeaseAdd:
		return "add"
	case LeaseRenew:
		return "renew"
	case LeaseRelease:
		return "release"
	}
	return fmt.Sprintf("LeaseEventKind(%d)", uint8(k))
}

// LeaseEvent is one report of a DHCP server's hook, given to ApplyLeases.
type LeaseEvent struct {
	Kind     LeaseEventKind
	Time     time.Time        // when the DHCP server reported it (the hook's clock)
	Inside   netip.Addr       // IPv4 address leased
	MAC      net.HardwareAddr // client hardware address (usually 6 bytes; up to 20)
	ClientID []byte           // DHCP option 61, may be empty
	Hostname string           // may be empty; at most 255 bytes
	Expires  time.Time        // Add/Renew: lease expiry; zero = infinite lease
	Source   string           // "dnsmasq" or "kea" (at most 32 bytes)
}

// Lease is one device's hold on one inside address.
type Lease struct {
	Inside   netip.Addr
	MAC      net.HardwareAddr
	ClientID []byte
	Hostname string
	Start    time.Time // granted
	End      time.Time // released, or expiry; zero while an infinite lease is held
	Ended    bool      // true when End is final (released/expired/superseded); false while the lease may still be renewed (End is then its current expiry, or zero if infinite)
	Source   string
	// Router is the router whose hook reported it, in a fleet's answer; a
	// router's own store leaves it empty.
	Router string
}

// Limits of a LeaseEvent, from DHCP itself: chaddr is at most 16 bytes
// (20 for the InfiniBand client identifiers Kea reports as hardware
// addresses), options at most 255, and the source names a hook.
const (
	maxMACLen      = 20
	maxClientIDLen = 255
	maxHostnameLen = 255
	maxSourceLen   = 32
)

// leaseEvent is a validated LeaseEvent.
type leaseEvent struct {
	kind     LeaseEventKind
	time     int64
	inside   [4]byte
	expires  int64 // 0: infinite
	mac      string
	clientID string
	hostname string
	source   string
}

func checkLeaseEvent(ev *LeaseEvent, now time.Time) (leaseEvent, error) {
	out := leaseEvent{kind: ev.Kind, mac: string(ev.MAC), clientID: string(ev.ClientID), hostname: ev.Hostname, source: ev.Source}
	if ev.Kind < LeaseAdd || ev.Kind > LeaseRelease {
		return out, fmt.Errorf("kind: %v: %w", ev.Kind, ErrInvalid)
	}
	var err error
	if out.time, err = checkTime(ev.Time, "time", now); err != nil {
		return out, err
	}
	if out.inside, err = addr4(ev.Inside, "inside"); err != nil {
		return out, err
	}
	for _, f := range []struct {
		name      string
		n, lo, hi int
	}{
		{"mac", len(ev.MAC), 1, maxMACLen},
		{"client_id", len(ev.ClientID), 0, maxClientIDLen},
		{"hostname", len(ev.Hostname), 0, maxHostnameLen},
		{"source", len(ev.Source), 0, maxSourceLen},
	} {
		if f.n < f.lo || f.n > f.hi {
			return out, fmt.Errorf("%s: %d bytes, want %d to %d: %w", f.name, f.n, f.lo, f.hi, ErrInvalid)
		}
	}
	// A release's expiry is whatever the server last granted; the
	// release itself says when the lease ended, so it is not read.
	if ev.Kind != LeaseRelease && !ev.Expires.IsZero() {
		switch {
		case ev.Expires.Before(ev.Time):
			return out, fmt.Errorf("expires: %s is before the event time %s: %w",
				ev.Expires.UTC().Format(time.RFC3339Nano), ev.Time.UTC().Format(time.RFC3339Nano), ErrInvalid)
		case ev.Expires.After(time.Unix(0, math.MaxInt64)):
			return out, fmt.Errorf("expires: %s is after 2262: %w", ev.Expires.UTC().Format(time.RFC3339Nano), ErrInvalid)
		}
		out.expires = ev.Expires.UnixNano()
	}
	return out, nil
}

// sameDevice reports whether the event comes from the device holding h.
// A client id tells devices apart only when both sides have one: dnsmasq
// leaves it out of some events.
func (h *heldLease) sameDevice(ev *leaseEvent) bool {
	return h.mac == ev.mac && (h.clientID == "" || ev.clientID == "" || h.clientID == ev.clientID)
}

// lapsedBefore reports whether h expired before t without renewal.
func (h *heldLease) lapsedBefore(t int64) bool { return h.expires != 0 && h.expires < t }

// leaseBatch collects one ApplyLeases call: the Pebble batch and this
// batch's changes to the current leases (nil: none), applied to the
// Store's map only when the commit succeeds.
type leaseBatch struct {
	s         *Store
	b         *pebble.Batch
	swept     uint32
	pending   map[[4]byte]*heldLease
	ended     int
	unmatched uint64
	out       *outboxWriter // nil: no outbox
}

func (s *Store) newLeaseBatch() (*leaseBatch, error) {
	w := &leaseBatch{s: s, b: s.db.NewBatch(), swept: s.swept.Load(), pending: make(map[[4]byte]*heldLease)}
	var err error
	if w.out, err = s.outboxFor(w.b, s.now()); err != nil {
		w.b.Close()
		return nil, err
	}
	return w, nil
}

func (w *leaseBatch) current(inside [4]byte) (heldLease, bool) {
	return pendingGet(w.pending, w.s.leases, inside)
}

// hold makes h the current lease of inside.
func (w *leaseBatch) hold(inside [4]byte, h heldLease) error {
	if err := errors.Join(w.b.Set(heldKey(inside), encodeHeld(&h), nil), w.b.Set(heldMACKey(h.mac, inside), nil, nil)); err != nil {
		return fmt.Errorf("batch set: %w", err)
	}
	w.pending[inside] = &h
	if w.out != nil {
		return w.out.leaseHeld(inside, &h)
	}
	return nil
}

// writeClosed stores h as a lease that ended at endNS: one copy in every
// day partition its interval touches, from the oldest retained day on,
// as a closed record is.
func (w *leaseBatch) writeClosed(inside [4]byte, h *heldLease, endNS int64) error {
	id := h.id(inside)
	v := encodeLease(h, endNS)
	for day := max(dayOf(h.start), w.swept); day <= dayOf(endNS); day++ {
		if err := errors.Join(w.b.Set(leaseKey(day, id), v, nil), w.b.Set(leaseMACKey(day, id), nil, nil)); err != nil {
			return fmt.Errorf("batch set: %w", err)
		}
	}
	if w.out != nil {
		return w.out.leaseEnded(inside, h, endNS)
	}
	return nil
}

// end closes the current lease h of inside at endNS.
func (w *leaseBatch) end(inside [4]byte, h heldLease, endNS int64) error {
	if err := errors.Join(w.b.Delete(heldKey(inside), nil), w.b.Delete(heldMACKey(h.mac, inside), nil)); err != nil {
		return fmt.Errorf("batch delete: %w", err)
	}
	if err := w.writeClosed(inside, &h, endNS); err != nil {
		return err
	}
	w.pending[inside] = nil
	w.ended++
	return nil
}

// apply adds one event; see ApplyLeases for the rules.
func (w *leaseBatch) apply(ev *leaseEvent) error {
	cur, held := w.current(ev.inside)
	if held && ev.time < cur.start {
		return w.late(ev, cur)
	}
	if held && cur.lapsedBefore(ev.time) {
		if err := w.end(ev.inside, cur, cur.expires); err != nil {
			return err
		}
		held = false
	}
	if ev.kind == LeaseRelease {
		if !held || !cur.sameDevice(ev) || ev.time < cur.updated {
			w.ignore(ev, "lease release matches no current lease")
			return nil
		}
		return w.end(ev.inside, cur, ev.time)
	}
	if held && cur.sameDevice(ev) {
		if ev.time >= cur.updated {
			cur.updated, cur.expires = ev.time, ev.expires
			cur.clientID = cmp.Or(ev.clientID, cur.clientID)
			cur.hostname = cmp.Or(ev.hostname, cur.hostname)
			cur.source = cmp.Or(ev.source, cur.source)
		}
		return w.hold(ev.inside, cur)
	}
	if held {
		// The server gave the address to another device: the old lease
		// ended then (it had not lapsed, so this is before its expiry).
		if err := w.end(ev.inside, cur, ev.time); err != nil {
			return err
		}
	}
	return w.hold(ev.inside, heldLease{start: ev.time, updated: ev.time, expires: ev.expires,
		mac: ev.mac, clientID: ev.clientID, hostname: ev.hostname, source: ev.source})
}

// late adds an event from before the current lease began.
func (w *leaseBatch) late(ev *leaseEvent, cur heldLease) error {
	switch {
	case ev.kind == LeaseRelease:
		w.ignore(ev, "lease release before the current lease began")
		return nil
	case cur.sameDevice(ev):
		cur.start = ev.time
		return w.hold(ev.inside, cur)
	}
	end := cur.start
	if ev.expires != 0 {
		end = min(end, ev.expires)
	}
	w.ended++
	return w.writeClosed(ev.inside, &heldLease{start: ev.time, mac: ev.mac, clientID: ev.clientID, hostname: ev.hostname, source: ev.source}, end)
}

// ignore counts an event that changes nothing. Its log line names neither
// the address nor the MAC: the lease history is read only through the
// audited API, and a log is not.
func (w *leaseBatch) ignore(ev *leaseEvent, msg string) {
	w.unmatched++
	w.s.log.Warn(msg, logKeyTime, time.Unix(0, ev.time).UTC())
}

// commit writes the batch with pebble.Sync and, once it is on stable
// storage, makes its current leases the store's.
func (w *leaseBatch) commit() error {
	w.s.leaseUnmatched.Add(w.unmatched)
	if err := w.out.finish(); err != nil {
		return err
	}
	if err := commitPending(w.b, w.pending, w.s.leases, &w.s.leaseHeld); err != nil {
		return err
	}
	w.s.committed(w.out)
	return nil
}

// ApplyLeases records DHCP lease events in the order given, as one Pebble
// batch committed with pebble.Sync: when it returns nil every event is on
// stable storage, and a crash leaves all of them or none. Every event is
// validated first (times after 1970 and at most 24h after the store's
// clock, an IPv4 inside address, a MAC of 1 to 20 bytes, an expiry not
// before the event); if one is invalid nothing is written.
//
// Each address has at most one current lease (a DHCP server gives an
// address to one device at a time). The device is the MAC, and the client
// id when both sides have one. For an event at or after the current
// lease's Start:
//
//   - If the current lease expired before the event's Time, it ends at its
//     expiry first, and the event is taken as if there were none.
//   - Add or Renew by the device holding the lease updates its expiry, and
//     its client id, hostname and source where the event gives them, and
//     keeps its Start (dnsmasq repeats "old" for every lease when it
//     restarts). Without a current lease it opens one at Time.
//   - Add or Renew by another device ends the current lease at Time and
//     opens the new device's lease at Time.
//   - Release by the holding device ends the lease at Time. A release by
//     another device, or with no current lease, is logged, counted in
//     Stats.UnmatchedLeaseReleases and skipped.
//
// Hook events may be delivered late, after a later one. The newest event
// applied to a lease decides its state: an event older than that one no
// longer changes the expiry, hostname or client id, and a release older
// than it is counted and skipped (the device was seen holding the lease
// since). An event from before the current lease's Start:
//
//   - Add or Renew by the holding device moves Start back to Time: the
//     device held the address then.
//   - Add or Renew by another device records a closed lease of that device
//     from Time to the current lease's Start (or its expiry, if sooner):
//     the next device's grant is the latest it can have held the address.
//     The lease before it is not shortened, so reads of the overlap name
//     both devices, as a lookup with a tolerance names every candidate.
//   - Release is counted and skipped: it ended an earlier lease.
//
// A lease whose expiry passes without renewal reads as ended at its expiry
// (Lease.Ended) from then on; EndExpiredLeases, which Sweep calls, moves it
// to the day partitions.
func (s *Store) ApplyLeases(evs []LeaseEvent) error {
	if len(evs) == 0 {
		return nil
	}
	done, err := s.startWrite("apply %d lease events", len(evs))
	if err != nil {
		return err
	}
	defer done()
	now := s.now()
	checked := make([]leaseEvent, len(evs))
	for i := range evs {
		var err error
		if checked[i], err = checkLeaseEvent(&evs[i], now); err != nil {
			return fmt.Errorf("apply leases: event %d (%s %s): %w", i, evs[i].Kind, evs[i].Inside, err)
		}
	}
	w, err := s.newLeaseBatch()
	if err != nil {
		return fmt.Errorf("apply leases: %w", err)
	}
	defer w.b.Close()
	for i := range checked {
		if err := w.apply(&checked[i]); err != nil {
			return fmt.Errorf("apply leases: event %d: %w", i, err)
		}
	}
	if err := w.commit(); err != nil {
		return fmt.Errorf("apply leases: commit %d events: %w", len(evs), err)
	}
	return nil
}

// EndExpiredLeases ends, at their expiry, the current leases whose expiry
// passed by the store's clock without renewal, and returns how many. Reads
// already answer those leases as ended; this moves them into the day
// partitions, where retention deletes them. Sweep calls it first.
func (s *Store) EndExpiredLeases() (int, error) {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	return s.endExpiredLeasesLocked()
}

// endExpiredLeasesLocked is EndExpiredLeases for a caller holding writeMu.
func (s *Store) endExpiredLeasesLocked() (int, error) {
	s.dbMu.RLock()
	defer s.dbMu.RUnlock()
	if s.db == nil {
		return 0, ErrClosed
	}
	if err := s.mayWrite(); err != nil {
		return 0, fmt.Errorf("end expired leases: %w", err)
	}
	now := ClampNS(s.now())
	w, err := s.newLeaseBatch()
	if err != nil {
		return 0, fmt.Errorf("end expired leases: %w", err)
	}
	defer w.b.Close()
	for inside, h := range s.leases {
		if h.lapsedBefore(now) {
			if err := w.end(inside, h, h.expires); err != nil {
				return 0, fmt.Errorf("end expired leases: %w", err)
			}
		}
	}
	if err := w.commit(); err != nil {
		return 0, fmt.Errorf("end expired leases: commit %d: %w", w.ended, err)
	}
	return w.ended, nil
}

// loadLeases reads the current leases into memory.
func (s *Store) loadLeases() error {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixLeaseHeld}, UpperBound: []byte{prefixLeaseHeld + 1}})
	if err != nil {
		return fmt.Errorf("open store: iterate current leases: %w", err)
	}
	for ok := it.First(); ok; ok = it.Next() {
		inside, err := parseHeldKey(it.Key())
		if err != nil {
			return errors.Join(fmt.Errorf("open store: load current leases: %w", err), it.Close())
		}
		v, err := it.ValueAndErr()
		if err != nil {
			return errors.Join(fmt.Errorf("open store: read current lease: %w", err), it.Close())
		}
		h, err := decodeHeld(v)
		if err != nil {
			return errors.Join(fmt.Errorf("open store: load current leases: %w", err), it.Close())
		}
		s.leases[inside] = h
	}
	if err := errors.Join(it.Error(), it.Close()); err != nil {
		return fmt.Errorf("open store: iterate current leases: %w", err)
	}
	s.leaseHeld.Store(int64(len(s.leases)))
	return nil
}

// leaseMeets reports whether l's interval meets [lo, hi]; an infinite lease
// still held has no end.
func leaseMeets(l *Lease, lo, hi int64) bool {
	return l.Start.UnixNano() <= hi && (l.End.IsZero() || l.End.UnixNano() >= lo)
}

func compareLeases(a, b Lease) int {
	return cmp.Or(a.Start.Compare(b.Start), a.Inside.Compare(b.Inside), bytes.Compare(a.MAC, b.MAC))
}

// CheckRange checks a question's interval [from, to] and returns it in
// Unix nanoseconds, clamped as ClampNS does.
func CheckRange(what string, from, to time.Time) (lo, hi int64, err error) {
	if from.IsZero() || to.IsZero() || to.Before(from) {
		return 0, 0, fmt.Errorf("%s range: [%s, %s]: %w", what, from, to, ErrInvalid)
	}
	return ClampNS(from), ClampNS(to), nil
}

// startBound is prefix followed by the first start after hi: the exclusive
// end of a scan over the starts under prefix. At hi = MaxInt64 the sum
// wraps to 1<<63 unsigned, still above every start.
func startBound(prefix []byte, hi int64) []byte {
	return binary.BigEndian.AppendUint64(append([]byte(nil), prefix...), uint64(hi+1))
}

// LeasesOf returns the leases of the inside address whose interval meets
// [from, to] (both inclusive), ordered by Start. Each day partition the
// range touches costs one bounded seek, plus one for the current lease.
func (s *Store) LeasesOf(inside netip.Addr, from, to time.Time) ([]Lease, error) {
	in, err := addr4(inside, "leases of inside")
	if err != nil {
		return nil, err
	}
	lo, hi, err := CheckRange("leases of", from, to)
	if err != nil {
		return nil, err
	}
	var out []Lease
	err = s.read("leases of", func(v *view) error {
		var err error
		out, err = v.leasesOf(in, lo, hi)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("leases of %s: %w", inside, err)
	}
	return out, nil
}

// leasesOf is LeasesOf on a view, ordered by Start.
func (v *view) leasesOf(in [4]byte, lo, hi int64) ([]Lease, error) {
	var out []Lease
	seen := make(map[leaseID]struct{})
	if dFrom, dTo, ok := v.days(lo, hi); ok {
		err := v.forEachDay(prefixLease, dFrom, dTo, func(day uint32) error {
			p := leaseInsidePrefix(day, in)
			return v.scan(p, startBound(p, hi), func(k, val []byte) error {
				_, id, err := parseLeaseKey(k)
				if err != nil {
					return err
				}
				if _, dup := seen[id]; dup {
					return nil
				}
				seen[id] = struct{}{}
				l, err := decodeLease(val, id)
				if err == nil && leaseMeets(&l, lo, hi) {
					out = append(out, l)
				}
				return err
			})
		})
		if err != nil {
			return nil, err
		}
	}
	val, ok, err := v.get(heldKey(in))
	if err != nil || !ok {
		slices.SortFunc(out, compareLeases)
		return out, err
	}
	h, err := decodeHeld(val)
	if err != nil {
		return nil, err
	}
	if l := h.lease(in, v.now); leaseMeets(&l, lo, hi) {
		out = append(out, l)
	}
	slices.SortFunc(out, compareLeases)
	return out, nil
}

// LeasesByMAC returns the leases of the device with that MAC whose
// interval meets [from, to] (both inclusive), ordered by Start, from the
// per-day MAC index.
func (s *Store) LeasesByMAC(mac net.HardwareAddr, from, to time.Time) ([]Lease, error) {
	if len(mac) == 0 || len(mac) > maxMACLen {
		return nil, fmt.Errorf("leases by mac: mac: %d bytes, want 1 to %d: %w", len(mac), maxMACLen, ErrInvalid)
	}
	lo, hi, err := CheckRange("leases by mac", from, to)
	if err != nil {
		return nil, err
	}
	m := string(mac)
	var out []Lease
	err = s.read("leases by mac", func(v *view) error {
		type hit struct {
			day uint32
			id  leaseID
		}
		var hits []hit
		seen := make(map[leaseID]struct{})
		if dFrom, dTo, ok := v.days(lo, hi); ok {
			err := v.forEachDay(prefixLeaseMAC, dFrom, dTo, func(day uint32) error {
				p := leaseMACPrefix(day, m)
				return v.scan(p, startBound(p, hi), func(k, _ []byte) error {
					_, id, err := parseLeaseMACKey(k)
					if err != nil {
						return err
					}
					if _, dup := seen[id]; !dup {
						seen[id] = struct{}{}
						hits = append(hits, hit{day, id})
					}
					return nil
				})
			})
			if err != nil {
				return err
			}
		}
		var held [][4]byte
		p := heldMACPrefix(m)
		err := v.scan(p, keyAfter(p), func(k, _ []byte) error {
			inside, err := parseHeldMACKey(k)
			if err == nil {
				held = append(held, inside)
			}
			return err
		})
		if err != nil {
			return err
		}
		// The index only names the leases; their values are read through
		// the same view so both sides agree.
		for _, h := range hits {
			key := leaseKey(h.day, h.id)
			val, ok, err := v.get(key)
			if err == nil && !ok {
				err = fmt.Errorf("mac index entry without lease %x: %w", key, ErrCorrupt)
			}
			if err != nil {
				return err
			}
			l, err := decodeLease(val, h.id)
			if err != nil {
				return err
			}
			if leaseMeets(&l, lo, hi) {
				out = append(out, l)
			}
		}
		for _, inside := range held {
			val, ok, err := v.get(heldKey(inside))
			if err == nil && !ok {
				err = fmt.Errorf("mac index entry without current lease of %v: %w", addrFrom4(inside), ErrCorrupt)
			}
			if err != nil {
				return err
			}
			h, err := decodeHeld(val)
			if err != nil {
				return err
			}
			if l := h.lease(inside, v.now); h.mac == m && leaseMeets(&l, lo, hi) {
				out = append(out, l)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("leases by mac %s: %w", mac, err)
	}
	slices.SortFunc(out, compareLeases)
	return out, nil
}

// ExportLeases calls fn for every lease whose interval meets [from, to], in
// order of Start, reading one consistent view. fn must not call the Store.
// An error from fn stops the export and is returned.
func (s *Store) ExportLeases(from, to time.Time, fn func(Lease) error) error {
	lo, hi, err := CheckRange("export leases", from, to)
	if err != nil {
		return err
	}
	err = s.read("export leases", func(v *view) error {
		var held []Lease
		err := v.scan([]byte{prefixLeaseHeld}, []byte{prefixLeaseHeld + 1}, func(k, val []byte) error {
			inside, err := parseHeldKey(k)
			if err != nil {
				return err
			}
			h, err := decodeHeld(val)
			if err != nil {
				return err
			}
			if l := h.lease(inside, v.now); leaseMeets(&l, lo, hi) {
				held = append(held, l)
			}
			return nil
		})
		if err != nil {
			return err
		}
		dFrom, dTo, ok := v.days(lo, hi)
		m := newDayMerge(held, dFrom, func(l *Lease) time.Time { return l.Start }, compareLeases, fn)
		if ok {
			err := v.scan(dayPrefix(prefixLease, dFrom), dayPrefix(prefixLease, min(dTo, maxDay)+1), func(k, val []byte) error {
				day, id, err := parseLeaseKey(k)
				if err != nil {
					return err
				}
				if err := m.enter(day); err != nil {
					return err
				}
				l, err := decodeLease(val, id)
				if err != nil {
					return err
				}
				if leaseMeets(&l, lo, hi) {
					m.keep(day, l)
				}
				return nil
			})
			if err != nil {
				return err
			}
		}
		return m.end()
	})
	if err != nil {
		return fmt.Errorf("export leases: %w", err)
	}
	return nil
}
