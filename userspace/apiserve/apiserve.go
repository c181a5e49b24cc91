// Package apiserve sets up what serves the query API, the same way for a
// router's agent (userspace/agent) and a fleet service (userspace/fleet):
// the audit log with its signed checkpoints, the roles, and the unix
// socket and TLS listeners from the configuration's api section. Both
// follow the same audit rules because both build them here.
package apiserve

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/blocknat/blocknat/userspace/api"
	"github.com/blocknat/blocknat/userspace/audit"
	"github.com/blocknat/blocknat/userspace/config"
)

// OpenAudit opens the audit log in dir, signed with the key at keyPath
// (created on first start), with the checkpoints and retention the
// configuration gives.
func OpenAudit(dir, keyPath string, a config.Audit, r config.Retention, log *slog.Logger) (*audit.Log, error) {
	l, err := audit.Open(dir, audit.Options{
		KeyPath:            keyPath,
		CheckpointEvery:    a.CheckpointEvery,
		CheckpointInterval: time.Duration(a.CheckpointInterval),
		Retention:          time.Duration(r.Audit),
		Logger:             log,
	})
	if err != nil {
		return nil, fmt.Errorf("open audit log: %w", err)
	}
	return l, nil
}

// AuditRunner runs an audit log's checkpoints and retries from Start
// until Stop, which waits for them to end and closes the log, writing its
// final checkpoint.
type AuditRunner struct {
	Log  *audit.Log
	stop context.CancelFunc
	done chan struct{}
}

// Start runs the log's periodic work; it outlives ctx's cancellation
// until Stop, so that the log stays open for whatever stops after it.
func (r *AuditRunner) Start(ctx context.Context) {
	ctx, r.stop = context.WithCancel(context.WithoutCancel(ctx))
	r.done = make(chan struct{})
	go func() {
		defer close(r.done)
		r.Log.Run(ctx)
	}()
}

// Stop ends the periodic work and closes the log.
func (r *AuditRunner) Stop() error {
	if r.stop != nil {
		r.stop()
		<-r.done
	}
	return r.Log.Close()
}

// Roles turns the configuration's role lists into the API's lookup tables.
func Roles(c config.Roles) api.Roles {
	r := api.Roles{UIDs: map[uint32][]api.Role{}, CertNames: map[string][]api.Role{}}
	for role, m := range map[api.Role]config.Members{
		api.RoleInvestigator: c.Investigator,
		api.RoleAuditor:      c.Auditor,
		api.RoleAdmin:        c.Admin,
		api.RoleDHCP:         c.DHCP,
	} {
		for _, uid := range m.UIDs {
			r.UIDs[uid] = append(r.UIDs[uid], role)
		}
		for _, name := range m.CertNames {
			r.CertNames[name] = append(r.CertNames[name], role)
		}
	}
	return r
}

// TLSConfig is the TLS listener's configuration: client certificates
// required, since the certificate names the operator.
func TLSConfig(t *config.TLS) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(t.Cert, t.Key)
	if err != nil {
		return nil, fmt.Errorf("api.tls.cert/key: %w", err)
	}
	pem, err := os.ReadFile(t.ClientCA)
	if err != nil {
		return nil, fmt.Errorf("api.tls.client_ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("api.tls.client_ca %s: no PEM certificate in it", t.ClientCA)
	}
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS12,
	}, nil
}

// Serve runs srv on the unix socket (always) and the TLS listener (when
// configured) until ctx ends; the channel gets their errors joined once
// both have returned.
func Serve(ctx context.Context, srv *api.Server, c config.API) <-chan error {
	errs := make(chan error, 2)
	n := 1
	go func() { errs <- srv.ServeUnix(ctx, c.Socket) }()
	if t := c.TLS; t != nil {
		n++
		go func() {
			cfg, err := TLSConfig(t)
			if err != nil {
				errs <- err
				return
			}
			errs <- srv.ServeTLS(ctx, t.Listen, cfg)
		}()
	}
	done := make(chan error, 1)
	go func() {
		var all []error
		for i := 0; i < n; i++ {
			all = append(all, <-errs)
		}
		done <- errors.Join(all...)
	}()
	return done
}
