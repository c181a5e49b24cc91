package api

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"github.com/blocknat/blocknat/test/testutil"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/blocknat/blocknat/userspace/api/client"
	"github.com/blocknat/blocknat/userspace/wire"
)

func logLines(t *testing.T, b *testutil.Buffer) []map[string]any {
	t.Helper()
	var out []map[string]any
	for line := range strings.SplitSeq(strings.TrimSpace(b.String()), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		out = append(out, m)
	}
	return out
}

const rejectLogMsg = "api requests rejected before any handler"

// checkRejectLog checks that the log holds no more rejection lines than
// the rate limit allows over elapsed, and none of what the peers sent.
func checkRejectLog(t *testing.T, b *testutil.Buffer, elapsed time.Duration, sent ...string) []map[string]any {
	t.Helper()
	var lines []map[string]any
	for _, l := range logLines(t, b) {
		if l["msg"] == rejectLogMsg {
			lines = append(lines, l)
		}
	}
	if limit := 1 + int(elapsed/rejectLogEvery); len(lines) == 0 || len(lines) > limit {
		t.Errorf("%d rejection log lines over %v, want 1 to %d:\n%s", len(lines), elapsed, limit, b.String())
	}
	for _, s := range sent {
		if strings.Contains(b.String(), s) {
			t.Errorf("the log holds %q, which a peer sent:\n%s", s, b.String())
		}
	}
	t.Logf("rejection log lines: %v", lines)
	return lines
}

func noRejections() map[string]uint64 {
	return map[string]uint64{RejectBadRequest: 0, RejectHeadersTooLarge: 0, RejectBadVersion: 0, RejectTLSHandshake: 0, RejectOther: 0}
}

// sendRaw writes req on a new connection to addr and reads the response
// net/http sends back before closing; bodyErr is what reading its body to
// the end returned.
func sendRaw(t *testing.T, network, addr, req string) (resp *http.Response, bodyErr error) {
	t.Helper()
	c, err := net.Dial(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatalf("write: %v", err)
	}
	resp, err = http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	_, bodyErr = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp, bodyErr
}

// TestRejectedBeforeHandler sends on the unix socket what net/http turns
// away before any handler runs: each gets net/http's own status, bumps
// exactly its counter, is neither audited nor logged with what it sent,
// and a real lookup bumps nothing.
func TestRejectedBeforeHandler(t *testing.T) {
	var logs testutil.Buffer
	h := newHarness(t, harnessOptions{roles: rootRoles(RoleInvestigator), logger: slog.New(slog.NewJSONHandler(&logs, nil))})
	start := time.Now()
	// 21 KiB of header lines: past MaxHeaderBytes and the 4 KiB net/http
	// reads beyond it before giving up.
	pad := strings.Repeat("X-Pad: "+strings.Repeat("p", 1017)+"\r\n", 21)
	cases := []struct {
		name, send string
		status     int
		reason     string
	}{
		{"garbage request line", "GARBAGE\r\n\r\n", 400, RejectBadRequest},
		{"header line without a colon", "GET /v1/status HTTP/1.1\r\nHost: blocknat\r\nNoColonHere\r\n\r\n", 400, RejectBadRequest},
		{"21 KiB of headers", "GET /v1/status HTTP/1.1\r\nHost: blocknat\r\n" + pad + "\r\n", 431, RejectHeadersTooLarge},
		{"HTTP/9.9", "GET / HTTP/9.9\r\nHost: blocknat\r\n\r\n", 505, RejectBadVersion},
	}
	want := noRejections()
	if got := h.server.Counters().Rejected; !maps.Equal(got, want) {
		t.Fatalf("Rejected %v before any request", got)
	}
	for _, tc := range cases {
		resp, bodyErr := sendRaw(t, "unix", h.socket, tc.send)
		if resp.StatusCode != tc.status {
			t.Errorf("%s: status %d, want %d", tc.name, resp.StatusCode, tc.status)
		}
		// A reset instead of EOF would mean the server hung up on the
		// unread rest of the request without the half-close net/http
		// does first, and a client may then never see the answer.
		if bodyErr != nil {
			t.Errorf("%s: reading the answer: %v", tc.name, bodyErr)
		}
		if resp.Header.Get("Date") != "" {
			t.Errorf("%s: net/http's own answer has a Date header; preHandlerStatus relies on it having none", tc.name)
		}
		// Counted in Write, before the bytes left.
		want[tc.reason]++
		if got := h.server.Counters().Rejected; !maps.Equal(got, want) {
			t.Errorf("%s: Rejected %v, want %v", tc.name, got, want)
		}
	}
	if n := h.log.Len(); n != 0 {
		t.Errorf("the audit log holds %d entries for requests no handler saw", n)
	}

	ans, err := h.client.Lookup(context.Background(), wire.LookupRequest{IP: "198.51.100.10", Port: 15123, Time: "2026-11-20T12:00:01Z", Purpose: "case 9"})
	if err != nil {
		t.Fatalf("Lookup: %v", err)
	}
	if ans.AuditSeq != 1 {
		t.Errorf("lookup audited as seq %d, want 1", ans.AuditSeq)
	}
	// An error answered by a handler is not net/http's.
	if resp, _ := h.raw("GET", "/v1/nowhere", ""); resp.StatusCode != http.StatusNotFound {
		t.Errorf("unknown path: status %d", resp.StatusCode)
	}
	got := h.server.Counters()
	if !maps.Equal(got.Rejected, want) {
		t.Errorf("Rejected %v after a lookup and a 404, want %v", got.Rejected, want)
	}
	if got.ConnsOverCap[OverCapPerUID] != 0 || got.ConnsOverCap[OverCapTotal] != 0 || got.RefusalsSummarised != 0 {
		t.Errorf("Counters %+v", got)
	}

	lines := checkRejectLog(t, &logs, time.Since(start), "GARBAGE", "NoColonHere", "X-Pad", "pppp", "9.9", "/v1/status")
	if l := lines[0]; l[logKeyReason] != RejectBadRequest || l[logKeyPeer] != "uid:"+strconv.Itoa(os.Getuid()) || l["count"] != 1.0 {
		t.Errorf("first rejection line %v, want reason bad_request, this uid as peer, count 1", l)
	}
}

