package api

import (
	"bytes"
	"context"
	"encoding/json"
	"github.com/blocknat/blocknat/test/testutil"
	"net"
	"net/netip"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/blocknat/blocknat/userspace/audit"
	"github.com/blocknat/blocknat/userspace/auditwire"
	"github.com/blocknat/blocknat/userspace/leasehook"
	"github.com/blocknat/blocknat/userspace/mapping"
	"github.com/blocknat/blocknat/userspace/store"
	"github.com/blocknat/blocknat/userspace/wire"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// The Wi-Fi fixture: one epoch whose parameters really are the mapping's
// (100.64.0.0/24 over two addresses: 128 subscribers per address, blocks of
// 504), so that the owners the API computes are the ones the data plane
// would. Subscriber 3 (100.64.0.3) owns 198.51.100.10 ports 2536-3039. It
// held the block from 12:00:01.7 to 12:00:20 and again from 12:05 on. Its
// address was leased to phone A until A released it at 12:00:10, and to
// phone B from 12:00:12.
var (
	wifiInside = netip.MustParseAddr("100.64.0.3")
	wifiPublic = netip.MustParseAddr("198.51.100.10")
	macA       = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x0a}
	macB       = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x0b}
)

func openWiFiStore(t *testing.T) *store.Store {
	t.Helper()
	c := testutil.NewClock(mustTime(t, "2026-11-20T12:30:00Z"), 0)
	st, err := store.Open("db", store.Options{FS: vfs.NewMem(), Now: c.Now, Logger: quietLogger()})
	if err != nil {
		t.Fatalf("store.Open: %v", err)
	}
	t.Cleanup(func() { st.Close() })
	m, err := mapping.New([]netip.Prefix{netip.MustParsePrefix("100.64.0.0/24")},
		[]netip.Prefix{netip.MustParsePrefix("198.51.100.10/31")}, 1024, 65535, 0)
	if err != nil {
		t.Fatal(err)
	}
	err = st.PutEpoch(store.Epoch{ID: 1, Start: mustTime(t, "2026-11-01T00:00:00Z"), Prefixes: m.Prefixes, Pool: m.Pool,
		PortLo: m.PortLo, PortHi: m.PortHi, BlockSize: m.BlockSize, Ratio: m.Ratio, Hash: m.Hash()})
	if err != nil {
		t.Fatal(err)
	}
	blk, err := m.Forward(wifiInside)
	if err != nil || blk.PortLo != 2536 || blk.PortHi != 3039 {
		t.Fatalf("fixture mapping: %+v %v", blk, err)
	}
	rec := store.Record{Subscriber: blk.Subscriber, Inside: wifiInside, Public: blk.Public, PortLo: blk.PortLo, PortHi: blk.PortHi, Epoch: 1}
	first, second := rec, rec
	first.Start = mustTime(t, "2026-11-20T12:00:01.7Z")
	second.Start = mustTime(t, "2026-11-20T12:05:00Z")
	release := store.Record{Subscriber: rec.Subscriber, Public: rec.Public, PortLo: rec.PortLo, End: mustTime(t, "2026-11-20T12:00:20Z")}
	if err := st.Apply([]store.Op{{Kind: store.OpActivate, Record: first}, {Kind: store.OpRelease, Record: release}}); err != nil {
		t.Fatal(err)
	}
	if err := st.Apply([]store.Op{{Kind: store.OpActivate, Record: second}}); err != nil {
		t.Fatal(err)
	}
	err = st.ApplyLeases([]store.LeaseEvent{
		{Kind: store.LeaseAdd, Time: mustTime(t, "2026-11-20T11:50:00Z"), Inside: wifiInside, MAC: macA, Hostname: "phone-a",
			Expires: mustTime(t, "2026-11-20T12:50:00Z"), Source: "dnsmasq"},
		{Kind: store.LeaseRelease, Time: mustTime(t, "2026-11-20T12:00:10Z"), Inside: wifiInside, MAC: macA, Source: "dnsmasq"},
		{Kind: store.LeaseAdd, Time: mustTime(t, "2026-11-20T12:00:12Z"), Inside: wifiInside, MAC: macB, Hostname: "phone-b",
			Expires: mustTime(t, "2026-11-20T13:00:12Z"), Source: "dnsmasq"},
	})
	if err != nil {
		t.Fatalf("ApplyLeases: %v", err)
	}
	return st
}

