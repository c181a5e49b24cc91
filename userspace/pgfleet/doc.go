// Package pgfleet is blocknat's PostgreSQL side: the fleet database that
// every router's store and audit log are replicated into, its schema and
// migrations, the router role's ingest, the fleet service's reads, and
// retention.
//
// # Roles
//
// The schema blocknat and everything in it belong to the owner role, the
// one the fleet service connects as and Migrate runs as (it needs
// CREATEROLE the first time, to create blocknat_router). blocknat_router
// is a NOLOGIN group with USAGE on the schema and EXECUTE on four
// SECURITY DEFINER functions only, blocknat.progress, blocknat.ingest,
// blocknat.ingest_audit and blocknat.skip_audit; it can read, change or
// delete no table. The
// operator creates each router's LOGIN role IN ROLE blocknat_router, named
// as the router: the functions let a router's role write only under its
// own name, so that a compromised router cannot forge another's records.
// The owner may write under any name (the fleet service replicates its own
// audit log as "fleet:<name>").
//
// # Ingest
//
// A router sends its store outbox (store.OutboxEvent) and its audit log in
// batches, each batch one JSON array and one function call, which is one
// transaction. The function locks the stream's progress row, skips the
// events at or below the stream's last seq (delivery is at least once, so
// a repeated or overlapping batch stores each row once) and raises
// SQLSTATE BNGAP, which the Go side returns as *GapError and which stores
// nothing, if the rest does not continue last+1, last+2, … without a
// hole. Progress tells a router where to resume after a restart of either
// side. The one hole allowed is in an audit log whose own retention
// removed entries before they were replicated (replication turned on for
// a log older than its retention, or an outage as long): SkipAudit moves
// the progress past them and records them in audit_holes, so the copy
// says what it lacks.
//
// # Layout
//
// As in the router's store (userspace/store), records, ended leases and
// audit entries live in one partition per UTC day (day = Unix time /
// 86400 s), created on demand by the ingest functions, and a closed
// record or ended lease is copied into every day partition its interval
// touches, so that a question about T reads T's day only. Open records and
// current leases are tables of their own, which retention never touches.
// Epochs are small and about no one: one table, never dropped. Record
// times are Unix milliseconds, rounded outward as the store rounds them;
// lease and epoch times are nanoseconds.
//
// # Retention
//
// DropExpired drops whole day partitions, never rows: a day whose end is
// at or before now minus the retention of its kind (records, leases,
// audit) goes, and the first kept day becomes the kind's oldest retained
// day. Ingest never creates a partition before it: a copy that would land
// there goes to the oldest retained day instead, as the store's do, and
// reads for an earlier time read that day, where every record that
// outlived the cutoff has a copy. DropExpired and ingest exclude each
// other through the meta row, so a batch never writes a day being dropped.
//
// # Reads
//
// Reader answers the fleet's questions with the router store's semantics
// (api.Store) across every router, each answer naming its router.
//
// Nothing about destinations exists in the database, and a connection
// string's password is never in an error or a log line.
package pgfleet
