package api

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/blocknat/blocknat/userspace/api/client"
	"github.com/blocknat/blocknat/userspace/audit"
	"github.com/blocknat/blocknat/userspace/wire"
)

// testCA issues certificates for the TLS tests.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

var serial int64 = 100

func (ca *testCA) issue(t *testing.T, cn string, usage x509.ExtKeyUsage, ips ...net.IP) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial++
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
		IPAddresses:  ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// freeAddr returns a loopback address with a port that was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func waitDial(t *testing.T, network, addr string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.Dial(network, addr)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("server at %s %s never came up: %v", network, addr, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestTLS(t *testing.T) {
	ca := newTestCA(t, "blocknat test CA")
	otherCA := newTestCA(t, "someone else's CA")
	serverCert := ca.issue(t, "blocknat-api", x509.ExtKeyUsageServerAuth, net.IPv4(127, 0, 0, 1))

	st := openFixtureStore(t)
	log, _ := openAuditLog(t)
	srv := NewServer(Deps{Store: st, Audit: log, Logger: quietLogger(), Roles: Roles{
		CertNames: map[string][]Role{"alice": {RoleInvestigator}},
		// A uid must not grant anything over TLS.
		UIDs: map[uint32][]Role{uint32(os.Getuid()): {RoleInvestigator}},
	}})

	if err := srv.ServeTLS(context.Background(), "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{serverCert}}); err == nil ||
		!strings.Contains(err.Error(), "RequireAndVerifyClientCert") {
		t.Fatalf("ServeTLS without client verification: %v, want refused", err)
	}

	addr := freeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- srv.ServeTLS(ctx, addr, &tls.Config{
			Certificates: []tls.Certificate{serverCert},
			ClientAuth:   tls.RequireAndVerifyClientCert,
			ClientCAs:    ca.pool,
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ServeTLS: %v", err)
		}
	})
	waitDial(t, "tcp", addr)

	dial := func(t *testing.T, cert tls.Certificate) *client.Client {
		c, err := client.DialTLS(addr, &tls.Config{RootCAs: ca.pool, Certificates: []tls.Certificate{cert}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	lookup := wire.LookupRequest{IP: "198.51.100.10", Port: 15123, Time: "2026-11-20T12:00:01Z", Tolerance: "2s", Purpose: "case 5"}

	t.Run("alice is an investigator", func(t *testing.T) {
		c := dial(t, ca.issue(t, "alice", x509.ExtKeyUsageClientAuth))
		ans, err := c.Lookup(context.Background(), lookup)
		if err != nil {
			t.Fatalf("Lookup: %v", err)
		}
		if len(ans.Candidates) != 2 {
			t.Errorf("%d candidates", len(ans.Candidates))
		}
		es, _ := log.Entries(ans.AuditSeq, 1)
		if len(es) != 1 || es[0].Operator != "cert:CN=alice" || es[0].Outcome != audit.OutcomeAnswered {
			t.Errorf("entry %+v", es)
		}
	})
	t.Run("bob has no role", func(t *testing.T) {
		c := dial(t, ca.issue(t, "bob", x509.ExtKeyUsageClientAuth))
		_, err := c.Lookup(context.Background(), lookup)
		var apiErr *client.Error
		if !errors.As(err, &apiErr) || apiErr.Status != http.StatusForbidden {
			t.Fatalf("Lookup as bob: %v, want refused", err)
		}
		es, _ := log.Entries(apiErr.AuditSeq, 1)
		if len(es) != 1 || es[0].Operator != "cert:CN=bob" || es[0].Outcome != audit.OutcomeRefused {
			t.Errorf("entry %+v", es)
		}
	})

	// Neither reaches the handler, so neither is a request to audit.
	handshakeFails := func(t *testing.T, cfg *tls.Config) {
		before := log.Len()
		hc := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}}
		defer hc.CloseIdleConnections()
		resp, err := hc.Post("https://"+addr+wire.PathLookup, "application/json", strings.NewReader(lookupBody))
		if err == nil {
			resp.Body.Close()
			t.Fatalf("request got status %d, want a failed handshake", resp.StatusCode)
		}
		if !strings.Contains(err.Error(), "tls") && !strings.Contains(err.Error(), "certificate") {
			t.Errorf("error %v does not name the handshake", err)
		}
		t.Logf("handshake error: %v", err)
		if log.Len() != before {
			t.Errorf("audit log grew from %d to %d without a request", before, log.Len())
		}
	}
	t.Run("no client certificate", func(t *testing.T) {
		handshakeFails(t, &tls.Config{RootCAs: ca.pool})
		if _, err := client.DialTLS(addr, &tls.Config{RootCAs: ca.pool}); err == nil {
			t.Error("DialTLS accepted a config without a client certificate")
		}
	})
	t.Run("certificate from another CA", func(t *testing.T) {
		// GetClientCertificate sends the certificate even though the server
		// asked for another CA; with Certificates, crypto/tls would hold it
		// back and the server would never have to verify it.
		forged := otherCA.issue(t, "alice", x509.ExtKeyUsageClientAuth)
		handshakeFails(t, &tls.Config{RootCAs: ca.pool, GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return &forged, nil
		}})
	})
}

func TestServeUnix(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "run", "blocknat")
	path := filepath.Join(dir, "api.sock")
	log, _ := openAuditLog(t)
	srv := NewServer(Deps{Store: openFixtureStore(t), Audit: log, Logger: quietLogger(), Roles: rootRoles(RoleAdmin)})

	// A stale socket, as a killed agent leaves it.
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	stale, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close()

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.ServeUnix(ctx, path) }()
	waitDial(t, "unix", path)

	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o666 {
		t.Errorf("socket mode %v, want 0666", fi.Mode().Perm())
	}
	c, err := client.Dial(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	st, err := c.Status(context.Background())
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	if st.Store.OpenRecords != 1 || st.Store.Epochs != 2 || st.Audit.Entries != 0 || st.AuditSeq != 1 {
		t.Errorf("status %+v", st)
	}

	// A second agent must not take the socket from a live one.
	if err := srv.ServeUnix(context.Background(), path); err == nil || !strings.Contains(err.Error(), "another process") {
		t.Errorf("second ServeUnix: %v, want refused", err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("ServeUnix after cancel: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("ServeUnix did not return after its context ended")
	}

	// A file that is not a socket is never removed.
	file := filepath.Join(t.TempDir(), "notasocket")
	if err := os.WriteFile(file, []byte("keep me"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := srv.ServeUnix(context.Background(), file); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("ServeUnix on a regular file: %v", err)
	}
	if data, _ := os.ReadFile(file); string(data) != "keep me" {
		t.Errorf("regular file changed to %q", data)
	}
	if _, err := client.Dial(file); err == nil {
		t.Error("Dial accepted a regular file")
	}
	if _, err := client.Dial(filepath.Join(t.TempDir(), "missing.sock")); err == nil || !strings.Contains(err.Error(), "is blocknatd running") {
		t.Errorf("Dial of a missing socket: %v", err)
	}
}
