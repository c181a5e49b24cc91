package api

import (
	"encoding/hex"
	"time"

	"github.com/blocknat/blocknat/userspace/store"
	"github.com/blocknat/blocknat/userspace/wire"
)

// The protocol's types are in userspace/wire; these convert the store's
// into them.

// recordOf is a block record as an answer lists it. Leases nil means none
// resolved yet; JSON shows [] rather than null either way.
func recordOf(r store.Record, leases []wire.LeaseInfo) wire.Record {
	if leases == nil {
		leases = []wire.LeaseInfo{}
	}
	return wire.Record{
		Subscriber: r.Subscriber,
		Inside:     r.Inside,
		Public:     r.Public,
		PortLo:     r.PortLo,
		PortHi:     r.PortHi,
		Start:      r.Start.UTC(),
		End:        endOf(r),
		Epoch:      r.Epoch,
		Flags:      flagNames(r.Flags),
		Leases:     leases,
		Router:     r.Router,
	}
}

func endOf(r store.Record) *time.Time {
	if r.Open() {
		return nil
	}
	end := r.End.UTC()
	return &end
}

// flagNames never returns nil, so that JSON shows [] rather than null.
func flagNames(f store.Flags) []string {
	names := []string{}
	if f&store.FlagRecovered != 0 {
		names = append(names, wire.FlagRecovered)
		f &^= store.FlagRecovered
	}
	if f != 0 {
		// A flag this version does not know must still reach the reader.
		names = append(names, "unknown:0x"+hex.EncodeToString([]byte{byte(f >> 24), byte(f >> 16), byte(f >> 8), byte(f)}))
	}
	return names
}

func epochSummaryOf(e store.Epoch) *wire.EpochSummary {
	return &wire.EpochSummary{
		ID:        e.ID,
		Start:     e.Start.UTC(),
		Prefixes:  e.Prefixes,
		Pool:      e.Pool,
		PortLo:    e.PortLo,
		PortHi:    e.PortHi,
		BlockSize: e.BlockSize,
		Ratio:     e.Ratio,
		Hash:      hex.EncodeToString(e.Hash[:]),
		Clock:     epochClockOf(e.Clock),
	}
}

// epochClockOf is the clock an epoch was recorded with; nil for an epoch
// recorded before epochs carried it.
func epochClockOf(c *store.EpochClock) *wire.ClockState {
	if c == nil {
		return nil
	}
	if c.Unreadable {
		return &wire.ClockState{ReadAt: c.ReadAt.UTC(), Error: "the agent could not read the clock's state"}
	}
	return &wire.ClockState{Synchronised: c.Synchronised, EstimatedError: c.EstimatedError.String(), MaxError: c.MaxError.String(),
		ReadAt: c.ReadAt.UTC()}
}

func storeStatusOf(st store.Stats) wire.StoreStatus {
	optional := func(t time.Time) *time.Time {
		if t.IsZero() {
			return nil
		}
		t = t.UTC()
		return &t
	}
	return wire.StoreStatus{
		OpenRecords:       st.OpenRecords,
		Epochs:            st.Epochs,
		Partitions:        st.Partitions,
		OldestPartition:   optional(st.OldestPartition),
		OldestRetained:    optional(st.OldestRetained),
		UnmatchedReleases: st.UnmatchedReleases,
		DiskBytes:         st.DiskBytes,
		RecordBytes:       st.RecordBytes,
		IndexBytes:        st.IndexBytes,
		OpenBytes:         st.OpenBytes,
	}
}
