package api

import (
	"bytes"
	"cmp"
	"net/netip"
	"slices"
	"time"

	"github.com/blocknat/blocknat/userspace/store"
	"github.com/blocknat/blocknat/userspace/wire"
)

// A fleet service (blocknatd fleet) serves this API from the copy every
// router replicates to PostgreSQL: its Store's records, epochs and leases
// name the router that recorded them (store.Record.Router and the like),
// where a router's own store leaves them empty. Everything below changes
// an answer only when a record, epoch or lease names a router, so that a
// router's answers stay exactly what they were.

// RouterEpochs is what a fleet's Store adds to Store: each router has
// epochs of its own, numbered by itself, so the epoch in force when a
// record began is the one of the router that recorded it. A Store that
// implements it is a fleet's, and its CSV export has the router column
// (wire.CSVHeaderFleet).
type RouterEpochs interface {
	RouterEpochAt(router string, t time.Time) (store.Epoch, error)
}

// epochAt is the epoch in force when rec began, on the router that
// recorded it.
func (s *Server) epochAt(rec store.Record) (store.Epoch, error) {
	if re, ok := s.store.(RouterEpochs); ok && rec.Router != "" {
		return re.RouterEpochAt(rec.Router, rec.Start)
	}
	return s.store.EpochAt(rec.Start)
}

// fleet reports whether the server answers for a fleet.
func (s *Server) fleet() bool {
	_, ok := s.store.(RouterEpochs)
	return ok
}

// mergeKey is what makes two records one candidate in a fleet: the same
// subscriber holding the same block. Two routers with the same mapping
// give a subscriber the same block, so a failover from one to the other
// is one candidate with two intervals.
type mergeKey struct {
	subscriber     uint32
	inside, public netip.Addr
	portLo, portHi uint16
}

// groupRecords returns the candidates recs make, as indices into recs,
// ordered by their earliest start. Without any router named, each record
// is its own candidate, in the order given.
func groupRecords(recs []store.Record) [][]int {
	fleet := slices.ContainsFunc(recs, func(r store.Record) bool { return r.Router != "" })
	if !fleet {
		out := make([][]int, len(recs))
		for i := range recs {
			out[i] = []int{i}
		}
		return out
	}
	var out [][]int
	byKey := map[mergeKey]int{}
	for i, r := range recs {
		k := mergeKey{r.Subscriber, r.Inside, r.Public, r.PortLo, r.PortHi}
		if g, ok := byKey[k]; ok {
			out[g] = append(out[g], i)
			continue
		}
		byKey[k] = len(out)
		out = append(out, []int{i})
	}
	for _, g := range out {
		slices.SortStableFunc(g, func(a, b int) int {
			return cmp.Or(recs[a].Start.Compare(recs[b].Start), cmp.Compare(recs[a].Router, recs[b].Router))
		})
	}
	slices.SortStableFunc(out, func(a, b []int) int { return recs[a[0]].Start.Compare(recs[b[0]].Start) })
	return out
}

// mergedRecord is the candidate of records of one mergeKey, ordered by
// start; one record naming no router is the router's candidate as ever.
func mergedRecord(recs []store.Record) wire.Record {
	first := recs[0]
	c := recordOf(first, nil)
	if len(recs) == 1 && first.Router == "" {
		return c
	}
	c.Intervals = make([]wire.RecordedInterval, 0, len(recs))
	for _, r := range recs {
		iv := wire.RecordedInterval{Router: r.Router, Start: r.Start.UTC(), End: endOf(r), Epoch: r.Epoch, Flags: flagNames(r.Flags)}
		c.Intervals = append(c.Intervals, iv)
		if r.Router != c.Router {
			c.Router = ""
		}
		for _, f := range iv.Flags {
			if !slices.Contains(c.Flags, f) {
				c.Flags = append(c.Flags, f)
			}
		}
		switch {
		case c.End == nil:
		case iv.End == nil:
			c.End = nil
		case iv.End.After(*c.End):
			end := *iv.End
			c.End = &end
		}
	}
	return c
}

