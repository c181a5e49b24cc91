package config

import (
	"strings"
	"testing"
	"time"
)

func TestMonitoringDefaults(t *testing.T) {
	c, err := Parse([]byte(agentMinimal))
	if err != nil {
		t.Fatal(err)
	}
	if c.Metrics.Listen != "127.0.0.1:9477" || time.Duration(c.SelfCheck.Interval) != 5*time.Minute {
		t.Errorf("metrics.listen %q, selfcheck.interval %v; want 127.0.0.1:9477 and 5m", c.Metrics.Listen, c.SelfCheck.Interval)
	}
	if time.Duration(c.SelfCheck.ClockMaxError) != DefaultClockMaxError {
		t.Errorf("selfcheck.clock_max_error %v, want %v", c.SelfCheck.ClockMaxError, DefaultClockMaxError)
	}
}

// TestClockMaxError: a bound is read as a duration, 0 is allowed (the clock
// alarm is off) and a negative one is refused, naming the field.
func TestClockMaxError(t *testing.T) {
	for yaml, want := range map[string]time.Duration{"selfcheck: {clock_max_error: 20ms}": 20 * time.Millisecond, "selfcheck: {clock_max_error: 0}": 0} {
		c, err := Parse([]byte(agentMinimal + yaml + "\n"))
		if err != nil || time.Duration(c.SelfCheck.ClockMaxError) != want {
			t.Errorf("%s: %v (%v), want %v", yaml, c.SelfCheck.ClockMaxError, err, want)
		}
	}
	if _, err := Parse([]byte(agentMinimal + "selfcheck: {clock_max_error: -1s}\n")); err == nil || !strings.Contains(err.Error(), "selfcheck.clock_max_error") {
		t.Errorf("a negative bound: %v, want an error naming selfcheck.clock_max_error", err)
	}
}

func TestMonitoringFields(t *testing.T) {
	for _, tc := range []struct {
		yaml   string
		listen string
		every  time.Duration
	}{
		{`metrics: {listen: ""}`, "", 5 * time.Minute},
		{`metrics: {listen: "[::1]:9100"}`, "[::1]:9100", 5 * time.Minute},
		{`metrics: {listen: ":9477"}`, ":9477", 5 * time.Minute},
		{`metrics: {listen: "localhost:9477"}`, "localhost:9477", 5 * time.Minute},
		{`selfcheck: {interval: 0}`, "127.0.0.1:9477", 0},
		{`selfcheck: {interval: 30s}`, "127.0.0.1:9477", 30 * time.Second},
	} {
		c, err := Parse([]byte(agentMinimal + tc.yaml + "\n"))
		if err != nil {
			t.Errorf("%s: %v", tc.yaml, err)
			continue
		}
		if c.Metrics.Listen != tc.listen || time.Duration(c.SelfCheck.Interval) != tc.every {
			t.Errorf("%s: listen %q interval %v, want %q %v", tc.yaml, c.Metrics.Listen, c.SelfCheck.Interval, tc.listen, tc.every)
		}
	}
}

func TestMonitoringRefused(t *testing.T) {
	for _, tc := range []struct{ yaml, want string }{
		{`metrics: {listen: "9477"}`, "metrics.listen"},
		{`metrics: {listen: "127.0.0.1:0"}`, "metrics.listen"},
		{`metrics: {listen: "127.0.0.1:http"}`, "metrics.listen"},
		{`metrics: {listen: "example.org:9477"}`, "metrics.listen"},
		{`metrics: {port: 9477}`, "port"},
		{`selfcheck: {interval: 5ms}`, "selfcheck.interval"},
		{`selfcheck: {interval: soon}`, "soon"}, // a Duration parse error names the value, not the field (as for every duration field)
	} {
		_, err := Parse([]byte(agentMinimal + tc.yaml + "\n"))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err %v, want one naming %s", tc.yaml, err, tc.want)
		}
	}
}