func wifiHarness(t *testing.T, roles ...Role) *harness {
	t.Helper()
	st := openWiFiStore(t)
	h := newHarness(t, harnessOptions{roles: rootRoles(roles...), store: st})
	h.store = st
	return h
}

func macsOf(leases []wire.LeaseInfo) []string {
	var out []string
	for _, l := range leases {
		out = append(out, l.MAC)
	}
	return out
}

func TestStatedTimePrecision(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
	}{
		{"2026-11-20T12:00:01Z", time.Second},
		{"2026-11-20T12:00:01+01:00", time.Second},
		{"2026-11-20T12:00:01.7Z", 100 * time.Millisecond},
		{"2026-11-20T12:00:01.700Z", time.Millisecond},
		{"2026-11-20T12:00:01.000000001-05:00", time.Nanosecond},
	} {
		_, got, f := parseStatedTime("time", tc.in)
		if f != nil || got != tc.want {
			t.Errorf("%s: precision %s (%v), want %s", tc.in, got, f, tc.want)
		}
	}
	if _, _, f := parseStatedTime("time", "2026-11-20T12:00:01.0000000001Z"); f == nil {
		t.Error("ten fractional digits accepted")
	}
}

// TestLookupWholeSecond is the false "nobody" of a time copied from a
// server log: the block became active at 12:00:01.7, inside the stated
// second 12:00:01.
func TestLookupWholeSecond(t *testing.T) {
	h := wifiHarness(t, RoleInvestigator)
	ctx := context.Background()
	ans, err := h.client.Lookup(ctx, wire.LookupRequest{IP: "198.51.100.10", Port: 2600, Time: "2026-11-20T12:00:01Z", Purpose: "case 9"})
	if err != nil {
		t.Fatal(err)
	}
	q := ans.Query
	if !q.From.Equal(mustTime(t, "2026-11-20T12:00:01Z")) || !q.To.Equal(mustTime(t, "2026-11-20T12:00:02Z")) || q.Precision != "1s" {
		t.Errorf("searched %+v, want [12:00:01, 12:00:02)", q)
	}
	if len(ans.Candidates) != 1 {
		t.Fatalf("candidates %+v, want the block active from 12:00:01.7", ans.Candidates)
	}
	c := ans.Candidates[0]
	if c.Inside != wifiInside || c.Coverage != wire.CoveragePart || !slices.Equal(macsOf(c.Leases), []string{macA.String()}) {
		t.Errorf("candidate %+v, want 100.64.0.3 covering part of the second, leased to phone A", c)
	}
	if !c.LeasesFrom.Equal(mustTime(t, "2026-11-20T12:00:01.7Z")) {
		t.Errorf("leases resolved from %s, want the record's start", c.LeasesFrom)
	}
	if len(ans.Owners) != 1 || !ans.Owners[0].Mapped || !ans.Owners[0].Active || ans.Owners[0].Inside != wifiInside || ans.Owners[0].PortLo != 2536 {
		t.Errorf("owners %+v", ans.Owners)
	}

	// A stated tenth of a second before the activation: no record, but the
	// mapping's owner and the record 0.1 s after.
	ans, err = h.client.Lookup(ctx, wire.LookupRequest{IP: "198.51.100.10", Port: 2600, Time: "2026-11-20T12:00:01.5Z", Purpose: "case 9"})
	if err != nil {
		t.Fatal(err)
	}
	if len(ans.Candidates) != 0 || ans.Query.Precision != "100ms" || len(ans.Owners) != 1 {
		t.Fatalf("answer %+v", ans)
	}
	o := ans.Owners[0]
	if !o.Mapped || o.Active || o.Subscriber != 3 || o.Inside != wifiInside || o.Before != nil || o.After == nil ||
		o.After.Gap != "100ms" || !o.After.Start.Equal(mustTime(t, "2026-11-20T12:00:01.7Z")) {
		t.Errorf("owner %+v (after %+v), want subscriber 3 with the record 100ms after", o, o.After)
	}
}

