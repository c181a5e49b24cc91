package store

import "time"

// AsStored is r with its times as the store keeps and answers them: Start
// rounded down and End (when set) up to the millisecond. Whoever reports a
// record before it is read back, as the exporter does, reports these, so an
// export and a lookup never disagree about a block's times.
func (r Record) AsStored() Record {
	if !r.Start.IsZero() && r.Start.UnixNano() >= 0 {
		r.Start = time.Unix(0, floorStep(r.Start.UnixNano())).UTC()
	}
	if !r.End.IsZero() && r.End.UnixNano() >= 0 && r.End.UnixNano() <= maxRecordNS {
		r.End = time.Unix(0, ceilStep(r.End.UnixNano())).UTC()
	}
	return r
}
