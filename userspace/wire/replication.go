package wire

import "time"

// ReplicationStatus is the copy of the router's changes in PostgreSQL
// (replicate.postgres; the blocknat_replication_* metrics).
type ReplicationStatus struct {
	Router    string `json:"router"`
	Connected bool   `json:"connected"`
	// StoreSent and AuditSent are the highest sequence numbers the
	// database holds of the store's outbox and of the audit log;
	// StoreLast and AuditLast the router's newest.
	StoreSent uint64 `json:"store_sent"`
	StoreLast uint64 `json:"store_last"`
	AuditSent uint64 `json:"audit_sent"`
	AuditLast uint64 `json:"audit_last"`
	// OutboxDepth is the changes kept on the router's disk until the
	// database has them; AuditPending the audit entries not yet sent.
	OutboxDepth  uint64 `json:"outbox_depth"`
	AuditPending uint64 `json:"audit_pending"`
	// Lag is the age of the oldest change not yet in the database and
	// MaxLag the bound above which the alarm holds; Go durations.
	Lag         string    `json:"lag"`
	MaxLag      string    `json:"max_lag"`
	LastSuccess time.Time `json:"last_success,omitzero"`
	LastError   string    `json:"last_error,omitempty"`
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
	// Stopped says why the store's changes can no longer be sent without
	// the operator.
	Stopped string `json:"stopped,omitempty"`
}
