package wire

import "time"

// StatusResponse answers GET /v1/status.
type StatusResponse struct {
	AuditSeq uint64      `json:"audit_seq"`
	Store    StoreStatus `json:"store"`
	Audit    AuditStatus `json:"audit"`
	// Agent is the agent's own status; null when the server runs without
	// one (a test's, or a fleet service's).
	Agent *Status `json:"agent"`
	// Fleet is a fleet service's status (blocknatd fleet); absent from a
	// router's answer.
	Fleet *FleetStatus `json:"fleet,omitempty"`
}

// StoreStatus is what the record store reports about itself.
type StoreStatus struct {
	OpenRecords       int        `json:"open_records"`
	Epochs            int        `json:"epochs"`
	Partitions        int        `json:"partitions"`
	OldestPartition   *time.Time `json:"oldest_partition"`
	OldestRetained    *time.Time `json:"oldest_retained"`
	UnmatchedReleases uint64     `json:"unmatched_releases"`
	DiskBytes         uint64     `json:"disk_bytes"`
	RecordBytes       uint64     `json:"record_bytes"`
	IndexBytes        uint64     `json:"index_bytes"`
	OpenBytes         uint64     `json:"open_bytes"`
}

// AuditStatus summarises the audit log.
type AuditStatus struct {
	Entries uint64 `json:"entries"`
}

// Status is the admin's view of the agent, shown by `blocknat status`: the
// figures the metrics endpoint exports, from the same snapshot.
type Status struct {
	Started       time.Time         `json:"started"`
	Epoch         uint32            `json:"epoch"`
	EpochSince    time.Time         `json:"epoch_since"`
	Subscribers   uint32            `json:"subscribers"`
	PoolAddresses int               `json:"pool_addresses"`
	BlockSize     uint16            `json:"block_size"`
	DataPlane     map[string]uint64 `json:"data_plane"`
	Records       RecordStatus      `json:"records"`
	Sweep         SweepStatus       `json:"sweep"`
	Retention     RetentionStatus   `json:"retention"`
	AuditEntries  uint64            `json:"audit_entries"`
	// Alarm says why records may not be being written; empty when they
	// are. It is blocknat_records_alarm's reason.
	Alarm     []string        `json:"alarm"`
	SelfCheck SelfCheckStatus `json:"selfcheck"`
	Blocks    *BlockStatus    `json:"blocks,omitempty"`
	// Overflow is the overflow pool (ports.overflow); absent when it is
	// off.
	Overflow *OverflowStatus `json:"overflow,omitempty"`
	// PCP is the PCP and NAT-PMP server (pcp.enabled); absent when it is
	// off.
	PCP *PCPStatus `json:"pcp,omitempty"`
	// Replication is the copy in PostgreSQL (replicate.postgres); absent
	// when the router does not replicate.
	Replication *ReplicationStatus `json:"replication,omitempty"`
	StoreWrites StoreWritesStatus  `json:"store_writes"`
	// Guard is the nftables guard that keeps untranslated subscriber
	// packets off the outside interfaces.
	Guard GuardStatus `json:"guard"`
	// Disk is state_dir's free space (blocknat_state_dir_* metrics).
	Disk DiskStatus `json:"disk"`
	// AuditLog is whether the audit log can write.
	AuditLog AuditLogStatus `json:"audit_log"`
	// Clock is the router's clock at the agent's last read (the
	// blocknat_clock_* metrics).
	Clock ClockStatus `json:"clock"`
	// Unreadable lists the parts of the state that could not be read.
	Unreadable []string `json:"unreadable,omitempty"`
	// Ready is true once the agent has started: the data plane attached
	// and translating, the store open, the first reconcile done. It is
	// the moment the agent tells systemd READY=1, and what `blocknat
	// status --wait` waits for; false again once it is stopping.
	Ready bool `json:"ready"`
}

// GuardStatus is the nftables guard's state (blocknat_guard_* metrics).
type GuardStatus struct {
	Installed bool `json:"installed"`
	// Problem says what is missing from a damaged guard table.
	Problem    string   `json:"problem,omitempty"`
	Prefixes   []string `json:"prefixes,omitempty"`
	Interfaces []string `json:"interfaces,omitempty"`
	// DroppedPackets and DroppedBytes are what the guard stopped.
	DroppedPackets uint64 `json:"dropped_packets"`
	DroppedBytes   uint64 `json:"dropped_bytes"`
	// Missing counts the agent's checks that found the guard missing or
	// changed, or could not install it, since it started.
	Missing uint64 `json:"missing"`
}

// DiskStatus is state_dir's free space and reserve.
type DiskStatus struct {
	FreeBytes    uint64 `json:"free_bytes"`
	SizeBytes    uint64 `json:"size_bytes"`
	MinFreeBytes uint64 `json:"min_free_bytes"`
	// Low is true while record and lease writes are paused for want of
	// space (the alarm's disk_low).
	Low   bool      `json:"low"`
	Since time.Time `json:"since,omitzero"`
	// ReserveBytes is disk.reserve; ReserveHeldBytes what the ballast
	// holds now (0 until there is room for it).
	ReserveBytes     uint64 `json:"reserve_bytes"`
	ReserveHeldBytes uint64 `json:"reserve_held_bytes"`
	// ReserveReleased says when the agent gave the ballast up itself.
	ReserveReleased string `json:"reserve_released,omitempty"`
	Error           string `json:"error,omitempty"`
}

