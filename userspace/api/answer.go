package api

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/blocknat/blocknat/userspace/audit"
	"github.com/blocknat/blocknat/userspace/store"
	"github.com/blocknat/blocknat/userspace/wire"
)

// parseStatedTime reads an RFC 3339 time with a zone and returns the width
// it stands for: a person who copies "12:00:01Z" from a server log means
// the whole second, not the instant 12:00:01.000, and "12:00:01.7Z" means
// the tenth of a second that starts there.
func parseStatedTime(field, v string) (time.Time, time.Duration, *failure) {
	t, f := parseTime(field, v)
	if f != nil {
		return t, 0, f
	}
	precision := time.Second
	// RFC 3339 fixes the layout up to the seconds: date, "T", hh:mm:ss.
	if i := strings.IndexByte(v, 'T'); i >= 0 && len(v) > i+9 && v[i+9] == '.' {
		digits := 0
		for _, c := range v[i+10:] {
			if c < '0' || c > '9' {
				break
			}
			digits++
		}
		if digits > 9 {
			return t, 0, malformed(http.StatusBadRequest, "%s: %q has more than 9 fractional digits", field, v)
		}
		for range digits {
			precision /= 10
		}
	}
	return t, precision, nil
}

// coverage says whether [start, end] (end nil: still held) covers all of
// [from, to) or part of it.
func coverage(start time.Time, end *time.Time, from, to time.Time) string {
	if !start.After(from) && (end == nil || !end.Before(to)) {
		return wire.CoverageAll
	}
	return wire.CoveragePart
}

// clipInterval returns the part of [start, end] (end nil: still held)
// that lies in [lo, hi].
func clipInterval(start time.Time, end *time.Time, lo, hi time.Time) (time.Time, time.Time) {
	from, to := start, hi
	if from.Before(lo) {
		from = lo
	}
	if end != nil && end.Before(to) {
		to = *end
	}
	if to.Before(from) {
		to = from
	}
	return from.UTC(), to.UTC()
}

// resolveLeases fills c's leases: those that held its inside address
// during [lo, hi], or [lo, hi) when open (the end of a searched interval,
// which it does not include).
func (s *Server) resolveLeases(c *wire.Record, lo, hi time.Time, open bool) *failure {
	last := hi
	if open && hi.After(lo) {
		last = hi.Add(-time.Nanosecond)
	}
	leases, err := s.store.LeasesOf(c.Inside, lo, last)
	if err != nil {
		return fromStore("store leases of "+c.Inside.String(), err)
	}
	c.LeasesFrom, c.LeasesTo = lo, hi
	c.Leases = leaseInfos(leases, lo, last)
	return nil
}

func leaseInfos(leases []store.Lease, lo, hi time.Time) []wire.LeaseInfo {
	leases, routers := mergeLeaseCopies(leases)
	out := make([]wire.LeaseInfo, 0, len(leases))
	for i, l := range leases {
		info := leaseInfoOf(l, lo, hi)
		if routers != nil {
			info.Routers = routers[i]
		}
		out = append(out, info)
	}
	return out
}

func leaseInfoOf(l store.Lease, lo, hi time.Time) wire.LeaseInfo {
	info := wire.LeaseInfo{
		Inside:   l.Inside,
		MAC:      l.MAC.String(),
		Hostname: l.Hostname,
		Start:    l.Start.UTC(),
		Ended:    l.Ended,
		Source:   l.Source,
	}
	if len(l.ClientID) > 0 {
		info.ClientID = hex.EncodeToString(l.ClientID)
	}
	if !l.End.IsZero() {
		end := l.End.UTC()
		info.End = &end
	}
	info.Coverage = wire.CoveragePart
	if !info.Start.After(lo) && (info.End == nil || !info.End.Before(hi)) {
		info.Coverage = wire.CoverageAll
	}
	return info
}

// epochSpan is one epoch and the part of a searched interval it was in
// force for, [from, to).
type epochSpan struct {
	epoch    store.Epoch
	from, to time.Time
}

// epochsDuring returns the epochs in force during [from, to), in order;
// in a fleet, each router's epochs in force on that router, ordered by
// the time they came into force, then by router.
func (s *Server) epochsDuring(from, to time.Time) ([]epochSpan, error) {
	all, err := s.store.Epochs()
	if err != nil {
		return nil, err
	}
	var out []epochSpan
	for _, es := range routerEpochs(all) {
		out = append(out, epochTimeline(es, from, to)...)
	}
	slices.SortStableFunc(out, func(a, b epochSpan) int { return a.from.Compare(b.from) })
	return out, nil
}

