package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/blocknat/blocknat/userspace/api"
	"github.com/blocknat/blocknat/userspace/audit"
	"github.com/blocknat/blocknat/userspace/config"
	"github.com/blocknat/blocknat/userspace/leasehook"
	"github.com/blocknat/blocknat/userspace/logattr"
	"github.com/blocknat/blocknat/userspace/metrics"
	"github.com/blocknat/blocknat/userspace/store"
)

// AuditDir is where the audit log lives under state_dir.
func AuditDir(cfg *config.Config) string { return filepath.Join(cfg.StateDir, "audit") }

func openAudit(cfg *config.Config, a *Agent) (*audit.Log, error) {
	log, err := audit.Open(AuditDir(cfg), audit.Options{
		KeyPath:            cfg.AuditKeyPath(),
		CheckpointEvery:    cfg.Audit.CheckpointEvery,
		CheckpointInterval: time.Duration(cfg.Audit.CheckpointInterval),
		Retention:          time.Duration(cfg.Retention.Audit),
		Logger:             a.log,
	})
	if err != nil {
		return nil, fmt.Errorf("open audit log: %w", err)
	}
	return log, nil
}

// Roles turns the configuration's role lists into the API's lookup tables.
func Roles(cfg *config.Config) api.Roles {
	r := api.Roles{UIDs: map[uint32][]api.Role{}, CertNames: map[string][]api.Role{}}
	for role, m := range map[api.Role]config.Members{
		api.RoleInvestigator: cfg.Roles.Investigator,
		api.RoleAuditor:      cfg.Roles.Auditor,
		api.RoleAdmin:        cfg.Roles.Admin,
		api.RoleDHCP:         cfg.Roles.DHCP,
	} {
		for _, uid := range m.UIDs {
			r.UIDs[uid] = append(r.UIDs[uid], role)
		}
		for _, name := range m.CertNames {
			r.CertNames[name] = append(r.CertNames[name], role)
		}
	}
	return r
}

// serveAPI runs the unix socket (always) and the TLS listener (when
// configured) until ctx ends.
func (a *Agent) serveAPI(ctx context.Context, srv *api.Server) <-chan error {
	errs := make(chan error, 2)
	n := 1
	go func() { errs <- srv.ServeUnix(ctx, a.cfg.API.Socket) }()
	if t := a.cfg.API.TLS; t != nil {
		n++
		go func() {
			cfg, err := tlsConfig(t)
			if err != nil {
				errs <- err
				return
			}
			errs <- srv.ServeTLS(ctx, t.Listen, cfg)
		}()
	}
	done := make(chan error, 1)
	go func() {
		var all []error
		for i := 0; i < n; i++ {
			all = append(all, <-errs)
		}
		done <- errors.Join(all...)
	}()
	return done
}

func tlsConfig(t *config.TLS) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(t.Cert, t.Key)
	if err != nil {
		return nil, fmt.Errorf("api.tls.cert/key: %w", err)
	}
	pem, err := os.ReadFile(t.ClientCA)
	if err != nil {
		return nil, fmt.Errorf("api.tls.client_ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("api.tls.client_ca %s: no PEM certificate in it", t.ClientCA)
	}
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS12,
	}, nil
}

// Status is the admin's view of the agent, also shown by `blocknat status`.
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
	Alarm       []string          `json:"alarm"`
	SelfCheck   SelfCheckStatus   `json:"selfcheck"`
	Blocks      *BlockStatus      `json:"blocks,omitempty"`
	StoreWrites StoreWritesStatus `json:"store_writes"`
	// Guard is the nftables guard that keeps untranslated subscriber
	// packets off the outside interfaces.
	Guard GuardStatus `json:"guard"`
	// Disk is state_dir's free space (blocknat_state_dir_* metrics).
	Disk DiskStatus `json:"disk"`
	// AuditLog is whether the audit log can write.
	AuditLog AuditLogStatus `json:"audit_log"`
	// Unreadable lists the parts of the state that could not be read.
	Unreadable []string `json:"unreadable,omitempty"`
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

func (a *Agent) status(context.Context) (any, error) {
	a.natMu.RLock()
	defer a.natMu.RUnlock()
	st := Status{Started: a.started, Epoch: a.epoch.ID, EpochSince: a.epoch.Start, Subscribers: a.mapping.Subscribers,
		PoolAddresses: len(a.mapping.Pool), BlockSize: a.mapping.BlockSize}
	snap := a.snapshot()
	st.statusOfSnapshot(snap)
	h := snap.Records
	st.Records = RecordStatus{Writing: !h.Failing, LastError: h.LastError, LastWrite: h.LastWrite, EventsRead: h.EventsRead,
		Written: h.RecordsWritten, Dropped: h.Dropped}
	if ss, err := a.store.Stats(); err == nil {
		st.Records.OpenRecords, st.Records.DiskBytes, st.Records.OldestRetained = ss.OpenRecords, ss.DiskBytes, ss.OldestRetained
	}
	a.mu.Lock()
	st.Records.Recovered, st.Records.ClosedByRecon = a.lastReconcile.Recovered, a.lastReconcile.Closed
	st.Sweep = SweepStatus{Flows: a.lastSweep.Flows, ActiveBlocks: a.lastSweep.ActiveBlocks, Expired: a.lastSweep.Expired, Released: a.lastSweep.Released}
	a.mu.Unlock()
	st.Retention = RetentionStatus{Period: a.cfg.Retention.Records.String(), LastAt: snap.RetentionSweep}
	st.AuditEntries = snap.AuditEntries
	return st, nil
}

