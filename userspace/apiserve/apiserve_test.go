package apiserve

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/blocknat/blocknat/test/testutil"
	"github.com/blocknat/blocknat/userspace/api"
	"github.com/blocknat/blocknat/userspace/config"
)

func TestRoles(t *testing.T) {
	r := Roles(config.Roles{
		Investigator: config.Members{UIDs: []uint32{1001, 1002}, CertNames: []string{"desk"}},
		Auditor:      config.Members{UIDs: []uint32{1002}},
		Admin:        config.Members{CertNames: []string{"desk"}},
	})
	got := slices.Clone(r.UIDs[1002])
	slices.Sort(got)
	if !slices.Equal(r.UIDs[1001], []api.Role{api.RoleInvestigator}) || !slices.Equal(got, []api.Role{api.RoleAuditor, api.RoleInvestigator}) ||
		len(r.CertNames["desk"]) != 2 || len(r.UIDs[0]) != 0 {
		t.Errorf("roles %+v", r)
	}
}

func TestTLSConfigNamesTheField(t *testing.T) {
	dir := t.TempDir()
	if _, err := TLSConfig(&config.TLS{Cert: filepath.Join(dir, "c.pem"), Key: filepath.Join(dir, "k.pem")}); err == nil ||
		!strings.Contains(err.Error(), "api.tls.cert/key") {
		t.Errorf("missing certificate: %v", err)
	}
}

// TestServeAndAudit: the audit log opens with its key and public key in
// place, and Serve answers on the socket until ctx ends, then returns nil.
func TestServeAndAudit(t *testing.T) {
	dir := t.TempDir()
	l, err := OpenAudit(filepath.Join(dir, "audit"), filepath.Join(dir, "audit.key"),
		config.Audit{CheckpointEvery: 10, CheckpointInterval: config.Duration(time.Minute)},
		config.Retention{Records: config.Duration(time.Hour), Audit: config.Duration(time.Hour)}, nil)
	if err != nil {
		t.Fatalf("OpenAudit: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "audit", "audit.pub")); err != nil {
		t.Errorf("public key: %v", err)
	}
	runner := &AuditRunner{Log: l}
	runner.Start(context.Background())
	defer runner.Stop()

	srv := api.NewServer(api.Deps{Store: nilStore{}, Audit: l})
	ctx, cancel := context.WithCancel(context.Background())
	socket := filepath.Join(dir, "api.sock")
	done := Serve(ctx, srv, config.API{Socket: socket})
	testutil.Eventually(t, 10*time.Second, func() bool {
		c, err := net.Dial("unix", socket)
		if err == nil {
			c.Close()
		}
		return err == nil
	}, "the socket answers")
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after ctx ended")
	}
}

// nilStore is a Store nothing asks.
type nilStore struct{ api.Store }