func TestLookupNearestAndUnmapped(t *testing.T) {
	h := wifiHarness(t, RoleInvestigator)
	ctx := context.Background()
	ans, err := h.client.Lookup(ctx, wire.LookupRequest{IP: "198.51.100.10", Port: 3039, Time: "2026-11-20T12:01:00Z", Purpose: "case 9"})
	if err != nil {
		t.Fatal(err)
	}
	if len(ans.Candidates) != 0 || len(ans.Owners) != 1 {
		t.Fatalf("answer %+v", ans)
	}
	o := ans.Owners[0]
	if o.Active || o.Before == nil || o.After == nil || o.Before.Gap != "40s" || o.After.Gap != "3m59s" || o.After.End != nil {
		t.Errorf("owner %+v before %+v after %+v", o, o.Before, o.After)
	}
	for _, tc := range []struct {
		ip     string
		port   uint16
		reason string
	}{
		{"198.51.100.12", 2600, "not in epoch 1's pool"},
		{"198.51.100.10", 1000, "outside epoch 1's blocks"},
	} {
		ans, err := h.client.Lookup(ctx, wire.LookupRequest{IP: tc.ip, Port: tc.port, Time: "2026-11-20T12:01:00Z", Purpose: "case 9"})
		if err != nil {
			t.Fatal(err)
		}
		if len(ans.Owners) != 1 || ans.Owners[0].Mapped || !strings.Contains(ans.Owners[0].Reason, tc.reason) {
			t.Errorf("%s:%d: owners %+v, want unmapped (%s)", tc.ip, tc.port, ans.Owners, tc.reason)
		}
	}
}

// TestLeasesNameTheDevice: one inside address, two phones one after the
// other; each lookup names the phone that held the address then, its audit
// entry names both subscriber and device, and a history or export by MAC
// names nobody else.
func TestLeasesNameTheDevice(t *testing.T) {
	h := wifiHarness(t, RoleInvestigator, RoleAuditor)
	ctx := context.Background()
	for _, tc := range []struct {
		time string
		mac  net.HardwareAddr
	}{
		{"2026-11-20T12:00:05Z", macA},
		{"2026-11-20T12:00:15Z", macB},
	} {
		ans, err := h.client.Lookup(ctx, wire.LookupRequest{IP: "198.51.100.10", Port: 2600, Time: tc.time, Purpose: "case 9"})
		if err != nil {
			t.Fatal(err)
		}
		if len(ans.Candidates) != 1 || ans.Candidates[0].Coverage != wire.CoverageAll {
			t.Fatalf("%s: candidates %+v", tc.time, ans.Candidates)
		}
		if got := macsOf(ans.Candidates[0].Leases); !slices.Equal(got, []string{tc.mac.String()}) {
			t.Errorf("%s: leases %v, want only %s", tc.time, got, tc.mac)
		}
		e := h.lastEntry()
		want := []string{audit.SubjectInside(wifiInside), audit.SubjectMAC(tc.mac)}
		slices.Sort(want)
		if !slices.Equal(e.Subjects, want) || e.AnswerSHA256 != ans.Evidence.AnswerSHA256 || e.AnswerSHA256 == "" {
			t.Errorf("%s: entry subjects %v answer %s, want %v and %s", tc.time, e.Subjects, e.AnswerSHA256, want, ans.Evidence.AnswerSHA256)
		}
	}

	hist, err := h.client.History(ctx, wire.HistoryRequest{MAC: macB.String(), From: "2026-11-20T12:00:00Z", To: "2026-11-20T12:30:00Z", Purpose: "case 9"})
	if err != nil {
		t.Fatal(err)
	}
	if len(hist.Leases) != 1 || hist.Leases[0].MAC != macB.String() || hist.Leases[0].Hostname != "phone-b" || len(hist.Records) != 2 {
		t.Fatalf("history by MAC: leases %+v records %d", hist.Leases, len(hist.Records))
	}
	for _, r := range hist.Records {
		if got := macsOf(r.Leases); !slices.Equal(got, []string{macB.String()}) {
			t.Errorf("history by MAC: record from %s names %v", r.Start, got)
		}
	}
	if !hist.Records[0].LeasesFrom.Equal(mustTime(t, "2026-11-20T12:00:12Z")) {
		t.Errorf("first record resolved from %s, want phone B's lease start", hist.Records[0].LeasesFrom)
	}

	var buf bytes.Buffer
	res, err := h.client.Export(ctx, wire.ExportRequest{From: "2026-11-20T00:00:00Z", To: "2026-11-21T00:00:00Z", Format: wire.FormatJSONL,
		MAC: macA.String(), Purpose: "case 9"}, &buf, nil)
	if err != nil || res.Records != 1 {
		t.Fatalf("export by MAC: %+v %v\n%s", res, err, buf.String())
	}
	var rec wire.Record
	if err := json.Unmarshal(buf.Bytes(), &rec); err != nil {
		t.Fatal(err)
	}
	if rec.Inside != wifiInside || !slices.Equal(macsOf(rec.Leases), []string{macA.String()}) {
		t.Errorf("export by MAC: %+v", rec)
	}
	if e := h.lastEntry(); e.Criteria["mac"] != macA.String() || !slices.Contains(e.Subjects, audit.SubjectMAC(macA)) {
		t.Errorf("export entry %+v", e)
	}

	// A full export resolves every record's leases too.
	buf.Reset()
	if _, err := h.client.Export(ctx, wire.ExportRequest{From: "2026-11-20T00:00:00Z", To: "2026-11-21T00:00:00Z", Format: wire.FormatCSV, Purpose: "case 9"}, &buf, nil); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 3 || !strings.HasSuffix(lines[1], ","+macA.String()+"|"+macB.String()) || !strings.HasSuffix(lines[2], ","+macB.String()) {
		t.Errorf("csv export:\n%s", buf.String())
	}

	// Who looked phone A up: the lookup whose answer named it, the export
	// that asked for it and the full export that held it; not the lookup
	// of phone B's second.
	subj, err := h.client.AuditSubject(ctx, wire.AuditSubjectRequest{MAC: macA.String(), From: "2026-11-01T00:00:00Z", To: "2027-01-01T00:00:00Z"})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, u := range subj.Uses {
		got = append(got, u.Action+"/"+strings.Join(u.Named, "+"))
		if u.Purpose != "case 9" || u.Role != string(RoleInvestigator) || u.Outcome != string(audit.OutcomeAnswered) {
			t.Errorf("use %+v", u)
		}
	}
	if !slices.Equal(got, []string{"lookup/answer", "export/criteria", "export/answer"}) {
		t.Errorf("uses of phone A: %v", got)
	}
	e := h.lastEntry()
	if e.Action != wire.ActionAuditSubject || !slices.Equal(e.Subjects, []string{audit.SubjectMAC(macA)}) || e.Role != string(RoleAuditor) {
		t.Errorf("subject search entry %+v", e)
	}
	// The search is itself a use, found by the next one.
	subj, err = h.client.AuditSubject(ctx, wire.AuditSubjectRequest{MAC: macA.String(), From: "2026-11-01T00:00:00Z", To: "2027-01-01T00:00:00Z"})
	if err != nil || len(subj.Uses) != 4 || subj.Uses[3].Action != wire.ActionAuditSubject {
		t.Errorf("second search: %+v %v", subj, err)
	}
	// By inside address: the two lookups (answer), the history whose
	// answer named it, and the export.
	subj, err = h.client.AuditSubject(ctx, wire.AuditSubjectRequest{Subscriber: wifiInside.String(), From: "2026-11-01T00:00:00Z", To: "2027-01-01T00:00:00Z"})
	if err != nil || len(subj.Uses) != 5 {
		t.Errorf("uses of %s: %+v %v", wifiInside, subj, err)
	}
}

