package config

import (
	"strings"
	"testing"
	"time"
)

const agentMinimal = `
inside:  {interfaces: [eth1], prefixes: [100.64.0.0/24]}
outside: {interfaces: [eth0], pool: [198.51.100.10/31]}
`

func TestAgentDefaults(t *testing.T) {
	c, err := Parse([]byte(agentMinimal))
	if err != nil {
		t.Fatal(err)
	}
	day := 24 * time.Hour
	for name, got := range map[string]time.Duration{
		"retention.records":        time.Duration(c.Retention.Records),
		"retention.audit":          time.Duration(c.Retention.Audit),
		"timeouts.udp":             time.Duration(c.Timeouts.UDP),
		"timeouts.tcp_established": time.Duration(c.Timeouts.TCPEstablished),
		"timeouts.tcp_transitory":  time.Duration(c.Timeouts.TCPTransitory),
		"timeouts.icmp":            time.Duration(c.Timeouts.ICMP),
	} {
		want := map[string]time.Duration{
			"retention.records": 365 * day, "retention.audit": 365 * day, "timeouts.udp": 300 * time.Second,
			"timeouts.tcp_established": 7440 * time.Second, "timeouts.tcp_transitory": 240 * time.Second, "timeouts.icmp": 60 * time.Second,
		}[name]
		if got != want {
			t.Errorf("%s default %v, want %v", name, got, want)
		}
	}
	if c.API.Socket != DefaultSocket || c.AuditKeyPath() != "/var/lib/blocknat/audit.key" {
		t.Errorf("api.socket %q, audit key %q", c.API.Socket, c.AuditKeyPath())
	}
}

func TestAgentFields(t *testing.T) {
	c, err := Parse([]byte(agentMinimal + `
retention: {records: 30d, audit: 730d}
timeouts: {udp: 2m, tcp_established: 2h4m, tcp_transitory: 4m, icmp: 60s, block_idle: 10m}
api: {socket: /run/bn.sock, tls: {listen: "127.0.0.1:8443", cert: /c, key: /k, client_ca: /ca}}
roles:
  investigator: {uids: [1001, 1002], cert_names: [alice]}
  auditor: {uids: [1003]}
audit: {checkpoint_every: 10, checkpoint_interval: 1m, key: /etc/blocknat/audit.key}
`))
	if err != nil {
		t.Fatal(err)
	}
	if time.Duration(c.Retention.Records) != 30*24*time.Hour || time.Duration(c.Timeouts.TCPEstablished) != 124*time.Minute {
		t.Errorf("durations: %v %v", c.Retention.Records, c.Timeouts.TCPEstablished)
	}
	if len(c.Roles.Investigator.UIDs) != 2 || c.Roles.Investigator.CertNames[0] != "alice" || c.Roles.Auditor.UIDs[0] != 1003 {
		t.Errorf("roles: %+v", c.Roles)
	}
	if c.API.TLS == nil || c.API.TLS.Listen != "127.0.0.1:8443" || c.Audit.CheckpointEvery != 10 {
		t.Errorf("api/audit: %+v %+v", c.API, c.Audit)
	}
}

func TestAgentFieldErrors(t *testing.T) {
	for _, tc := range []struct{ extra, want string }{
		{"retention: {records: 0s}", "retention.records"},
		{"retention: {records: forever}", "retention.records"},
		{"timeouts: {udp: soon}", "timeouts.udp"},
		{"retention: {records: 1.5d}", "whole days"},
		{"timeouts: {udp: -1s}", "timeouts.udp"},
		{"api: {socket: relative.sock}", "api.socket"},
		{"api: {tls: {listen: ':1'}}", "api.tls.cert"},
		{"roles: {investigator: {uids: [1]}, superuser: {uids: [2]}}", "superuser"},
		{"roles: {investigator: {uid: [1]}}", "uid"},
		{"audit: {checkpoint_every: 0}", "audit.checkpoint_every"},
	} {
		_, err := Parse([]byte(agentMinimal + tc.extra + "\n"))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one naming %q", tc.extra, err, tc.want)
		}
	}
}

func TestDurationString(t *testing.T) {
	for in, want := range map[string]string{"365d": "365d", "300s": "5m0s", "48h": "2d"} {
		d, err := ParseDuration(in)
		if err != nil {
			t.Fatal(err)
		}
		if got := Duration(d).String(); got != want {
			t.Errorf("%s -> %s, want %s", in, got, want)
		}
	}
}
