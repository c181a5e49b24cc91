package metrics

import (
	"time"

	"github.com/blocknat/blocknat/userspace/replicate"
	"github.com/blocknat/blocknat/userspace/wire"
	"github.com/prometheus/client_golang/prometheus"
)

// Replication metric names (replicate.postgres).
const (
	ReplicationConnected   = "blocknat_replication_connected"
	ReplicationLag         = "blocknat_replication_lag_seconds"
	ReplicationMaxLag      = "blocknat_replication_max_lag_seconds"
	ReplicationOutbox      = "blocknat_replication_outbox_events"
	ReplicationAuditQueued = "blocknat_replication_audit_pending_entries"
	ReplicationSentTotal   = "blocknat_replication_sent_total"
	ReplicationLastSuccess = "blocknat_replication_last_success_timestamp_seconds"
)

// labelStream is the replicated stream: store (records, leases, epochs)
// or audit.
const labelStream = "stream"

// replicationDescs are the replication metrics, exported while the router
// replicates.
type replicationDescs struct {
	connected, lag, maxLag, outbox, auditPending, sent, lastSuccess *prometheus.Desc
}

func newReplicationDescs(d func(name, help string, labels ...string) *prometheus.Desc) replicationDescs {
	return replicationDescs{
		connected: d(ReplicationConnected, "1 while the last exchange with the PostgreSQL log server succeeded; else 0."),
		lag: d(ReplicationLag,
			"Age of the oldest change (record, lease, epoch or audit entry) not yet in PostgreSQL; 0 when none waits."),
		maxLag: d(ReplicationMaxLag, "replicate.max_lag: above it the alarm's replication reason holds."),
		outbox: d(ReplicationOutbox,
			"Changes kept in the store's outbox on the router's disk until PostgreSQL has them."),
		auditPending: d(ReplicationAuditQueued, "Audit entries not yet in PostgreSQL."),
		sent:         d(ReplicationSentTotal, "Changes PostgreSQL took since the agent started, by stream: store or audit.", labelStream),
		lastSuccess:  d(ReplicationLastSuccess, "Unix time PostgreSQL last took a batch or had everything; 0 before the first."),
	}
}

func (r replicationDescs) list() []*prometheus.Desc {
	return []*prometheus.Desc{r.connected, r.lag, r.maxLag, r.outbox, r.auditPending, r.sent, r.lastSuccess}
}

func (r replicationDescs) collect(ch chan<- prometheus.Metric, s *replicate.State) {
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	connected := 0.0
	if s.Connected {
		connected = 1
	}
	gauge(r.connected, connected)
	gauge(r.lag, s.Lag.Seconds())
	gauge(r.maxLag, s.MaxLag.Seconds())
	gauge(r.outbox, float64(s.OutboxDepth))
	gauge(r.auditPending, float64(s.AuditPending))
	for _, stream := range knownAndSeen([]string{replicate.StreamStore, replicate.StreamAudit}, s.Sent) {
		ch <- prometheus.MustNewConstMetric(r.sent, prometheus.CounterValue, float64(s.Sent[stream]), stream)
	}
	last := 0.0
	if !s.LastSuccess.IsZero() {
		last = float64(s.LastSuccess.UnixNano()) / 1e9
	}
	gauge(r.lastSuccess, last)
}

// ReplicationStatusOf is what `blocknat status` shows of s: nil when the
// router does not replicate (s is nil).
func ReplicationStatusOf(s *replicate.State) *wire.ReplicationStatus {
	if s == nil {
		return nil
	}
	return &wire.ReplicationStatus{Router: s.Router, Connected: s.Connected,
		StoreSent: s.StoreSent, StoreLast: s.StoreLast, AuditSent: s.AuditSent, AuditLast: s.AuditLast,
		OutboxDepth: s.OutboxDepth, AuditPending: s.AuditPending,
		Lag: s.Lag.Round(time.Millisecond).String(), MaxLag: s.MaxLag.String(),
		LastSuccess: s.LastSuccess, LastError: s.LastError, LastErrorAt: s.LastErrorAt, Stopped: s.Stopped}
}