// TestEvidenceFile: the file a lookup writes verifies offline with the
// audit key alone, and any changed byte fails the check.
func TestEvidenceFile(t *testing.T) {
	h := wifiHarness(t, RoleInvestigator)
	ans, err := h.client.Lookup(context.Background(), wire.LookupRequest{IP: "198.51.100.10", Port: 2600, Time: "2026-11-20T12:00:05Z", Purpose: "case 9"})
	if err != nil {
		t.Fatal(err)
	}
	data, err := wire.EncodeEvidenceFile(ans.Evidence)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := audit.LoadPublicKey(filepath.Join(h.logDir, "audit.pub"))
	if err != nil {
		t.Fatal(err)
	}
	f, err := wire.DecodeEvidenceFile(data)
	if err != nil {
		t.Fatal(err)
	}
	if err := auditwire.VerifyEvidence(f, pub); err != nil {
		t.Fatalf("untouched evidence: %v", err)
	}
	var inFile wire.LookupResponse
	if err := json.Unmarshal(f.Answer, &inFile); err != nil || len(inFile.Candidates) != 1 || inFile.Candidates[0].Leases[0].MAC != macA.String() {
		t.Errorf("answer in the file: %+v %v", inFile, err)
	}
	if f.Proof.Entry.Seq != ans.AuditSeq || f.Proof.Entry.Purpose != "case 9" {
		t.Errorf("proof entry %+v", f.Proof.Entry)
	}
	for i := range data {
		changed := bytes.Clone(data)
		changed[i] ^= 0x01
		f, err := wire.DecodeEvidenceFile(changed)
		if err == nil {
			err = auditwire.VerifyEvidence(f, pub)
		}
		if err == nil {
			t.Fatalf("byte %d changed (%q -> %q) and the evidence still verifies", i, data[i], changed[i])
		}
	}
	// Another log's key proves nothing.
	_, otherDir := openAuditLog(t)
	other, err := audit.LoadPublicKey(filepath.Join(otherDir, "audit.pub"))
	if err != nil {
		t.Fatal(err)
	}
	if err := auditwire.VerifyEvidence(f, other); err == nil {
		t.Error("evidence verifies with another log's key")
	}
}

