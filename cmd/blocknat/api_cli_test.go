package main

import (
	"context"
	"crypto/sha256"
	"encoding/csv"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/blocknat/blocknat/userspace/api"
	"github.com/blocknat/blocknat/userspace/audit"
	"github.com/blocknat/blocknat/userspace/store"
	"github.com/blocknat/blocknat/userspace/wire"
)

func at(t *testing.T, s string) time.Time {
	t.Helper()
	v, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// agent is an in-process API server on a unix socket with a real store and
// a real audit log.
type agent struct {
	socket  string
	store   *store.Store
	log     *audit.Log
	logDir  string
	pubPath string // the public key, kept apart from the log as an auditor would
}

type agentOptions struct {
	roles api.Roles
	wrap  func(api.Store) api.Store
}

func allRoles() api.Roles {
	return api.Roles{UIDs: map[uint32][]api.Role{uint32(os.Getuid()): {api.RoleInvestigator, api.RoleAuditor, api.RoleAdmin}}}
}

func startAgent(t *testing.T, o agentOptions) *agent {
	t.Helper()
	a := &agent{socket: filepath.Join(t.TempDir(), "api.sock"), logDir: t.TempDir()}
	now := at(t, "2026-11-20T13:00:00Z")
	st, err := store.Open("db", store.Options{FS: vfs.NewMem(), Now: func() time.Time { return now }, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	a.store = st
	public := netip.MustParseAddr("198.51.100.10")
	for _, e := range []store.Epoch{
		{ID: 1, Start: at(t, "2026-11-01T00:00:00Z"), Prefixes: []netip.Prefix{netip.MustParsePrefix("100.64.0.0/24")},
			Pool: []netip.Addr{public, netip.MustParseAddr("198.51.100.11")}, PortLo: 1024, PortHi: 65535, BlockSize: 504, Ratio: 128,
			Hash: sha256.Sum256([]byte("epoch 1"))},
		{ID: 2, Start: at(t, "2026-11-20T12:00:01Z"), Prefixes: []netip.Prefix{netip.MustParsePrefix("100.64.0.0/23")},
			Pool: []netip.Addr{public, netip.MustParseAddr("198.51.100.11")}, PortLo: 1024, PortHi: 65535, BlockSize: 500, Ratio: 129,
			Hash: sha256.Sum256([]byte("epoch 2"))},
	} {
		if err := st.PutEpoch(e); err != nil {
			t.Fatal(err)
		}
	}
	recA := store.Record{Subscriber: 27, Inside: netip.MustParseAddr("100.64.0.27"), Public: public, PortLo: 14632, PortHi: 15135,
		Start: at(t, "2026-11-20T11:58:40.120Z"), Epoch: 1}
	recB := store.Record{Subscriber: 40, Inside: netip.MustParseAddr("100.64.0.40"), Public: public, PortLo: 14900, PortHi: 15399,
		Start: at(t, "2026-11-20T12:00:02.250Z"), Epoch: 2, Flags: store.FlagRecovered}
	if err := st.Apply([]store.Op{
		{Kind: store.OpActivate, Record: recA},
		{Kind: store.OpRelease, Record: store.Record{Subscriber: 27, Public: public, PortLo: 14632, End: at(t, "2026-11-20T12:00:00.500Z")}},
		{Kind: store.OpActivate, Record: recB},
	}); err != nil {
		t.Fatal(err)
	}

	log, err := audit.Open(a.logDir, audit.Options{KeyPath: filepath.Join(t.TempDir(), "audit.key")})
	if err != nil {
		t.Fatal(err)
	}
	a.log = log
	pem, err := audit.MarshalPublicKey(log.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	a.pubPath = filepath.Join(t.TempDir(), "audit.pub")
	if err := os.WriteFile(a.pubPath, pem, 0o644); err != nil {
		t.Fatal(err)
	}

	var s api.Store = st
	if o.wrap != nil {
		s = o.wrap(s)
	}
	srv := api.NewServer(api.Deps{Store: s, Audit: log, Roles: o.roles, Logger: quiet(),
		Status: func(context.Context) (wire.Status, store.Stats, error) {
			ss, err := s.Stats()
			return wire.Status{Epoch: 2, Subscribers: 512, PoolAddresses: 2, BlockSize: 500, Alarm: []string{}}, ss, err
		}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.ServeUnix(ctx, a.socket) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ServeUnix: %v", err)
		}
		log.Close()
	})
	for deadline := time.Now().Add(5 * time.Second); ; {
		c, err := net.Dial("unix", a.socket)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent socket never came up: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return a
}

func TestLookupCommand(t *testing.T) {
	a := startAgent(t, agentOptions{roles: allRoles()})
	base := []string{"lookup", "--socket", a.socket, "--ip", "198.51.100.10", "--port", "15123", "--purpose", "case 2026-4411"}

	r := runCLI(append(base, "--time", "2026-11-20T11:59:00Z")...)
	if r.code != exitOK || r.stderr != "" {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	want := `198.51.100.10:15123 at 2026-11-20T11:59:00Z: 1 candidate
  searched [2026-11-20T11:59:00.000Z, 2026-11-20T11:59:01.000Z) (the stated time covers 1s)
  subscriber 27  inside 100.64.0.27
    held the port for all of the searched interval
    block 198.51.100.10 ports 14632-15135
    active 2026-11-20T11:58:40.120Z .. 2026-11-20T12:00:00.500Z
    epoch 1 (in force since 2026-11-01T00:00:00.000Z)
      mapping 100.64.0.0/24 -> 198.51.100.10, 198.51.100.11; ports 1024-65535 in blocks of 504, 128 subscribers per address; parameters hash ` + shortHash("epoch 1") + `
    device: no DHCP lease recorded for 100.64.0.27 then
  mapping of epoch 1, in force [2026-11-20T11:59:00.000Z, 2026-11-20T11:59:01.000Z): subscriber 27, inside 100.64.0.27, block 198.51.100.10 ports 14632-15135
    a record above shows this block active then
audit entry 1
`
	if r.stdout != want {
		t.Errorf("stdout:\n%s\nwant:\n%s", r.stdout, want)
	}

	r = runCLI(append(base, "--time", "2026-11-20T13:00:01+01:00", "--tolerance", "2s")...)
	t.Logf("two candidates:\n%s", r.stdout)
	for _, s := range []string{
		"198.51.100.10:15123 at 2026-11-20T13:00:01+01:00: 2 candidates",
		"searched [2026-11-20T11:59:59.000Z, 2026-11-20T12:00:04.000Z) (the stated time covers 1s, widened by ±2s)",
		"subscriber 40  inside 100.64.0.40",
		"active 2026-11-20T12:00:02.250Z .. still active",
		"epoch 2 (in force since 2026-11-20T12:00:01.000Z)",
		"[recovered: found by reconciliation, not announced by the ring buffer; the start is when the kernel marked the block active]",
		"audit entry 2",
	} {
		if !strings.Contains(r.stdout, s) {
			t.Errorf("stdout lacks %q:\n%s", s, r.stdout)
		}
	}

	r = runCLI(append(base, "--time", "2026-11-20T12:00:01Z")...)
	// The fixture's epoch 2 is not a mapping the data plane could have had
	// (its ratio does not fit its prefixes), so its owner holds no record.
	if want := "198.51.100.10:15123 at 2026-11-20T12:00:01Z: no record shows a block holding this port then\n" +
		"  searched [2026-11-20T12:00:01.000Z, 2026-11-20T12:00:02.000Z) (the stated time covers 1s)\n" +
		"  mapping of epoch 2, in force [2026-11-20T12:00:01.000Z, 2026-11-20T12:00:02.000Z): subscriber 28, inside 100.64.0.28, block 198.51.100.10 ports 15024-15523\n" +
		"    no record shows this block active then\n" +
		"    and the store holds no record of this block on either side\n" +
		"audit entry 3\n"; r.code != exitOK || r.stdout != want {
		t.Errorf("no candidate: exit %d stdout %q, want %q", r.code, r.stdout, want)
	}

	r = runCLI(append(base, "--time", "2026-11-20T12:00:01Z", "--tolerance", "2s", "--json")...)
	var ans wire.LookupResponse
	if err := json.Unmarshal([]byte(r.stdout), &ans); err != nil || r.code != exitOK {
		t.Fatalf("--json: exit %d, %v: %q", r.code, err, r.stdout)
	}
	if len(ans.Candidates) != 2 || ans.AuditSeq != 4 || ans.Candidates[0].Subscriber != 27 || ans.Candidates[1].End != nil {
		t.Errorf("--json answer %+v", ans)
	}

	r = runCLI(append(base, "--time", "2026-11-20T12:00:01")...)
	if r.code != exitFailure || !strings.Contains(r.stderr, "has no time zone") || !strings.Contains(r.stderr, "(audit entry 5)") {
		t.Errorf("time without zone: exit %d stderr %q", r.code, r.stderr)
	}
	r = runCLI("lookup", "--socket", a.socket, "--ip", "198.51.100.10", "--port", "15123", "--time", "2026-11-20T12:00:01Z")
	if r.code != exitUsage || !strings.Contains(r.stderr, "missing --purpose") {
		t.Errorf("without --purpose: exit %d stderr %q", r.code, r.stderr)
	}
	if a.log.Len() != 5 {
		t.Errorf("audit log holds %d entries, want 5 (the usage error never reached the agent)", a.log.Len())
	}
	r = runCLI(append(base, "--time", "2026-11-20T12:00:01Z", "--socket", filepath.Join(t.TempDir(), "none.sock"))...)
	if r.code != exitFailure || !strings.Contains(r.stderr, "is blocknatd running") {
		t.Errorf("missing socket: exit %d stderr %q", r.code, r.stderr)
	}
}

func shortHash(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:8]) + "…"
}

func TestLookupRefused(t *testing.T) {
	a := startAgent(t, agentOptions{roles: api.Roles{}})
	r := runCLI("lookup", "--socket", a.socket, "--ip", "198.51.100.10", "--port", "15123", "--time", "2026-11-20T12:00:01Z", "--purpose", "p")
	if r.code != exitFailure || r.stdout != "" || !strings.Contains(r.stderr, "refused: operator uid:") || !strings.Contains(r.stderr, "(audit entry 1)") {
		t.Errorf("exit %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
}

func TestHistoryCommand(t *testing.T) {
	a := startAgent(t, agentOptions{roles: allRoles()})
	r := runCLI("history", "--socket", a.socket, "--subscriber", "100.64.0.40", "--from", "2026-11-20T00:00:00Z", "--to", "2026-11-20T23:59:59Z", "--purpose", "case 8")
	for _, s := range []string{"subscriber 100.64.0.40 from 2026-11-20T00:00:00.000Z to 2026-11-20T23:59:59.000Z: 1 record", "subscriber 40  inside 100.64.0.40", ".. still active", "audit entry 1"} {
		if !strings.Contains(r.stdout, s) {
			t.Errorf("stdout lacks %q:\n%s", s, r.stdout)
		}
	}
	r = runCLI("history", "--socket", a.socket, "--subscriber", "100.64.0.99", "--from", "2026-11-20T00:00:00Z", "--to", "2026-11-20T23:59:59Z", "--purpose", "case 8")
	if r.code != exitOK || !strings.Contains(r.stdout, ": no record\n  this inside address held no port block") {
		t.Errorf("empty history: exit %d stdout %q", r.code, r.stdout)
	}
}

// cuttingStore announces the records but streams one fewer, as a store
// swept between count and stream would.
type cuttingStore struct {
	api.Store
	passes int
}

func (s *cuttingStore) ExportWithLeases(from, to time.Time, fn func(store.Record, []store.Lease) error) error {
	s.passes++
	n := 0
	return s.Store.ExportWithLeases(from, to, func(r store.Record, l []store.Lease) error {
		n++
		if s.passes > 1 && n > 1 {
			return nil
		}
		return fn(r, l)
	})
}

func TestExportCommand(t *testing.T) {
	a := startAgent(t, agentOptions{roles: allRoles()})
	dir := t.TempDir()
	out := filepath.Join(dir, "records.csv")
	args := []string{"export", "--socket", a.socket, "--from", "2026-11-20T00:00:00Z", "--to", "2026-11-21T00:00:00Z", "--purpose", "court order 3", "--out", out}

	r := runCLI(args...)
	if r.code != exitOK {
		t.Fatalf("exit %d stderr %q", r.code, r.stderr)
	}
	if r.stderr != "" {
		t.Errorf("stderr is a buffer, yet got %q (a progress bar?)", r.stderr)
	}
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	rows, err := csv.NewReader(f).ReadAll()
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	var want [][]string
	if err := a.store.Export(at(t, "2026-11-20T00:00:00Z"), at(t, "2026-11-21T00:00:00Z"), func(rec store.Record) error {
		want = append(want, []string{rec.Inside.String(), rec.Start.UTC().Format(time.RFC3339Nano)})
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(rows) != len(want)+1 || !slices.Equal(rows[0], wire.CSVHeader) {
		t.Fatalf("rows %v, want header and %d records", rows, len(want))
	}
	for i, w := range want {
		if rows[i+1][1] != w[0] || rows[i+1][5] != w[1] {
			t.Errorf("row %d %v, want inside %s start %s", i+1, rows[i+1], w[0], w[1])
		}
	}
	if fi, _ := os.Stat(out); fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", fi.Mode().Perm())
	}
	if want := "wrote 2 records to " + out + " (csv, "; !strings.HasPrefix(r.stdout, want) || !strings.HasSuffix(r.stdout, "audit entry 1\n") {
		t.Errorf("stdout %q", r.stdout)
	}
	assertOnly(t, dir, "records.csv")

	// An existing file is never overwritten, and the clash costs no request.
	r = runCLI(args...)
	if r.code != exitFailure || !strings.Contains(r.stderr, "exists") || a.log.Len() != 1 {
		t.Errorf("second export onto the file: exit %d stderr %q, log %d", r.code, r.stderr, a.log.Len())
	}

	// jsonl with --json.
	outJSONL := filepath.Join(dir, "records.jsonl")
	r = runCLI("export", "--socket", a.socket, "--from", "2026-11-20T00:00:00Z", "--to", "2026-11-21T00:00:00Z", "--purpose", "court order 3",
		"--format", "jsonl", "--out", outJSONL, "--json")
	var summary struct {
		Records  int64  `json:"records"`
		AuditSeq uint64 `json:"audit_seq"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &summary); err != nil || summary.Records != 2 || summary.AuditSeq != 2 {
		t.Errorf("--json summary %q: %v", r.stdout, err)
	}
	data, _ := os.ReadFile(outJSONL)
	if n := strings.Count(string(data), "\n"); n != 2 {
		t.Errorf("jsonl has %d lines", n)
	}

	// A refused export leaves nothing behind.
	refused := startAgent(t, agentOptions{roles: api.Roles{}})
	failOut := filepath.Join(t.TempDir(), "refused.csv")
	r = runCLI("export", "--socket", refused.socket, "--from", "2026-11-20T00:00:00Z", "--to", "2026-11-21T00:00:00Z", "--purpose", "p", "--out", failOut)
	if r.code != exitFailure || !strings.Contains(r.stderr, "refused") {
		t.Errorf("refused export: exit %d stderr %q", r.code, r.stderr)
	}
	assertOnly(t, filepath.Dir(failOut))

	// A stream that ends short of the announced count leaves nothing named
	// FILE, and no FILE.tmp either.
	cut := startAgent(t, agentOptions{roles: allRoles(), wrap: func(s api.Store) api.Store { return &cuttingStore{Store: s} }})
	cutOut := filepath.Join(t.TempDir(), "cut.csv")
	r = runCLI("export", "--socket", cut.socket, "--from", "2026-11-20T00:00:00Z", "--to", "2026-11-21T00:00:00Z", "--purpose", "p", "--out", cutOut)
	if r.code != exitFailure || !strings.Contains(r.stderr, "broke off") {
		t.Errorf("cut export: exit %d stderr %q", r.code, r.stderr)
	}
	assertOnly(t, filepath.Dir(cutOut))
}

// assertOnly checks that dir holds exactly the named files.
func assertOnly(t *testing.T, dir string, names ...string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	slices.Sort(names)
	if !slices.Equal(got, names) {
		t.Errorf("%s holds %v, want %v", dir, got, names)
	}
}

func TestStatusCommand(t *testing.T) {
	a := startAgent(t, agentOptions{roles: allRoles()})
	r := runCLI("status", "--socket", a.socket)
	t.Logf("status:\n%s", r.stdout)
	for _, s := range []string{"open records         1", "epochs               2", "audit log\n  entries              0", "records\n  alarm                ok: block records are being written", "subscribers          512 on 2 public addresses, 500 ports each", "audit entry 1"} {
		if !strings.Contains(r.stdout, s) {
			t.Errorf("status lacks %q:\n%s", s, r.stdout)
		}
	}
	r = runCLI("status", "--socket", a.socket, "--json")
	var st wire.StatusResponse
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil || st.Store.Epochs != 2 || st.AuditSeq != 2 || st.Agent == nil || st.Agent.Subscribers != 512 {
		t.Errorf("status --json %q: %v", r.stdout, err)
	}
}

func TestAuditCommands(t *testing.T) {
	a := startAgent(t, agentOptions{roles: allRoles()})
	for range 3 {
		runCLI("lookup", "--socket", a.socket, "--ip", "198.51.100.10", "--port", "15123", "--time", "2026-11-20T12:00:01Z", "--purpose", "case 12")
	}
	r := runCLI("audit", "show", "--socket", a.socket, "--limit", "2")
	t.Logf("audit show:\n%s", r.stdout)
	for _, s := range []string{"entries 2-3 of 3", "3  ", "lookup  empty", "criteria ip=198.51.100.10 port=15123 time=2026-11-20T12:00:01Z", `purpose  "case 12"`, "audit entry 4 (this request)"} {
		if !strings.Contains(r.stdout, s) {
			t.Errorf("audit show lacks %q:\n%s", s, r.stdout)
		}
	}
	if strings.Contains(r.stdout, "\n1  ") {
		t.Errorf("--limit 2 showed entry 1:\n%s", r.stdout)
	}
	r = runCLI("audit", "show", "--socket", a.socket, "--from", "1", "--json")
	var show wire.AuditShowResponse
	if err := json.Unmarshal([]byte(r.stdout), &show); err != nil || len(show.Entries) != 4 || show.Entries[0].Seq != 1 || show.Entries[0].Hash == "" {
		t.Errorf("audit show --json: %v %+v", err, show)
	}

	r = runCLI("audit", "verify", "--socket", a.socket)
	if r.code != exitOK || !strings.HasPrefix(r.stdout, "audit log (agent) verified: entries 1-5 (5 present)") {
		t.Errorf("verify via agent: exit %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}

	// Offline, on the directory after the agent is done with it.
	if err := a.log.Close(); err != nil {
		t.Fatal(err)
	}
	r = runCLI("audit", "verify", "--dir", a.logDir, "--pubkey", a.pubPath)
	if r.code != exitOK || !strings.Contains(r.stdout, "verified: entries 1-6 (6 present)") {
		t.Fatalf("offline verify of an intact log: exit %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
	r = runCLI("audit", "verify", "--dir", a.logDir)
	if r.code != exitUsage {
		t.Errorf("--dir without --pubkey: exit %d", r.code)
	}

	// Change the purpose recorded in entry 2.
	segs, _ := filepath.Glob(filepath.Join(a.logDir, "audit-*.jsonl"))
	if len(segs) != 1 {
		t.Fatalf("segments %v", segs)
	}
	data, err := os.ReadFile(segs[0])
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitAfter(string(data), "\n")
	lines[1] = strings.Replace(lines[1], "case 12", "case 13", 1)
	if err := os.WriteFile(segs[0], []byte(strings.Join(lines, "")), 0o600); err != nil {
		t.Fatal(err)
	}
	r = runCLI("audit", "verify", "--dir", a.logDir, "--pubkey", a.pubPath)
	t.Logf("tampered:\n%s%s", r.stdout, r.stderr)
	wantProblem := "  seq 2, " + filepath.Base(segs[0]) + ":2: "
	if r.code != exitFailure || !strings.Contains(r.stdout, "FAILED verification") || !strings.Contains(r.stdout, wantProblem) ||
		!strings.Contains(r.stderr, "failed verification") {
		t.Errorf("offline verify of a tampered log: exit %d stdout %q stderr %q, want a line starting %q", r.code, r.stdout, r.stderr, wantProblem)
	}
	r = runCLI("audit", "verify", "--dir", a.logDir, "--pubkey", a.pubPath, "--json")
	var res wire.AuditVerifyResponse
	if err := json.Unmarshal([]byte(r.stdout), &res); err != nil || res.OK || len(res.Problems) == 0 || res.Problems[0].Seq != 2 || res.Problems[0].Line != 2 {
		t.Errorf("verify --json: %v %+v", err, res)
	}
}

func TestProgressBar(t *testing.T) {
	var buf strings.Builder
	bar := &progressBar{w: &buf}
	bar.update(0, 4)
	bar.update(1, 4) // within 100ms of the last draw: skipped
	bar.update(4, 4) // the end is always drawn
	bar.finish()
	want := "\rexport [                              ]   0%  0/4 records" +
		"\rexport [##############################] 100%  4/4 records\n"
	if buf.String() != want {
		t.Errorf("bar %q, want %q", buf.String(), want)
	}
	var quiet strings.Builder
	(&progressBar{w: &quiet}).finish()
	if quiet.Len() != 0 {
		t.Errorf("finish without a draw wrote %q", quiet.String())
	}
	if isTerminal(&buf) {
		t.Error("a strings.Builder is a terminal")
	}
}