// TestTLSRejections: on the TLS listener a failed handshake counts as
// tls_handshake and plain HTTP as bad_request, once each, and neither is
// logged line by line nor with what the peer sent.
func TestTLSRejections(t *testing.T) {
	ca := newTestCA(t, "blocknat test CA")
	serverCert := ca.issue(t, "blocknat-api", x509.ExtKeyUsageServerAuth, net.IPv4(127, 0, 0, 1))
	var logs testutil.Buffer
	auditLog, _ := openAuditLog(t)
	srv := NewServer(Deps{Store: openFixtureStore(t), Audit: auditLog, Logger: slog.New(slog.NewJSONHandler(&logs, nil)),
		Roles: Roles{CertNames: map[string][]Role{"alice": {RoleInvestigator}}}})
	addr := freeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	start := time.Now()
	go func() {
		done <- srv.ServeTLS(ctx, addr, &tls.Config{
			Certificates: []tls.Certificate{serverCert},
			ClientAuth:   tls.RequireAndVerifyClientCert,
			ClientCAs:    ca.pool,
		})
	}()
	// waitDial hangs up before a handshake: the first one.
	waitDial(t, "tcp", addr)
	want := noRejections()
	want[RejectTLSHandshake] = 1
	testutil.Eventually(t, 5*time.Second, func() bool {
		return maps.Equal(srv.Counters().Rejected, want)
	}, "the hang-up of waitDial counted as tls_handshake")

	// net/http closes at once here, whatever is unread: the body may end
	// in a reset, which is net/http's to fix.
	resp, _ := sendRaw(t, "tcp", addr, "GET /v1/status HTTP/1.1\r\nHost: blocknat\r\n\r\n")
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("plain HTTP to the TLS port: status %d, want 400", resp.StatusCode)
	}
	want[RejectBadRequest]++

	garbage, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	garbage.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(garbage, "\x00\x01garbage\r\n\r\n")
	io.Copy(io.Discard, garbage) // an alert, then EOF
	garbage.Close()
	want[RejectTLSHandshake]++

	noCert := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.pool}}}
	if resp, err := noCert.Get("https://" + addr + wire.PathStatus); err == nil {
		resp.Body.Close()
		t.Errorf("a client without a certificate got status %d", resp.StatusCode)
	}
	noCert.CloseIdleConnections()
	want[RejectTLSHandshake]++

	alice, err := client.DialTLS(addr, &tls.Config{RootCAs: ca.pool, Certificates: []tls.Certificate{ca.issue(t, "alice", x509.ExtKeyUsageClientAuth)}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := alice.Lookup(context.Background(), wire.LookupRequest{IP: "198.51.100.10", Port: 15123, Time: "2026-11-20T12:00:01Z", Purpose: "case 9"}); err != nil {
		t.Fatalf("Lookup as alice: %v", err)
	}
	alice.Close()

	// Shutdown returns once every connection is closed, and net/http logs
	// a handshake failure before it closes the connection: every count is
	// in by then, including any the plain-HTTP request wrongly added.
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("ServeTLS: %v", err)
	}
	if got := srv.Counters().Rejected; !maps.Equal(got, want) {
		t.Errorf("Rejected %v, want %v", got, want)
	}
	if auditLog.Len() != 1 {
		t.Errorf("audit log holds %d entries, want the lookup's only", auditLog.Len())
	}
	lines := checkRejectLog(t, &logs, time.Since(start), "garbage", "/v1/status", "certificate", "TLS handshake error")
	host, _, _ := net.SplitHostPort(addr)
	for _, l := range lines {
		if peer, _ := l[logKeyPeer].(string); !strings.HasPrefix(peer, host+":") {
			t.Errorf("rejection line %v names peer %q, want the client's address", l, peer)
		}
	}
}

