package api

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"os/user"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Role is what an operator may do.
type Role string

const (
	// RoleInvestigator may look up, list a subscriber's history and export.
	RoleInvestigator Role = "investigator"
	// RoleAuditor may read and verify the audit log.
	RoleAuditor Role = "auditor"
	// RoleAdmin may read the status.
	RoleAdmin Role = "admin"
	// RoleDHCP may only add lease events: it is the DHCP server's hook,
	// which must never read what it writes.
	RoleDHCP Role = "dhcp"
)

// Roles maps operators to roles: unix-socket peers by uid, TLS clients by
// the subject common name of their verified certificate. An operator not
// listed has no role, and every request of theirs is refused (and audited).
type Roles struct {
	UIDs      map[uint32][]Role
	CertNames map[string][]Role
}

// identity is who sent a request, as the transport proved it.
type identity struct {
	// operator is the audited name: "uid:1001(alice)" or "cert:CN=alice".
	operator string
	roles    []Role
	// known is false when the transport proved nothing (Handler served
	// over a listener other than ours); such a request is refused.
	known bool
}

func (id identity) has(r Role) bool { return slices.Contains(id.roles, r) }

// roleNames lists the operator's roles for a refusal message.
func (id identity) roleNames() string {
	if len(id.roles) == 0 {
		return "none"
	}
	names := make([]string, len(id.roles))
	for i, r := range id.roles {
		names[i] = string(r)
	}
	return strings.Join(names, ",")
}

type peerKey struct{}

// peerCred is the SO_PEERCRED of a unix-socket connection, read once when
// the connection is accepted: the kernel records the peer's credentials at
// connect(2), so they name the process that opened the connection even if
// it later passes the socket on.
type peerCred struct {
	uid, gid uint32
	pid      int32
	err      error
}

// connContext is http.Server.ConnContext: it attaches the peer credentials
// of unix-socket connections. TLS connections are identified per request
// from the verified certificate, which exists only after the handshake.
func connContext(ctx context.Context, c net.Conn) context.Context {
	if cc, ok := c.(*cappedConn); ok {
		if cc.cred == nil {
			return ctx
		}
		return context.WithValue(ctx, peerKey{}, *cc.cred)
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return ctx
	}
	return context.WithValue(ctx, peerKey{}, readPeerCred(uc))
}

func readPeerCred(c *net.UnixConn) peerCred {
	raw, err := c.SyscallConn()
	if err != nil {
		return peerCred{err: fmt.Errorf("peer credentials: %w", err)}
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return peerCred{err: fmt.Errorf("peer credentials: %w", err)}
	}
	if credErr != nil {
		return peerCred{err: fmt.Errorf("peer credentials: SO_PEERCRED: %w", credErr)}
	}
	return peerCred{uid: cred.Uid, gid: cred.Gid, pid: cred.Pid}
}

// identify names the sender of r. A verified client certificate wins over
// peer credentials; ServeTLS never serves without one.
func (s *Server) identify(r *http.Request) identity {
	if r.TLS != nil {
		return certIdentity(r.TLS, s.roles)
	}
	if pc, ok := r.Context().Value(peerKey{}).(peerCred); ok {
		if pc.err != nil {
			return identity{operator: "unix:unknown"}
		}
		name := "uid:" + strconv.FormatUint(uint64(pc.uid), 10)
		if u, err := user.LookupId(strconv.FormatUint(uint64(pc.uid), 10)); err == nil && u.Username != "" {
			name += "(" + u.Username + ")"
		}
		return identity{operator: name, roles: s.roles.UIDs[pc.uid], known: true}
	}
	return identity{operator: "unknown"}
}

func certIdentity(cs *tls.ConnectionState, roles Roles) identity {
	// VerifiedChains is set only when the certificate was verified against
	// ClientCAs; PeerCertificates alone would trust any self-signed cert.
	if len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return identity{operator: "cert:unverified"}
	}
	cn := cs.VerifiedChains[0][0].Subject.CommonName
	if cn == "" {
		return identity{operator: "cert:CN="}
	}
	return identity{operator: "cert:CN=" + cn, roles: roles.CertNames[cn], known: true}
}
