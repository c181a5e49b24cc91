package config

import (
	"strings"
	"testing"
	"time"
)

func TestReplicateDefaults(t *testing.T) {
	c, err := Parse([]byte(pcpBase))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := c.ReplicateSettings(), (Replicate{MaxLag: Duration(5 * time.Minute), Batch: 1000}); got != want {
		t.Errorf("absent section: %+v, want %+v", got, want)
	}
	if c.ReplicateSettings().Enabled() {
		t.Error("replication is on without a replicate section")
	}
	c, err = Parse([]byte(pcpBase + "replicate: {postgres: 'host=/run/postgresql dbname=blocknat user=router_a', router: cgn-a.east}\n"))
	if err != nil {
		t.Fatal(err)
	}
	r := c.ReplicateSettings()
	if !r.Enabled() || r.Router != "cgn-a.east" || r.MaxLag != Duration(5*time.Minute) || r.Batch != 1000 {
		t.Errorf("settings %+v", r)
	}
}

func TestReplicateErrorsNameTheField(t *testing.T) {
	for _, tc := range []struct{ section, want string }{
		{"replicate: {router: a}\n", "replicate.router: \"a\" is set but replicate.postgres is not"},
		{"replicate: {postgres: 'host=/run/postgresql'}\n", "replicate.router: missing"},
		{"replicate: {postgres: 'host=/run/postgresql', router: 'fleet:x'}\n", "replicate.router: \"fleet:x\""},
		{"replicate: {postgres: 'host=/run/postgresql', router: -a}\n", "replicate.router: \"-a\""},
		{"replicate: {postgres: 'host=/run/postgresql', router: " + strings.Repeat("a", 64) + "}\n", "replicate.router:"},
		{"replicate: {postgres: 'postgres://u:s3cret@[::1', router: a}\n", "replicate.postgres: not a PostgreSQL connection string"},
		{"replicate: {postgres: 'host=/run/postgresql', router: a, max_lag: 0s}\n", "replicate.max_lag: must be a positive duration"},
		{"replicate: {postgres: 'host=/run/postgresql', router: a, batch: 0}\n", "replicate.batch: 0, want 1 to 50000"},
		{"replicate: {postgres: 'host=/run/postgresql', router: a, batch: 50001}\n", "replicate.batch: 50001"},
		{"replicate: {postgres: 'host=/run/postgresql', router: a, lag: 1m}\n", "lag"},
	} {
		_, err := Parse([]byte(pcpBase + tc.section))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want it to say %q", tc.section, err, tc.want)
			continue
		}
		// A connection string may hold a password: no error repeats it.
		if strings.Contains(err.Error(), "s3cret") {
			t.Errorf("%q: error %q repeats the password", tc.section, err)
		}
	}
}