func TestPreHandlerStatus(t *testing.T) {
	for _, tc := range []struct {
		name  string
		write string
		code  int
	}{
		{"net/http 400", "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n400 Bad Request", 400},
		{"net/http 505", "HTTP/1.1 505 HTTP Version Not Supported: unsupported protocol version\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n505 ...", 505},
		{"net/http 501", "HTTP/1.1 501 Not Implemented\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\nUnsupported transfer encoding", 501},
		{"plain HTTP on TLS", "HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n", 400},
		{"handler response", "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nDate: Fri, 20 Nov 2026 12:00:00 GMT\r\nContent-Length: 2\r\n\r\n{}", 0},
		{"lower-case date", "HTTP/1.1 404 Not Found\r\ndate: Fri, 20 Nov 2026 12:00:00 GMT\r\n\r\n", 0},
		{"100 Continue", "HTTP/1.1 100 Continue\r\n\r\n", 0},
		{"body piece", `{"entries":[{"purpose":"HTTP/1.1 400 x\r\n\r\n"}]}`, 0},
		{"status line only", "HTTP/1.1 400 Bad Request\r\n", 0},
		{"no code", "HTTP/1.1 abc\r\n\r\n", 0},
		{"TLS record", "\x17\x03\x03\x00\x20HTTP/1.1 400 Bad Request\r\n\r\n", 0},
	} {
		code, ok := preHandlerStatus([]byte(tc.write))
		if ok != (tc.code != 0) || code != tc.code {
			t.Errorf("%s: %d, %v; want %d", tc.name, code, ok, tc.code)
		}
	}
}

// TestErrorLog: handshake failures are counted, not passed on; the
// plain-HTTP one is left to the connection, which counted it already; the
// rest of what net/http logs reaches the server's logger.
func TestErrorLog(t *testing.T) {
	var out bytes.Buffer
	r := &rejections{log: quietLogger()}
	w := &errorLog{rejections: r, next: &out}
	for _, line := range []string{
		"http: TLS handshake error from 127.0.0.1:40000: EOF\n",
		"http: TLS handshake error from [::1]:40001: tls: client didn't provide a certificate\n",
		"http: TLS handshake error from 127.0.0.1:40002: client sent an HTTP request to an HTTPS server\n",
		"http: Accept error: too many open files; retrying in 5ms\n",
	} {
		if n, err := w.Write([]byte(line)); n != len(line) || err != nil {
			t.Errorf("Write %q: %d, %v", line, n, err)
		}
	}
	want := noRejections()
	want[RejectTLSHandshake] = 2
	if got := r.counts(); !maps.Equal(got, want) {
		t.Errorf("counts %v, want %v", got, want)
	}
	if out.String() != "http: Accept error: too many open files; retrying in 5ms\n" {
		t.Errorf("passed on %q", out.String())
	}
}
