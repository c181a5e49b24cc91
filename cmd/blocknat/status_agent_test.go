package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/blocknat/blocknat/userspace/wire"
)

// TestStatusShowsAgentFigures: blocknatd's status document is shown as the
// figures the metrics endpoint exports, the alarm first and with its
// reasons; a healthy agent says so.
func TestStatusShowsAgentFigures(t *testing.T) {
	st := wire.Status{
		Epoch: 2, Subscribers: 256, PoolAddresses: 2, BlockSize: 504,
		DataPlane: map[string]uint64{"out_packets": 10, "in_packets": 20, "out_bytes": 2048, "in_bytes": 512,
			"drop_block_full": 3, "drop_spoofed": 0, "pass_ttl": 4, "ringbuf_full": 5},
		Records:      wire.RecordStatus{EventsRead: 7, Written: 8},
		Alarm:        []string{"self-check failed: canary 9: not in the record store 10s after the kernel sent it"},
		SelfCheck:    wire.SelfCheckStatus{Enabled: true, Interval: "5m0s", Checks: 4, Failures: 1, Failing: true, LastError: "canary 9: not in the record store"},
		Blocks:       &wire.BlockStatus{Active: 2, Flows: 504, BlockSize: 504, Full: 1, MeanUtilisation: 0.5, Utilisation: []wire.UtilisationBucket{{AtMost: 0.1, Blocks: 1}, {AtMost: 1, Blocks: 2}}},
		StoreWrites:  wire.StoreWritesStatus{Commits: 6, Errors: 2, MeanSeconds: 0.0015},
		Retention:    wire.RetentionStatus{Period: "365d", LastAt: time.Date(2026, 11, 20, 0, 0, 0, 0, time.UTC)},
		AuditEntries: 41,
		Guard: wire.GuardStatus{Installed: true, Prefixes: []string{"100.64.0.0/24"}, Interfaces: []string{"bn-out"},
			DroppedPackets: 12, DroppedBytes: 1200, Missing: 1},
		Disk: wire.DiskStatus{FreeBytes: 3 << 20, SizeBytes: 64 << 20, MinFreeBytes: 16 << 20, Low: true,
			Since: time.Date(2026, 11, 20, 1, 0, 0, 0, time.UTC), ReserveBytes: 8 << 20},
		AuditLog: wire.AuditLogStatus{Failing: true, LastError: "no space left on device", Since: time.Date(2026, 11, 20, 1, 0, 0, 0, time.UTC)},
	}
	var out bytes.Buffer
	if err := printStatus(&out, &wire.StatusResponse{AuditSeq: 42, Agent: &st}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"records\n  alarm                RAISED: block records may not be written or answered from\n                       self-check failed: canary 9",
		"store commits        6, 2 failed; mean 1.5ms",
		"state_dir\n  free                 LOW: 3.0 MiB of 64.0 MiB, below disk.min_free 16.0 MiB since 2026-11-20T01:00:00.000Z",
		"reserve              MISSING: made once there is disk.min_free plus 8.0 MiB free",
		"audit log            CANNOT WRITE since 2026-11-20T01:00:00.000Z, lookups refused (retried every second): no space left on device",
		"state                FAILING: canary 9: not in the record store",
		"checks               4, 1 failed",
		"packets              out 10, in 20",
		"bytes                out 2.0 KiB, in 512 B",
		"ring buffer full     5",
		"drops                drop_block_full 3\n",
		"passed to kernel     pass_ttl 4",
		"active               2 of 256 subscribers, 1 full",
		"utilisation          mean 50.0% of 504 ports; blocks at or below: <=10% 1, <=100% 2",
		"last sweep           2026-11-20T00:00:00.000Z",
		"audit chain          41 entries",
		"guard\n  state                installed: drops IPv4 from 100.64.0.0/24 leaving by bn-out untranslated",
		"dropped              12 packets, 1.2 KiB",
		"found missing        1 (since start",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("status lacks %q:\n%s", want, out.String())
		}
	}

	st.Alarm, st.SelfCheck = []string{}, wire.SelfCheckStatus{Enabled: true, Interval: "5m0s", Checks: 5}
	out.Reset()
	if err := printStatus(&out, &wire.StatusResponse{Agent: &st}); err != nil {
		t.Fatal(err)
	}
	if s := out.String(); !strings.Contains(s, "alarm                ok: block records are being written") || !strings.Contains(s, "state                passing") {
		t.Errorf("healthy status:\n%s", s)
	}

	// A missing guard is said plainly, with what is missing.
	st.Guard = wire.GuardStatus{Problem: "no chain postrouting"}
	out.Reset()
	if err := printStatus(&out, &wire.StatusResponse{Agent: &st}); err != nil {
		t.Fatal(err)
	}
	if s := out.String(); !strings.Contains(s, "state                NOT INSTALLED: subscriber packets") || !strings.Contains(s, "no chain postrouting") {
		t.Errorf("status without the guard:\n%s", s)
	}
}

// TestStatusShowsPCP: the pcp row appears only while the server is on, with
// its mappings by protocol, the commonest refusals, the drops by reason and
// the suspect requests.
func TestStatusShowsPCP(t *testing.T) {
	st := wire.Status{Blocks: &wire.BlockStatus{Active: 1, Flows: 2, BlockSize: 504}}
	var out bytes.Buffer
	if err := printStatus(&out, &wire.StatusResponse{Agent: &st}); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out.String(), "  pcp ") {
		t.Errorf("pcp off, but status shows it:\n%s", out.String())
	}

	st.PCP = &wire.PCPStatus{
		Mappings:         map[string]int{"tcp": 3, "udp": 0},
		RequestsAnswered: 40, Refused: 13,
		Results: map[string]uint64{wire.PCPResultSuccess: 27, "NOT_AUTHORIZED": 4, "USER_EX_QUOTA": 4,
			"NO_RESOURCES": 2, "UNSUPP_OPTION": 1, "Not Authorized/Refused": 2},
		Dropped: 6, DroppedBy: map[string]uint64{"rate_limited": 5, "malformed": 1},
		Suspect: 4,
	}
	out.Reset()
	if err := printStatus(&out, &wire.StatusResponse{Agent: &st}); err != nil {
		t.Fatal(err)
	}
	want := "  pcp                  3 tcp, 0 udp mappings; 40 answered, 13 refused (NOT_AUTHORIZED 4, USER_EX_QUOTA 4, NO_RESOURCES 2)," +
		" 6 dropped (rate_limited 5, malformed 1), 4 on the suspect port\n"
	// With the port blocks, whose ports the mappings hold.
	s := out.String()
	at := strings.Index(s, want)
	if at < 0 || at < strings.Index(s, "port blocks\n") || at > strings.Index(s, "\nmapping\n") {
		t.Errorf("status lacks\n%s\nin the port blocks of\n%s", want, s)
	}

	// A server that answered nothing yet says so without empty lists.
	st.PCP = &wire.PCPStatus{Mappings: map[string]int{"tcp": 0, "udp": 0}, Results: map[string]uint64{}}
	out.Reset()
	if err := printStatus(&out, &wire.StatusResponse{Agent: &st}); err != nil {
		t.Fatal(err)
	}
	if want := "  pcp                  0 tcp, 0 udp mappings; 0 answered, 0 refused, 0 dropped, 0 on the suspect port\n"; !strings.Contains(out.String(), want) {
		t.Errorf("status lacks %q:\n%s", want, out.String())
	}
}