// AuditLogStatus is whether the audit log can write; while it cannot,
// lookups are refused.
type AuditLogStatus struct {
	Failing   bool      `json:"failing"`
	LastError string    `json:"last_error,omitempty"`
	Since     time.Time `json:"since,omitzero"`
}

// SelfCheckStatus is the self-check canary's state.
type SelfCheckStatus struct {
	Enabled     bool      `json:"enabled"`
	Interval    string    `json:"interval,omitempty"`
	Checks      uint64    `json:"checks"`
	Failures    uint64    `json:"failures"`
	Failing     bool      `json:"failing"`
	LastAt      time.Time `json:"last_at,omitzero"`
	LastSuccess time.Time `json:"last_success,omitzero"`
	LastError   string    `json:"last_error,omitempty"`
}

// BlockStatus is the kernel tables' occupancy, read when status is asked.
type BlockStatus struct {
	Active    int `json:"active"`
	Flows     int `json:"flows"`
	BlockSize int `json:"block_size"`
	Full      int `json:"full"`
	// MeanUtilisation is the mean share of their ports the active blocks
	// hold; Utilisation counts the active blocks at or below each share.
	MeanUtilisation float64             `json:"mean_utilisation"`
	Utilisation     []UtilisationBucket `json:"utilisation"`
}

// OverflowStatus is the overflow pool's occupancy, and the claims the data
// plane refused since it was loaded: at max_blocks, or with no free block.
type OverflowStatus struct {
	InUse       int    `json:"in_use"`
	Free        int    `json:"free"`
	MaxBlocks   int    `json:"max_blocks"`
	Claims      uint64 `json:"claims"`
	RefusedMax  uint64 `json:"refused_max_blocks"`
	RefusedPool uint64 `json:"refused_pool_empty"`
}

// PCPResultSuccess is the result PCPStatus.Results counts every
// successful answer under, PCP's (SUCCESS) and NAT-PMP's alike; every other
// result is a refusal, named as its protocol names it.
const PCPResultSuccess = "SUCCESS"

// PCPStatus is the PCP server's mappings and what it did with the
// requests it received since the agent started (the blocknat_pcp_*
// metrics). Like them it names no subscriber and no address.
type PCPStatus struct {
	// Mappings counts the mappings held by protocol: tcp and udp.
	Mappings map[string]int `json:"mappings"`
	// RequestsAnswered counts the answers sent; Refused those of them
	// whose result is not PCPResultSuccess.
	RequestsAnswered uint64 `json:"requests_answered"`
	Refused          uint64 `json:"refused"`
	// Results counts the answers by result code, every version and
	// opcode summed.
	Results map[string]uint64 `json:"results"`
	// Dropped counts the requests left unanswered; DroppedBy the same by
	// reason (malformed, rate_limited, refusal_rate_limited, send_failed,
	// internal), those never seen left out.
	Dropped   uint64            `json:"dropped"`
	DroppedBy map[string]uint64 `json:"dropped_by,omitempty"`
	// Suspect counts the requests that arrived on the suspect port, having
	// failed the inside source validation (each is also answered or
	// dropped).
	Suspect uint64 `json:"suspect"`
	// Announcements counts the ANNOUNCE messages sent.
	Announcements uint64 `json:"announcements"`
}

// UtilisationBucket is one cumulative bucket of the utilisation histogram.
type UtilisationBucket struct {
	AtMost float64 `json:"at_most"`
	Blocks uint64  `json:"blocks"`
}

// StoreWritesStatus summarises the record store's commits since start.
type StoreWritesStatus struct {
	Commits     uint64  `json:"commits"`
	Errors      uint64  `json:"errors"`
	MeanSeconds float64 `json:"mean_seconds"`
	LastSeconds float64 `json:"last_seconds"`
	MaxSeconds  float64 `json:"max_seconds"`
}

// RecordStatus says whether records are being written, which is what the
// law cares about most.
type RecordStatus struct {
	Writing        bool      `json:"writing"`
	LastError      string    `json:"last_error,omitempty"`
	LastWrite      time.Time `json:"last_write,omitzero"`
	EventsRead     uint64    `json:"events_read"`
	Written        uint64    `json:"written"`
	Dropped        uint64    `json:"dropped"`
	OpenRecords    int       `json:"open_records"`
	DiskBytes      uint64    `json:"disk_bytes"`
	Recovered      int       `json:"recovered_last_reconcile"`
	ClosedByRecon  int       `json:"closed_last_reconcile"`
	OldestRetained time.Time `json:"oldest_retained,omitzero"`
}

// SweepStatus is the last sweep's result.
type SweepStatus struct {
	Flows        int `json:"flows"`
	ActiveBlocks int `json:"active_blocks"`
	Expired      int `json:"expired_last_sweep"`
	Released     int `json:"released_last_sweep"`
}

// RetentionStatus is the last retention sweep.
type RetentionStatus struct {
	Period string    `json:"period"`
	LastAt time.Time `json:"last_at,omitzero"`
}