// TestLeaseRole: the DHCP hook's role may add lease events and nothing
// else, and its audit entries never name an address or a MAC.
func TestLeaseRole(t *testing.T) {
	h := wifiHarness(t, RoleDHCP)
	ctx := context.Background()
	exp := mustTime(t, "2026-11-20T13:29:00Z")
	ev := wire.LeaseEvent{Kind: "add", Time: mustTime(t, "2026-11-20T12:29:00Z"), Inside: "100.64.0.9", MAC: "02:00:00:00:00:0c",
		Hostname: "laptop", Expires: &exp, Source: "kea"}
	resp, err := h.client.Leases(ctx, wire.LeasesRequest{Events: []wire.LeaseEvent{ev}})
	if err != nil || resp.Accepted != 1 {
		t.Fatalf("Leases: %+v %v", resp, err)
	}
	leases, err := h.store.LeasesOf(netip.MustParseAddr("100.64.0.9"), exp.Add(-time.Hour), exp)
	if err != nil || len(leases) != 1 || leases[0].Hostname != "laptop" {
		t.Errorf("stored leases %+v %v", leases, err)
	}
	e := h.lastEntry()
	line, _ := json.Marshal(e)
	if e.Action != wire.ActionLeases || e.Role != string(RoleDHCP) || e.Outcome != audit.OutcomeAnswered ||
		strings.Contains(string(line), "100.64.0.9") || strings.Contains(string(line), "02:00:00:00:00:0c") || strings.Contains(string(line), "laptop") {
		t.Errorf("lease entry %s", line)
	}
	if _, err := h.client.Lookup(ctx, wire.LookupRequest{IP: "198.51.100.10", Port: 2600, Time: "2026-11-20T12:00:05Z", Purpose: "x"}); err == nil {
		t.Error("the dhcp role may look up")
	}
	// A malformed event is refused whole, naming the event and field.
	bad := ev
	bad.MAC = "not-a-mac"
	_, err = h.client.Leases(ctx, wire.LeasesRequest{Events: []wire.LeaseEvent{ev, bad}})
	if err == nil || !strings.Contains(err.Error(), "events[1]") || !strings.Contains(err.Error(), "mac") {
		t.Errorf("malformed event: %v", err)
	}

	inv := wifiHarness(t, RoleInvestigator)
	if _, err := inv.client.Leases(ctx, wire.LeasesRequest{Events: []wire.LeaseEvent{ev}}); err == nil {
		t.Error("an investigator may add leases")
	}
}

// TestLeaseEventWireForm: a hook's event (leasehook.Event, also the spool's
// form on disk) and the API's (wire.LeaseEvent) are one form: the same
// fields, converted without loss, the same JSON byte for byte.
func TestLeaseEventWireForm(t *testing.T) {
	exp := mustTime(t, "2026-11-20T13:29:00Z")
	for _, ev := range []leasehook.Event{
		{Kind: leasehook.KindAdd, Time: mustTime(t, "2026-11-20T12:29:00Z"), Inside: "100.64.0.9", MAC: "02:00:00:00:00:0c",
			ClientID: "0102000000000c", Hostname: "laptop", Expires: &exp, Source: leasehook.SourceKea},
		{Kind: leasehook.KindRelease, Time: mustTime(t, "2026-11-20T12:29:00Z"), Inside: "100.64.0.9", MAC: "02:00:00:00:00:0c", Source: leasehook.SourceDnsmasq},
	} {
		want, err := json.Marshal(ev)
		if err != nil {
			t.Fatal(err)
		}
		got, err := json.Marshal(wire.LeaseEvent(ev))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("wire form %s, hook form %s", got, want)
		}
		var back leasehook.Event
		if err := json.Unmarshal(got, &back); err != nil || !reflect.DeepEqual(back, ev) {
			t.Errorf("hook form read back %+v %v, want %+v", back, err, ev)
		}
	}
}