// epochTimeline is the part of [from, to) each of one router's epochs
// was in force for; epochs come ordered by start, then ID.
func epochTimeline(all []store.Epoch, from, to time.Time) []epochSpan {
	// Several epochs may share a start; the highest ID is the one in force
	// (as EpochAt has it).
	var byStart []store.Epoch
	for _, e := range all {
		if n := len(byStart); n > 0 && byStart[n-1].Start.Equal(e.Start) {
			byStart[n-1] = e
			continue
		}
		byStart = append(byStart, e)
	}
	var out []epochSpan
	for i, e := range byStart {
		spanFrom, spanTo := e.Start, to
		if i+1 < len(byStart) {
			spanTo = byStart[i+1].Start
		}
		if spanFrom.Before(from) {
			spanFrom = from
		}
		if spanTo.After(to) {
			spanTo = to
		}
		if spanFrom.Before(spanTo) {
			out = append(out, epochSpan{epoch: e, from: spanFrom.UTC(), to: spanTo.UTC()})
		}
	}
	return out
}

// owners answers, for each epoch in force during [from, to), whom its
// mapping gives ip:port to and whether a candidate shows that block active.
func (s *Server) owners(ip netip.Addr, port uint16, from, to time.Time, cands []wire.Record) ([]wire.Owner, *failure) {
	spans, err := s.epochsDuring(from, to)
	if err != nil {
		return nil, internal("store epochs: %v", err)
	}
	out := make([]wire.Owner, 0, len(spans))
	for _, sp := range spans {
		o := wire.Owner{Router: sp.epoch.Router, Epoch: *epochSummaryOf(sp.epoch), From: sp.from, To: sp.to}
		blk, reason := reverseInEpoch(sp.epoch, ip, port)
		if reason != "" {
			o.Reason = reason
			out = append(out, o)
			continue
		}
		o.Mapped = true
		o.Subscriber, o.Inside, o.Public, o.PortLo, o.PortHi = blk.subscriber, blk.inside, ip, blk.portLo, blk.portHi
	activity:
		for _, c := range cands {
			if c.Subscriber != blk.subscriber || c.PortLo != blk.portLo {
				continue
			}
			// In a fleet, only the router's own record shows its epoch's
			// block active.
			for _, iv := range intervalsOf(c) {
				if iv.Router == sp.epoch.Router && iv.Epoch == sp.epoch.ID &&
					!iv.Start.After(sp.to) && (iv.End == nil || !iv.End.Before(sp.from)) {
					o.Active = true
					break activity
				}
			}
		}
		if !o.Active {
			before, after, err := s.store.NearestRecords(blk.subscriber, ip, blk.portLo, sp.from, sp.to.Add(-time.Nanosecond))
			if err != nil {
				return nil, fromStore("store nearest records", err)
			}
			if before != nil {
				end := before.End.UTC()
				o.Before = &wire.Nearest{Router: before.Router, Start: before.Start.UTC(), End: &end, Gap: sp.from.Sub(end).String()}
			}
			if after != nil {
				o.After = &wire.Nearest{Router: after.Router, Start: after.Start.UTC(), End: endOf(*after), Gap: after.Start.Sub(sp.to).String()}
			}
		}
		out = append(out, o)
	}
	return dropForeignPools(out, ip), nil
}

type ownedBlock struct {
	subscriber     uint32
	inside         netip.Addr
	portLo, portHi uint16
}

// reverseInEpoch applies RFC 7422's reverse formula with the parameters the
// epoch record holds, i = j·C + (p − lo) / B, so that an old epoch is read
// with its own mapping rather than today's. reason says why nobody owns the
// port; it is empty when someone does.
func reverseInEpoch(e store.Epoch, ip netip.Addr, port uint16) (ownedBlock, string) {
	j := slices.Index(e.Pool, ip)
	if j < 0 {
		return ownedBlock{}, fmt.Sprintf("%s is not in epoch %d's pool", ip, e.ID)
	}
	if e.BlockSize == 0 || e.Ratio == 0 {
		return ownedBlock{}, fmt.Sprintf("epoch %d has no block size or sharing ratio", e.ID)
	}
	usedEnd := uint32(e.PortLo) + e.Ratio*uint32(e.BlockSize)
	if port < e.PortLo || uint32(port) >= usedEnd {
		return ownedBlock{}, fmt.Sprintf("port %d is outside epoch %d's blocks %d-%d", port, e.ID, e.PortLo, usedEnd-1)
	}
	slot := uint32(port-e.PortLo) / uint32(e.BlockSize)
	i := uint64(j)*uint64(e.Ratio) + uint64(slot)
	inside, ok := nthInside(e.Prefixes, i)
	if !ok {
		return ownedBlock{}, fmt.Sprintf("port %d of %s would be subscriber %d, which epoch %d's prefixes do not have", port, ip, i, e.ID)
	}
	lo := e.PortLo + uint16(slot)*e.BlockSize
	return ownedBlock{subscriber: uint32(i), inside: inside, portLo: lo, portHi: lo + e.BlockSize - 1}, ""
}

// nthInside returns the i-th inside address, counting across the prefixes
// in configuration order.
func nthInside(prefixes []netip.Prefix, i uint64) (netip.Addr, bool) {
	for _, p := range prefixes {
		size := uint64(1) << (32 - p.Bits())
		if i < size {
			b := p.Masked().Addr().As4()
			v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
			v += uint32(i)
			return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), true
		}
		i -= size
	}
	return netip.Addr{}, false
}

