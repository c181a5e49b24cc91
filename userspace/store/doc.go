// Package store keeps blocknat's block records, mapping epochs and DHCP
// lease history in Pebble and answers "which subscriber had public IP X,
// port P, at time T?" from them, and, where an inside address names a
// device only for its DHCP lease, "which device held that inside address?".
//
// # Records and intervals
//
// A Record says that a subscriber held the port block [PortLo, PortHi] of a
// public address during the closed interval [Start, End]. A record is open
// while End is zero, and an open record covers [Start, now]. A lookup widened
// by a tolerance d returns every record whose interval intersects [T-d, T+d],
// each with its own interval, so that the investigator sees every candidate.
//
// # Time resolution
//
// A record's Start and End are kept to the millisecond (timeStep), rounded
// outward: Apply rounds Start down and End up, and every answer (Lookup,
// History, Export, NearestRecords, OpenRecords) gives them so. The stored
// interval therefore contains the true one, and is less than a millisecond
// wider at each end: no lookup loses a candidate, and one gains a record
// only when its true interval missed the question by less than a
// millisecond. At a handover that means two holders less than a
// millisecond apart, and both answer, which is the correct answer to a
// question asked to the second. Nanoseconds, as the kernel gives them,
// cost about eleven incompressible bytes a record (layout 2); milliseconds
// take a closed record from 27.6 to 22.7 bytes on disk (TestBytesPerRecord).
// Two records of one subscriber and block that begin within one
// millisecond share a key: the later release stands, and its interval
// holds both. Epoch, canary and lease times keep nanoseconds.
//
// # Key layout
//
// All integers are big-endian so that byte order is numeric order. A day is
// the UTC day number (Unix time / 86400 s); times are Unix nanoseconds,
// except the start in r, which counts milliseconds in 48 bits.
//
//	r <day u32> <public 4B> <port_lo u16> <subscriber u32> <start ms u48> = value
//	s <day u32> <inside 4B> <public 4B> <port_lo u16> <subscriber u32>
//	o <public 4B> <port_lo u16> <start u64> <subscriber u32>              = value
//	p <inside 4B> <start u64> <public 4B> <port_lo u16> <subscriber u32>
//	e <start u64> <epoch id u32>                                         = epoch
//	m <name>                                                             = meta
//	c <time u64> <seq u32>                                               = canary
//	L <day u32> <inside 4B> <start u64> <mac len u8> <mac>              = lease
//	M <day u32> <mac len u8> <mac> <start u64> <inside 4B>
//	N <inside 4B>                                                        = current lease
//	O <mac len u8> <mac> <inside 4B>
//	q <seq u64>                                                          = outbox event
//
// "r" is the record partition: a closed record is stored in every day
// partition its interval touches, so a lookup for T seeks once in T's day
// (once per day a tolerance spans) and never needs to look back in time.
// Within a block a subscriber's records are in order of start, which is the
// order NearestRecords walks. "s" indexes each day partition by inside
// address for History, but holds no copy of a record: one key per
// subscriber's block and day, naming the r prefix <day> <public> <port_lo>
// <subscriber> to scan (the block's records that day, a handful), written
// again by every record of that block and day (Pebble keeps one). A
// subscriber who activates a block five times a day has five r keys and
// one s key that day. "o" and "p" hold the open records, by block and by
// inside address. The value of o is a version byte (1), the inside
// address, port_hi, then uvarints for the epoch and the flags; the value of
// r is a version byte (3), the inside address, port_hi, the epoch, the
// flags, then End-Start in milliseconds as a uvarint, so that the part a
// subscriber's records of a block share sits together for block
// compression: about 13 bytes. The start in o and p is the rounded Start,
// in nanoseconds.
//
// "c" holds the agent's self-check canaries: events the kernel wrote into the
// block event ring buffer that name no subscriber. They travel the records'
// path (the same Apply batches) so that finding one proves records reach the
// disk, but live apart from every keyspace a lookup, history, export or the
// reconciler reads, so a canary is never taken for a subscriber. A canary
// write deletes the canaries more than an hour older than itself.
//
// The lease keyspaces are upper case, so that they sort together apart from
// the records. "L" is the lease partition, kept like "r": a closed lease is
// stored in every UTC day partition its interval touches. "M" is the same
// per day, ordered by MAC, for LeasesByMAC. "N" holds the current lease of
// each address (a DHCP server gives an address to one device at a time) and
// "O" indexes it by MAC. The MAC is written after its length, so that the
// keys of a 6-byte MAC are never a prefix range of a longer hardware
// address. The value of L is a version byte, a uvarint End-Start, then the
// client id, hostname and source, each a uvarint length and its bytes; the
// value of N is a version byte, start, time of the newest event and expiry
// (u64 each, expiry 0 for an infinite lease), then the MAC, client id,
// hostname and source the same way.
//
// # Leases
//
// A Lease says that a device (MAC, and client id when given) held an inside
// address during [Start, End]. ApplyLeases takes the DHCP hook's events and
// documents the rules: a grant to another device ends the current lease, a
// renewal keeps its Start, a release ends it, and late events are placed
// without undoing newer ones. A current lease whose expiry passes without
// renewal reads as ended at its expiry (by the store's clock); Sweep first
// ends such leases at their expiry (EndExpiredLeases), moving them from N/O
// into L/M like a released one. A current lease, like an open record, lives
// only in N/O and survives every sweep, whatever its Start.
//
// # Outbox
//
// With Options.Outbox the store keeps an outbox for replication: "q"
// holds one event per change, keyed by its seq (1, 2, 3 … with no gap, in
// commit order), and meta "m outbox last" and "m outbox acked" (u64 each)
// hold the newest seq and the highest one acknowledged, so that both
// survive a restart and an outbox emptied by acknowledgements still goes
// on from its last seq. Every event is written in the Pebble batch of the
// change it describes, with the new last seq, so a crash keeps both or
// neither: Apply writes an open event for each activation it records (the
// record as stored in o, including one activated and released in the same
// batch, which never has o keys) and a close event for each release (the
// closed record, times rounded as stored, once however many day copies it
// has); ApplyLeases and EndExpiredLeases (so Sweep's lease endings too)
// write a held event for each write of N and an ended event for each
// closed lease written to L; PutEpoch writes an epoch event. Canaries are
// self-checks and are not replicated; nor are Sweep's deletions, which
// are the replica's own retention's business, and Sweep deletes no event
// (it compacts the acknowledged span, whose tombstones shadow personal
// data, with the other keyspaces). An event waiting longer than the
// retention period therefore still holds its record until it is sent.
//
// The value of q is a version byte (1), the store's clock when the batch
// was written (u64 ns), the kind, then the payload: for a record, the
// subscriber u32, inside, public, port_lo, port_hi, then uvarints for the
// start in milliseconds, the end (0: open, else End-Start in milliseconds
// plus 1), the epoch and the flags; for a held lease,
// the inside address and N's value; for an ended lease, the inside
// address, start and end u64, then the MAC, client id, hostname and source
// as a uvarint length and its bytes; for an epoch, a uvarint length, e's
// key and e's value. AckOutbox deletes the events up to a seq with one
// range delete and writes "m outbox acked" in one Sync batch.
//
// Meta "m outbox on" says that the outbox holds every change. Opening with
// the outbox a store without it (one that holds data and never had an
// outbox, or one written to with the outbox off since) backfills: it
// enqueues the epochs, the closed records (one close event each, read from
// the copy in its end day), the open records, the closed leases (likewise)
// and the current leases, in Sync batches of 10,000 events, logging its
// progress, and marks the outbox on in the last batch. Meta "m outbox
// backfill" holds the seq the backfill began at: a crash leaves it, and
// the next Open deletes the events from it on and starts again, so no
// event is enqueued twice (nobody read them: Open had not returned). A
// write made with the outbox off deletes "m outbox on" in its own batch,
// so that turning the outbox on again backfills again, after the events
// kept; the replica then receives again what it already held, and must
// take a repeated event as a no-op. With the outbox off a store writes no
// q key and no outbox meta.
//
// # Carrying open records
//
// The design says open records are carried into each new day's partition. The
// store does that lazily, at release: while a record is open it lives only in
// "o"/"p", which retention never touches, and every read also seeks there once
// (an open record answers for any T in [Start, now]). When the record is
// released its End is known, and the same batch that removes it from "o"/"p"
// writes a copy into every day partition from its start day (or the oldest
// retained day) to its end day. The copies are therefore final and never need
// rewriting, a store with no writes for days still answers for today, and an
// open record older than the retention period survives every sweep. Apply
// writes the open keys only once it has read its whole batch, so a block
// activated and released in the same batch (the usual case when the agent
// catches up) goes straight to its closed copies and never has open keys.
//
// # Lookup bound
//
// Blocks of one public address never overlap within an epoch, but an epoch
// change can alter the block size, so a port can fall into blocks with
// different port_lo values over time. The store keeps the widest block it has
// ever stored (meta "m width"); a lookup for port P scans port_lo in
// [P-width+1, P] for that address in each partition: one bounded seek that
// reads only the blocks that can contain P.
//
// NearestRecords, the records of one block and subscriber just before and
// just after an interval, relies on the copies too: the latest end before
// the interval is in the newest partition, at or before it, holding one, so
// a reverse walk over the partitions (one bounded seek each, absent days
// skipped) stops at the first hit or at the oldest retained day, and the
// earliest start after it is found walking forward the same way, or among
// the open records.
//
// # Retention
//
// Sweep(retention) computes cutoff = now - retention and its day C. In one
// Sync batch it range-deletes the r and s partitions of every day before C,
// point-deletes the records of day C that ended before the cutoff and the s
// entries of day C that no kept record needs, deletes epochs no retained
// record needs, and records C as the oldest retained day.
// The L and M lease partitions are deleted with the same rule in the same
// batch.
// A record that ended after the cutoff was copied into day C when it was
// released, so reads for a time before C are answered from partition C
// instead. Sweep then flushes the memtable and compacts the deleted spans (and
// the small o, p and e keyspaces, whose release tombstones still shadow old
// values, and likewise L, M, N and O) with parallelize=true, so the SSTables
// holding expired data are rewritten without it.
//
// Pebble keeps copies outside the live SSTables too: the WAL, which it may
// recycle (a recycled WAL keeps its old bytes past the new writes), and the
// MANIFEST, whose edits name the smallest and largest key of every SSTable
// ever created and which Pebble keeps one generation of after rotating
// (NumPrevManifest cannot go below 1). Sweep therefore closes and reopens the
// database twice, each time followed by a small flushed write: a reopen deletes
// every obsolete and recycled WAL, and the first version edit after a reopen
// starts a fresh MANIFEST holding only a snapshot of the live files; the second
// round deletes the MANIFEST that described the files before the compaction.
// After Sweep returns, no file in the store directory holds an expired record
// but in an outbox event not yet acknowledged (see Outbox).
// Unlinking frees the blocks but does not overwrite them on the device; where
// erasure at the media level is required, put the store on an encrypted
// volume.
//
// # Upgrades
//
// Meta "m layout" names the layout of r and s; this is layout 3. A store
// without it was written before layout 2, when r held the record keyed by
// start before subscriber (value version 1, End-Start before the epoch)
// and s held a second key per record, s <day> <inside> <start> <public>
// <port_lo> <subscriber>. Layout 2 is layout 3 with nanosecond times (a
// u64 start in r, value version 2). Open rewrites a layout 1 or 2 store in
// place, one day partition per Sync batch, rounding times outward as Apply
// does and logging its progress, so that a crash leaves each day whole in
// one layout and the next Open carries on; it then rounds the open
// records' starts (upgrade.go). The other keyspaces are the same in all
// layouts.
//
// # Concurrency
//
// Writers (Apply, ApplyLeases, EndExpiredLeases, PutEpoch, AckOutbox,
// Sweep) are serialised. Reads run concurrently with
// writes and see one consistent Pebble view each. Sweep blocks reads only while
// it reopens the database. Apply blocks while a Sweep runs.
package store
