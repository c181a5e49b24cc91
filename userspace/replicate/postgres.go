package replicate

import (
	"context"
	"errors"
	"fmt"

	"github.com/blocknat/blocknat/userspace/audit"
	"github.com/blocknat/blocknat/userspace/pgfleet"
	"github.com/blocknat/blocknat/userspace/store"
)

// Postgres returns a Connect for the database at dsn (userspace/pgfleet).
func Postgres(dsn string) func(ctx context.Context) (Sink, error) {
	return func(ctx context.Context) (Sink, error) {
		db, err := pgfleet.Connect(ctx, dsn)
		if err != nil {
			return nil, err
		}
		return pgSink{db}, nil
	}
}

// ClosePostgres closes a Sink that Postgres opened.
func ClosePostgres(s Sink) {
	if p, ok := s.(pgSink); ok {
		p.db.Close()
	}
}

// NewSink is a Sink over a database already open (a fleet service's).
func NewSink(db *pgfleet.DB) Sink { return pgSink{db} }

type pgSink struct{ db *pgfleet.DB }

func (p pgSink) Progress(ctx context.Context, router string) (Progress, error) {
	pr, err := p.db.Progress(ctx, router)
	return Progress{Store: pr.Store, Audit: pr.Audit}, err
}

func (p pgSink) Ingest(ctx context.Context, router string, evs []store.OutboxEvent) (uint64, error) {
	last, err := p.db.Ingest(ctx, router, evs)
	return last, gapOf(err)
}

func (p pgSink) IngestAudit(ctx context.Context, router string, es []audit.Entry) (uint64, error) {
	last, err := p.db.IngestAudit(ctx, router, es)
	return last, gapOf(err)
}

func (p pgSink) SkipAudit(ctx context.Context, router string, have, first uint64) (uint64, error) {
	return p.db.SkipAudit(ctx, router, have, first)
}

func gapOf(err error) error {
	var gap *pgfleet.GapError
	if errors.As(err, &gap) {
		return fmt.Errorf("%w: %v", ErrGap, err)
	}
	return err
}