// statusOfSnapshot fills the figures `blocknat status` shares with the
// metrics endpoint.
func (st *Status) statusOfSnapshot(s metrics.Snapshot) {
	st.DataPlane = s.DataPlane
	st.Alarm = s.Alarms()
	if st.Alarm == nil {
		st.Alarm = []string{}
	}
	sc := s.SelfCheck
	st.SelfCheck = SelfCheckStatus{Enabled: sc.Enabled, Checks: sc.Checks, Failures: sc.Failures, Failing: sc.Failing,
		LastAt: sc.LastAt, LastSuccess: sc.LastSuccess, LastError: sc.LastError}
	if sc.Interval > 0 {
		st.SelfCheck.Interval = sc.Interval.String()
	}
	if b := s.Blocks; b != nil {
		st.Blocks = &BlockStatus{Active: b.ActiveBlocks, Flows: b.Flows, BlockSize: int(b.BlockSize), Full: b.Full}
		if b.ActiveBlocks > 0 {
			st.Blocks.MeanUtilisation = b.Sum / float64(b.ActiveBlocks)
		}
		for i, bound := range metrics.UtilisationBuckets {
			if i < len(b.Counts) {
				st.Blocks.Utilisation = append(st.Blocks.Utilisation, UtilisationBucket{AtMost: bound, Blocks: b.Counts[i]})
			}
		}
	}
	g := s.Guard
	st.Guard = GuardStatus{Installed: g.Installed, Problem: g.Problem, Interfaces: g.Interfaces,
		DroppedPackets: g.DroppedPackets, DroppedBytes: g.DroppedBytes, Missing: g.Missing}
	for _, p := range g.Prefixes {
		st.Guard.Prefixes = append(st.Guard.Prefixes, p.String())
	}
	d := s.Disk
	st.Disk = DiskStatus{FreeBytes: d.Free, SizeBytes: d.Size, MinFreeBytes: d.MinFree, Low: d.Low, ReserveBytes: d.Reserve,
		ReserveHeldBytes: d.Held, ReserveReleased: d.Released, Error: d.Err}
	if d.Low {
		st.Disk.Since = d.Since
	}
	st.AuditLog = AuditLogStatus{Failing: s.Audit.Failing, LastError: s.Audit.LastError, Since: s.Audit.Since}
	w := s.Writes
	st.StoreWrites = StoreWritesStatus{Commits: w.Count, Errors: w.Errors, MeanSeconds: w.Mean.Seconds(),
		LastSeconds: w.Last.Seconds(), MaxSeconds: w.Max.Seconds()}
	for _, err := range s.Errors {
		st.Unreadable = append(st.Unreadable, err.Error())
	}
}

// deliverLeaseSpool stores the lease events that `blocknat lease` queued
// while the agent was away. A spool the agent may not read (it belongs to
// the DHCP server's user) is left to the next hook call, which delivers it
// through the API.
func (a *Agent) deliverLeaseSpool() {
	dir := a.cfg.Leases.Spool
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return
	}
	spool, err := leasehook.OpenSpool(dir)
	if err != nil {
		a.log.Warn("lease spool not delivered; the next lease hook call delivers it", logattr.Path, dir, logattr.Err, err)
		return
	}
	invalid := 0
	n, err := spool.Deliver(func(evs []leasehook.Event) error {
		out := make([]store.LeaseEvent, 0, len(evs))
		for _, e := range evs {
			ev, err := api.StoreLeaseEvent(e, time.Now())
			if err != nil {
				// The hook validated it before queueing; one that fails
				// now must not hold back the rest of the queue.
				invalid++
				a.log.Error("queued lease event refused", logattr.Path, dir, logattr.Err, err)
				continue
			}
			out = append(out, ev)
		}
		if len(out) == 0 {
			return nil
		}
		return a.store.ApplyLeases(out)
	})
	if err != nil {
		a.log.Warn("lease spool partly delivered; the next lease hook call delivers the rest", logattr.Path, dir, logattr.Count, n, logattr.Err, err)
		return
	}
	if n > 0 {
		a.log.Info("queued lease events delivered", logattr.Path, dir, logattr.Count, n-invalid, "refused", invalid)
	}
}
