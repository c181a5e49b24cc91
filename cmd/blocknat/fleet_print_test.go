package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/blocknat/blocknat/userspace/wire"
)

// TestFleetAnswerNamesRouters: a fleet's candidate that merges two routers'
// records lists each router's interval; one router's names it; owners and
// leases name theirs; a router's own answer says nothing of routers.
func TestFleetAnswerNamesRouters(t *testing.T) {
	at := time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC)
	aEnd := at.Add(500 * time.Millisecond)
	epoch := wire.EpochSummary{ID: 1, Start: at.Add(-time.Hour)}
	merged := wire.Record{Subscriber: 3, Start: at.Add(-time.Minute), Epoch: 1, EpochInForce: &epoch, Flags: []string{},
		Intervals: []wire.RecordedInterval{
			{Router: "cgn-a", Start: at.Add(-time.Minute), End: &aEnd, Epoch: 1, Flags: []string{}},
			{Router: "cgn-b", Start: at.Add(1200 * time.Millisecond), Epoch: 7, Flags: []string{wire.FlagRecovered}},
		},
		LeasesFrom: at, LeasesTo: at.Add(time.Second),
		Leases: []wire.LeaseInfo{{MAC: "02:00:00:00:00:0a", Start: at.Add(-time.Hour), Source: "dnsmasq", Routers: []string{"cgn-a", "cgn-b"}}},
	}
	single := wire.Record{Subscriber: 4, Start: at, Epoch: 7, Flags: []string{}, Router: "cgn-b",
		Intervals: []wire.RecordedInterval{{Router: "cgn-b", Start: at, Epoch: 7, Flags: []string{}}}}
	ans := &wire.LookupResponse{
		Query:      wire.LookupQuery{Precision: "1s", Tolerance: "0s", From: at, To: at.Add(time.Second)},
		Candidates: []wire.Record{merged, single},
		Owners: []wire.Owner{
			{Router: "cgn-a", Epoch: epoch, From: at, To: at.Add(time.Second), Mapped: true, Active: true},
			{Router: "cgn-b", Epoch: wire.EpochSummary{ID: 7}, From: at, To: at.Add(time.Second), Mapped: true,
				Before: &wire.Nearest{Router: "cgn-a", Start: at.Add(-time.Minute), End: &aEnd, Gap: "0s"}},
		},
	}
	var out bytes.Buffer
	printLookup(&out, "2026-11-20T12:00:00Z", ans)
	s := out.String()
	for _, w := range []string{
		"    recorded by 2 router records:\n" +
			"      router cgn-a: 2026-11-20T11:59:00.000Z .. 2026-11-20T12:00:00.500Z, epoch 1\n" +
			"      router cgn-b: 2026-11-20T12:00:01.200Z .. still active, epoch 7 [recovered]\n",
		"[reported by cgn-a, cgn-b]",
		"  subscriber 4  inside invalid IP\n",
		"    recorded by router cgn-b\n",
		"  mapping of router cgn-a's epoch 1, in force",
		"  mapping of router cgn-b's epoch 7, in force",
		"before the searched interval, on router cgn-a\n",
	} {
		if !strings.Contains(s, w) {
			t.Errorf("fleet lookup lacks %q:\n%s", w, s)
		}
	}

	out.Reset()
	ans.Candidates = []wire.Record{{Subscriber: 3, Start: at, Epoch: 1, EpochInForce: &epoch, Flags: []string{}}}
	ans.Owners = []wire.Owner{{Epoch: epoch, From: at, To: at.Add(time.Second), Mapped: true, Active: true}}
	printLookup(&out, "2026-11-20T12:00:00Z", ans)
	if s := out.String(); strings.Contains(s, "recorded by") || !strings.Contains(s, "  mapping of epoch 1, in force") {
		t.Errorf("a router's answer:\n%s", s)
	}
}

// TestFleetStatusShown: a fleet's status lists each router's copy.
func TestFleetStatusShown(t *testing.T) {
	at := time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC)
	var out bytes.Buffer
	err := printStatus(&out, &wire.StatusResponse{AuditSeq: 9, Fleet: &wire.FleetStatus{Name: "east", SchemaVersion: 2,
		Routers: []wire.FleetRouter{{Name: "cgn-a", StoreSeq: 120, AuditSeq: 7, LastIngest: &at}, {Name: "cgn-b"}},
		Retention: wire.RetentionStatus{Period: "365d", LastAt: at},
		Replication: &wire.ReplicationStatus{AuditSent: 8, AuditLast: 9, Lag: "1s", MaxLag: "5m0s"}}})
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{
		"fleet east (database schema version 2)\n",
		"  router cgn-a                store seq 120, audit seq 7, last ingest 2026-11-20T12:00:00.000Z\n",
		"  router cgn-b                store seq 0, audit seq 0, last ingest never\n",
		"  retention            365d (last run 2026-11-20T12:00:00.000Z)\n",
		"  own audit log copy   8 of 9 entries in the database, lag 1s (bound 5m0s)\n",
	} {
		if !strings.Contains(out.String(), w) {
			t.Errorf("fleet status lacks %q:\n%s", w, out.String())
		}
	}
}