// Subjects as the audit log records them.
func subjectInside(a netip.Addr) string    { return audit.SubjectInside(a) }
func subjectMAC(m net.HardwareAddr) string { return audit.SubjectMAC(m) }

// subjectMACText spells a MAC from a wire.LeaseInfo the way SubjectMAC does.
func subjectMACText(m string) string {
	if hw, err := net.ParseMAC(m); err == nil {
		return audit.SubjectMAC(hw)
	}
	return "mac:" + m
}
func subjectsOf(cands []wire.Record, leases []wire.LeaseInfo) []string {
	var out []string
	for _, c := range cands {
		out = append(out, subjectInside(c.Inside))
		for _, l := range c.Leases {
			out = append(out, subjectMACText(l.MAC))
		}
	}
	for _, l := range leases {
		out = append(out, subjectMACText(l.MAC))
	}
	return out
}

// selector is who a history or export is narrowed to: one inside address,
// one MAC, or (for an export only) nobody in particular.
type selector struct {
	inside netip.Addr
	mac    net.HardwareAddr
}

func (sel selector) any() bool { return sel.inside.IsValid() || sel.mac != nil }

func parseSelector(subscriber, mac string, needOne bool) (selector, *failure) {
	var sel selector
	switch {
	case subscriber != "" && mac != "":
		return sel, malformed(http.StatusBadRequest, "subscriber, mac: give one of them, not both")
	case subscriber != "":
		inside, err := netip.ParseAddr(subscriber)
		if err != nil || !inside.Unmap().Is4() {
			return sel, malformed(http.StatusBadRequest, "subscriber: %q is not an inside IPv4 address", subscriber)
		}
		sel.inside = inside.Unmap()
	case mac != "":
		hw, err := net.ParseMAC(mac)
		if err != nil {
			return sel, malformed(http.StatusBadRequest, "mac: %q is not a hardware address such as 02:00:00:00:00:01", mac)
		}
		sel.mac = hw
	case needOne:
		return sel, malformed(http.StatusBadRequest, "subscriber or mac: give the subscriber's inside address or a device's MAC")
	}
	return sel, nil
}

// selected is a record and the interval over which its inside address is
// resolved to leases.
type selected struct {
	rec    store.Record
	lo, hi time.Time
}

// selectRecords returns the records of sel in [from, to], ordered by start,
// each with the interval its leases are resolved over, and (for a MAC) the
// device's leases. A device's records are those of the addresses its leases
// held, during those leases only, so that a history by MAC names nobody who
// held the address before or after it.
func (s *Server) selectRecords(sel selector, from, to time.Time) ([]selected, []wire.LeaseInfo, *failure) {
	if sel.mac == nil {
		recs, err := s.store.History(sel.inside, from, to)
		if err != nil {
			return nil, nil, fromStore("store history", err)
		}
		out := make([]selected, len(recs))
		for i, r := range recs {
			lo, hi := clipInterval(r.Start, endOf(r), from, to)
			out[i] = selected{rec: r, lo: lo, hi: hi}
		}
		return out, nil, nil
	}
	leases, err := s.store.LeasesByMAC(sel.mac, from, to)
	if err != nil {
		return nil, nil, fromStore("store leases by mac", err)
	}
	var out []selected
	// A record met by two leases of the device (a renewal the server
	// reported as a new lease) is listed once, over both.
	index := map[store.Record]int{}
	leases, routers := mergeLeaseCopies(leases)
	infos := make([]wire.LeaseInfo, 0, len(leases))
	for i, l := range leases {
		var end *time.Time
		if !l.End.IsZero() {
			end = &l.End
		}
		lo, hi := clipInterval(l.Start, end, from, to)
		info := leaseInfoOf(l, lo, hi)
		if routers != nil {
			info.Routers = routers[i]
		}
		infos = append(infos, info)
		recs, err := s.store.History(l.Inside, lo, hi)
		if err != nil {
			return nil, nil, fromStore("store history", err)
		}
		for _, r := range recs {
			rlo, rhi := clipInterval(r.Start, endOf(r), lo, hi)
			if i, dup := index[r]; dup {
				out[i].lo, out[i].hi = minTime(out[i].lo, rlo), maxTime(out[i].hi, rhi)
				continue
			}
			index[r] = len(out)
			out = append(out, selected{rec: r, lo: rlo, hi: rhi})
		}
	}
	slices.SortStableFunc(out, func(a, b selected) int { return a.rec.Start.Compare(b.rec.Start) })
	return out, infos, nil
}

// setDocument makes doc the answer: its JSON is hashed into the audit entry
// and sent byte for byte, with the entry's proof, once the entry is written.
func (r *reply) setDocument(doc any) *failure {
	data, err := json.Marshal(doc)
	if err != nil {
		return internal("encode answer: %v", err)
	}
	sum := sha256.Sum256(data)
	r.document = data
	r.answerSHA256 = hex.EncodeToString(sum[:])
	return nil
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
