package config

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"time"
)

// Metrics is the Prometheus endpoint. It carries counts and histograms
// only: never a subscriber, an address or a port in a label.
type Metrics struct {
	// Listen is the host:port serving /metrics (default
	// 127.0.0.1:9477, loopback only); an empty string turns it off.
	Listen string `yaml:"listen"`
}

// SelfCheck is the agent's check that records are still being written: a
// canary event goes kernel -> ring buffer -> store -> lookup.
type SelfCheck struct {
	// Interval is the time between canaries (default 5m); 0 turns the
	// self-check off.
	Interval Duration `yaml:"interval"`
	// ClockMaxError is the estimated clock error (adjtimex's esterror)
	// above which the clock alarm is raised, as it is while the clock is
	// not synchronised at all (default 100ms); 0 turns the clock alarm
	// off, for a lab without NTP: the state is still read, exported and
	// recorded with every epoch and answer.
	ClockMaxError Duration `yaml:"clock_max_error"`
}

// Defaults of the monitoring fields.
const (
	DefaultMetricsListen     = "127.0.0.1:9477"
	DefaultSelfCheckInterval = 5 * time.Minute
	// MinSelfCheckInterval keeps a typo (5ms for 5m) from turning the
	// self-check into a load of its own.
	MinSelfCheckInterval = time.Second
	// DefaultClockMaxError: an NTP client on a network path to its
	// servers keeps esterror within a few milliseconds; 100ms is well
	// beyond that yet well within the second to which the police usually
	// state a time, so crossing it means the client has lost its sources.
	DefaultClockMaxError = 100 * time.Millisecond
)

func monitoringDefaults(c *Config) {
	c.Metrics.Listen = DefaultMetricsListen
	c.SelfCheck.Interval = Duration(DefaultSelfCheckInterval)
	c.SelfCheck.ClockMaxError = Duration(DefaultClockMaxError)
}

func (c *Config) validateMonitoring() []error {
	var errs []error
	if l := c.Metrics.Listen; l != "" {
		if err := checkListen(l); err != nil {
			errs = append(errs, fmt.Errorf("metrics.listen: %q: %w", l, err))
		}
	}
	if iv := time.Duration(c.SelfCheck.Interval); iv != 0 && iv < MinSelfCheckInterval {
		errs = append(errs, fmt.Errorf("selfcheck.interval: %s is below %s (0 turns the self-check off)", c.SelfCheck.Interval, MinSelfCheckInterval))
	}
	if b := time.Duration(c.SelfCheck.ClockMaxError); b < 0 {
		errs = append(errs, fmt.Errorf("selfcheck.clock_max_error: %s is negative (0 turns the clock alarm off)", c.SelfCheck.ClockMaxError))
	}
	return errs
}

// CheckListen is the rule of metrics.listen, for the fleet service's
// metrics.listen too.
func CheckListen(l string) error { return checkListen(l) }

// checkListen accepts host:port where host is an IP address, "localhost"
// or empty (every address) and port is 1-65535.
func checkListen(l string) error {
	host, port, err := net.SplitHostPort(l)
	if err != nil {
		return fmt.Errorf("want host:port like %s", DefaultMetricsListen)
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return fmt.Errorf("port %q is not a number from 1 to 65535", port)
	}
	if host != "" && host != "localhost" {
		if _, err := netip.ParseAddr(host); err != nil {
			return fmt.Errorf("host %q is not an IP address or localhost", host)
		}
	}
	return nil
}