// intervalsOf is each record a candidate stands for: its intervals in a
// fleet, else the candidate itself.
func intervalsOf(c wire.Record) []wire.RecordedInterval {
	if c.Intervals != nil {
		return c.Intervals
	}
	return []wire.RecordedInterval{{Start: c.Start, End: c.End, Epoch: c.Epoch, Flags: c.Flags}}
}

// coverageOf is coverage for a candidate: a fleet's merged candidate
// covers the searched interval only where one of its records does, so a
// gap between router A's record and router B's makes it "part".
func coverageOf(c wire.Record, from, to time.Time) string {
	if c.Intervals == nil {
		return coverage(c.Start, c.End, from, to)
	}
	ivs := slices.Clone(c.Intervals)
	slices.SortFunc(ivs, func(a, b wire.RecordedInterval) int { return a.Start.Compare(b.Start) })
	covered := from
	for _, iv := range ivs {
		if iv.Start.After(covered) {
			return wire.CoveragePart
		}
		if iv.End == nil {
			return wire.CoverageAll
		}
		covered = maxTime(covered, *iv.End)
	}
	if covered.Before(to) {
		return wire.CoveragePart
	}
	return wire.CoverageAll
}

// mergeLeaseCopies lists once each lease that several routers reported
// (an active and a standby router both hear the DHCP server), naming the
// routers that did; without any router named it returns leases as given
// and no routers. Of two copies the ended one wins, then the one with the
// later expiry, which has seen the renewal the other missed.
func mergeLeaseCopies(leases []store.Lease) ([]store.Lease, [][]string) {
	if !slices.ContainsFunc(leases, func(l store.Lease) bool { return l.Router != "" }) {
		return leases, nil
	}
	type leaseKey struct {
		inside netip.Addr
		mac    string
		start  int64
	}
	var out []store.Lease
	var routers [][]string
	index := map[leaseKey]int{}
	for _, l := range leases {
		k := leaseKey{l.Inside, string(bytes.ToLower(l.MAC)), l.Start.UnixNano()}
		i, dup := index[k]
		if !dup {
			index[k] = len(out)
			out = append(out, l)
			routers = append(routers, []string{l.Router})
			continue
		}
		if !slices.Contains(routers[i], l.Router) {
			routers[i] = append(routers[i], l.Router)
		}
		if kept := out[i]; (l.Ended && !kept.Ended) || (l.Ended == kept.Ended && l.End.After(kept.End)) {
			out[i] = l
		}
	}
	for _, rs := range routers {
		slices.Sort(rs)
	}
	return out, routers
}

// routerSpans groups epochs by router (a router's store has only ""),
// each router's ordered by start, then ID, as the store orders one
// router's.
func routerEpochs(all []store.Epoch) [][]store.Epoch {
	byRouter := map[string][]store.Epoch{}
	var names []string
	for _, e := range all {
		if _, ok := byRouter[e.Router]; !ok {
			names = append(names, e.Router)
		}
		byRouter[e.Router] = append(byRouter[e.Router], e)
	}
	slices.Sort(names)
	out := make([][]store.Epoch, 0, len(names))
	for _, n := range names {
		es := byRouter[n]
		slices.SortStableFunc(es, func(a, b store.Epoch) int {
			return cmp.Or(a.Start.Compare(b.Start), cmp.Compare(a.ID, b.ID))
		})
		out = append(out, es)
	}
	return out
}

// dropForeignPools leaves out the owner rows of a router none of whose
// epochs then had ip in its pool, when another router's did: in a fleet
// of routers with pools of their own, "not in epoch 3's pool" from every
// other router is noise around the one answer.
func dropForeignPools(rows []wire.Owner, ip netip.Addr) []wire.Owner {
	hasPool := map[string]bool{}
	any := false
	for _, o := range rows {
		if slices.Contains(o.Epoch.Pool, ip) {
			hasPool[o.Router], any = true, true
		}
	}
	if !any {
		return rows
	}
	return slices.DeleteFunc(rows, func(o wire.Owner) bool { return !hasPool[o.Router] })
}
