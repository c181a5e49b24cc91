package fleet

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/blocknat/blocknat/userspace/config"
)

const minimalConfig = `name: east
postgres: "host=/run/postgresql dbname=blocknat user=blocknat_owner"
`

func TestConfigDefaults(t *testing.T) {
	c, err := ParseConfig([]byte(minimalConfig))
	if err != nil {
		t.Fatalf("ParseConfig: %v", err)
	}
	if c.StateDir != DefaultStateDir || c.API.Socket != DefaultSocket || c.RouterName() != "fleet:east" ||
		time.Duration(c.Retention.Records) != config.DefaultRecordRetention || time.Duration(c.ReplicateMaxLag) != config.DefaultReplicateMaxLag ||
		c.Audit.CheckpointEvery != config.DefaultCheckpointEvery || c.AuditKeyPath() != DefaultStateDir+"/audit.key" {
		t.Errorf("defaults %+v", c)
	}
	c, err = ParseConfig([]byte(minimalConfig + `state_dir: /srv/fleet
api:
  socket: /run/fleet/api.sock
  tls: {listen: ":8443", cert: /etc/c.pem, key: /etc/k.pem, client_ca: /etc/ca.pem}
roles:
  investigator: {uids: [1001], cert_names: [police-desk]}
  auditor: {uids: [1002]}
retention: {records: 180d, audit: 2y}
`))
	if err == nil || !strings.Contains(err.Error(), "retention.audit") {
		t.Errorf("a bad duration: %v, want it to name retention.audit", err)
	}
}

func TestConfigErrorsNameTheField(t *testing.T) {
	for _, tc := range []struct {
		name, yaml string
		want       []string
	}{
		{"unknown top-level field", minimalConfig + "postgress: x\n", []string{"postgress", "unknown field"}},
		{"unknown nested field", minimalConfig + "retention: {record: 30d}\n", []string{"retention.record"}},
		{"unknown api field", minimalConfig + "api: {sockets: /run/x.sock}\n", []string{"api.sockets"}},
		{"bad duration", minimalConfig + "replicate_max_lag: soon\n", []string{"replicate_max_lag", `"soon"`}},
		{"missing name", `postgres: "dbname=x"` + "\n", []string{"name: missing"}},
		{"bad name", strings.Replace(minimalConfig, "east", "east side", 1), []string{"name:", "east side"}},
		{"missing postgres", "name: east\n", []string{"postgres: missing"}},
		{"bad postgres", "name: east\npostgres: \"host=/x port=notaport password=hunter2\"\n", []string{"postgres: not a PostgreSQL connection string"}},
		{"relative state_dir", minimalConfig + "state_dir: fleet\n", []string{"state_dir:", "absolute"}},
		{"relative socket", minimalConfig + "api: {socket: fleet.sock}\n", []string{"api.socket"}},
		{"tls incomplete", minimalConfig + "api: {tls: {listen: ':8443'}}\n", []string{"api.tls.cert", "api.tls.key", "api.tls.client_ca"}},
		{"dhcp role", minimalConfig + "roles: {dhcp: {uids: [33]}}\n", []string{"roles.dhcp"}},
		{"zero retention", minimalConfig + "retention: {records: 0s}\n", []string{"retention.records"}},
		{"checkpoint_every", minimalConfig + "audit: {checkpoint_every: 0}\n", []string{"audit.checkpoint_every"}},
		{"metrics listen without a port", minimalConfig + "metrics: {listen: \"127.0.0.1\"}\n", []string{"metrics.listen", "host:port"}},
		{"metrics listen on a name", minimalConfig + "metrics: {listen: \"fleet.example:9477\"}\n", []string{"metrics.listen", "fleet.example"}},
		{"unknown metrics field", minimalConfig + "metrics: {port: 9477}\n", []string{"metrics.port"}},
		{"zero stale_after", minimalConfig + "stale_after: 0s\n", []string{"stale_after: must be a positive duration"}},
		{"bad stale_after", minimalConfig + "stale_after: daily\n", []string{"stale_after", `"daily"`}},
		{"empty", "", []string{"empty"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseConfig([]byte(tc.yaml))
			if err == nil {
				t.Fatalf("accepted:\n%s", tc.yaml)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Errorf("error %q repeats the password", err)
			}
		})
	}
}

// TestGuideExampleParses: the operator guide's fleet configuration
// (section 12.3) is one this service accepts, with its metrics on.
func TestGuideExampleParses(t *testing.T) {
	guide, err := os.ReadFile("../../docs/operator-guide.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(guide), "\n### 12.3 The fleet service\n")
	if !ok {
		t.Fatal("the guide has no section 12.3 The fleet service")
	}
	_, block, ok := strings.Cut(section, "```yaml\n")
	block, _, closed := strings.Cut(block, "\n```")
	if !ok || !closed {
		t.Fatal("section 12.3 has no yaml block")
	}
	c, err := ParseConfig([]byte(block))
	if err != nil {
		t.Fatalf("the guide's fleet configuration: %v\n%s", err, block)
	}
	if c.Metrics.Listen == "" || time.Duration(c.StaleAfter) != DefaultStaleAfter {
		t.Errorf("the guide's example: metrics.listen %q, stale_after %s", c.Metrics.Listen, c.StaleAfter)
	}
}
