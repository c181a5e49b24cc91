package wire

import "time"

// FleetStatus is what a fleet service reports: the database it answers
// from and how far each router's copy has come.
type FleetStatus struct {
	Name string `json:"name"`
	// SchemaVersion is the database schema's version after the start's
	// migration.
	SchemaVersion int `json:"schema_version"`
	// Routers are the routers that have replicated to the database, by
	// name; the fleet's own audit log is one of them ("fleet:NAME").
	Routers []FleetRouter `json:"routers"`
	// Retention is the database's retention of records, and when
	// expired day partitions were last dropped (absent before the first
	// run).
	Retention RetentionStatus `json:"retention"`
	// Replication is the copy of the fleet's own audit log to the
	// database, as a router's (its store figures stay zero); absent when
	// it is not running.
	Replication *ReplicationStatus `json:"replication,omitempty"`
	// Alarm says what the fleet's blocknat_fleet_alarm holds for: the
	// database unreadable, its own audit copy behind, a router that
	// stopped replicating; empty when all is well.
	Alarm []string `json:"alarm"`
}

// FleetRouter is one router's replicated copy.
type FleetRouter struct {
	Name string `json:"name"`
	// StoreSeq and AuditSeq are the highest contiguous outbox and audit
	// sequence numbers the database holds from the router.
	StoreSeq uint64 `json:"store_seq"`
	AuditSeq uint64 `json:"audit_seq"`
	// LastIngest is when the router last delivered a batch; null if never.
	LastIngest *time.Time `json:"last_ingest"`
	// Stale is true when a router (not a fleet's own log) has delivered
	// nothing for longer than stale_after.
	Stale bool `json:"stale"`
	// Retired is when the router was retired (`blocknatd fleet retire`);
	// absent for a router in service. A retired router is never stale,
	// unless it delivers again, which puts it back in service.
	Retired *time.Time `json:"retired,omitempty"`
	// AuditHoleEntries counts the audit entries the router's own
	// retention removed before they reached the database.
	AuditHoleEntries uint64 `json:"audit_hole_entries"`
}
