package pgfleet_test

import (
	"context"
	"strings"
	"testing"
	"time"
)

// TestRetireRouter: a router that left the fleet is marked retired, with
// the role and time on record; a name that never replicated is refused;
// a retired router that delivers again is back in service.
func TestRetireRouter(t *testing.T) {
	ctx := context.Background()
	f := newFleet(t)
	owner := f.database(t, "fleet", 0)
	r1 := f.router(t, "r1", "fleet")
	entries := auditEntries(t, 3)
	if _, err := r1.IngestAudit(ctx, "r1", entries[:2]); err != nil {
		t.Fatal(err)
	}
	if _, err := owner.RetireRouter(ctx, "r9"); err == nil || !strings.Contains(err.Error(), "never replicated") {
		t.Errorf("retire a router that never replicated: %v, want a refusal saying so", err)
	}
	st, err := owner.RetireRouter(ctx, "r1")
	if err != nil {
		t.Fatal(err)
	}
	if st.Name != "r1" || st.Audit != 2 || st.Retired.IsZero() || st.InService() {
		t.Errorf("retired r1: %+v, want audit seq 2, a retirement time, not in service", st)
	}
	if by := f.strings(t, "fleet", "SELECT by_role FROM blocknat.retired_routers WHERE router = 'r1'"); len(by) != 1 || by[0] != ownerRole {
		t.Errorf("retired by %v, want %s on record", by, ownerRole)
	}
	// The router role may not undo it, nor retire anyone.
	if _, err := r1.RetireRouter(ctx, "r1"); pgCodeOf(err) != "42501" {
		t.Errorf("the router role retiring: %v, want permission denied", err)
	}

	time.Sleep(10 * time.Millisecond) // a delivery strictly after the retirement
	if _, err := r1.IngestAudit(ctx, "r1", entries[2:]); err != nil {
		t.Fatal(err)
	}
	routers, err := owner.Routers(ctx)
	if err != nil || len(routers) != 1 {
		t.Fatalf("routers: %+v, %v", routers, err)
	}
	if r := routers[0]; !r.InService() || r.Audit != 3 || r.Retired.IsZero() {
		t.Errorf("r1 after delivering again: %+v, want in service with audit seq 3, its retirement still on record", r)
	}
}
