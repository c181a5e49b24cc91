package preflight

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/blocknat/blocknat/userspace/config"
	"github.com/blocknat/blocknat/userspace/pgfleet"
)

// replicationTimeout bounds the replication check: a log server that does
// not answer within it is as good as unreachable for this check.
const replicationTimeout = 5 * time.Second

// checkReplication connects to replicate.postgres as the router's role and
// reads how far the database holds this router's changes, which is the
// one thing the role may read. A failure never refuses a start (the outbox
// keeps every change until the database takes it), so the agent's start
// does not wait for it: only `blocknatd check --live` runs it.
func checkReplication(name string, r config.Replicate) Finding {
	ctx, cancel := context.WithTimeout(context.Background(), replicationTimeout)
	defer cancel()
	db, err := pgfleet.Connect(ctx, r.Postgres)
	if err != nil {
		return warn(name, "cannot reach the log server (%v): the router records all the same and keeps every change in its outbox "+
			"until it can; check the host, the passfile and pg_hba.conf (operator guide §12)", err)
	}
	defer db.Close()
	p, err := db.Progress(ctx, r.Router)
	if err != nil {
		var pe *pgconn.PgError
		if errors.As(err, &pe) && pe.Code == "42501" {
			return warn(name, "connects, but may not replicate as %q (%s): the router's database role must be named as replicate.router and be IN ROLE blocknat_router (operator guide §12.1)",
				r.Router, pe.Message)
		}
		if errors.As(err, &pe) && pe.Code == "42883" || errors.As(err, &pe) && pe.Code == "3F000" {
			return warn(name, "connects, but the database has no blocknat schema (%s): start the fleet service once, which creates it (operator guide §12.3)", pe.Message)
		}
		return warn(name, "connects, but cannot read this router's progress: %v", err)
	}
	return pass(name, "replicates as %s; the database holds this router's changes up to %d and its audit log up to %d",
		r.Router, p.Store, p.Audit)
}

// replicationCheck is the check's entry in the list, when the router
// replicates.
func replicationCheck(cfg *config.Config) []check {
	r := cfg.ReplicateSettings()
	if !r.Enabled() {
		return nil
	}
	name := fmt.Sprintf("replicate.postgres (router %s)", r.Router)
	return []check{{name: name, liveOnly: true, run: func() []Finding { return []Finding{checkReplication(name, r)} }}}
}
