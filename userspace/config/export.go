package config

import (
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// Export sends block events to collectors the operator already runs. Both
// exporters are optional; a section left out is off. Only the block fields
// leave the router (event, time, inside address, public address, port
// range): never a destination, never a flow.
type Export struct {
	IPFIX  *IPFIXExport  `yaml:"ipfix"`
	Syslog *SyslogExport `yaml:"syslog"`
}

// IPFIXExport sends RFC 8158 port-block events over UDP (RFC 7011).
type IPFIXExport struct {
	// Collector is the collector's IP:port, for example 192.0.2.9:4739.
	// A literal address, so that a DNS failure never stops the agent.
	Collector string `yaml:"collector"`
	// TemplateRefresh is how often the template is sent again (default
	// 10m), so that a collector that restarted learns it (RFC 7011, UDP transport).
	TemplateRefresh Duration `yaml:"template_refresh"`
	// ObservationDomain is the Observation Domain ID in every message
	// header (default 1); give each router its own when several export to
	// one collector.
	ObservationDomain uint32 `yaml:"observation_domain"`
}

// SyslogExport sends the same events as RFC 5424 messages.
type SyslogExport struct {
	// Address is the syslog receiver's IP:port.
	Address string `yaml:"address"`
	// Network is udp (RFC 5426, the default) or tcp (RFC 6587 octet
	// counting).
	Network string `yaml:"network"`
	// AppName is the APP-NAME field (default blocknat).
	AppName string `yaml:"app_name"`
}

// Defaults of the export fields.
const (
	DefaultTemplateRefresh   = 10 * time.Minute
	DefaultObservationDomain = 1
	DefaultSyslogNetwork     = "udp"
	DefaultSyslogAppName     = "blocknat"
)

// UnmarshalYAML fills the defaults before decoding, so that a field left
// out keeps its default and a field written is validated as written.
func (x *IPFIXExport) UnmarshalYAML(unmarshal func(any) error) error {
	type plain IPFIXExport
	p := plain{TemplateRefresh: Duration(DefaultTemplateRefresh), ObservationDomain: DefaultObservationDomain}
	if err := unmarshal(&p); err != nil {
		return err
	}
	*x = IPFIXExport(p)
	return nil
}

// UnmarshalYAML fills the defaults before decoding, as for IPFIXExport.
func (x *SyslogExport) UnmarshalYAML(unmarshal func(any) error) error {
	type plain SyslogExport
	p := plain{Network: DefaultSyslogNetwork, AppName: DefaultSyslogAppName}
	if err := unmarshal(&p); err != nil {
		return err
	}
	*x = SyslogExport(p)
	return nil
}

func (c *Config) validateExport() []error {
	var errs []error
	if x := c.Export.IPFIX; x != nil {
		if err := checkAddrPort(x.Collector); err != nil {
			errs = append(errs, fmt.Errorf("export.ipfix.collector: %w", err))
		}
		if x.TemplateRefresh < Duration(time.Second) {
			errs = append(errs, errors.New("export.ipfix.template_refresh: must be at least 1s"))
		}
	}
	if x := c.Export.Syslog; x != nil {
		if err := checkAddrPort(x.Address); err != nil {
			errs = append(errs, fmt.Errorf("export.syslog.address: %w", err))
		}
		if x.Network != "udp" && x.Network != "tcp" {
			errs = append(errs, fmt.Errorf("export.syslog.network: %q is not udp or tcp", x.Network))
		}
		// RFC 5424 §6: APP-NAME = 1*48PRINTUSASCII.
		if n := len(x.AppName); n == 0 || n > 48 {
			errs = append(errs, fmt.Errorf("export.syslog.app_name: %q must be 1 to 48 characters", x.AppName))
		}
		for _, r := range x.AppName {
			if r < 33 || r > 126 {
				errs = append(errs, fmt.Errorf("export.syslog.app_name: %q holds a character other than printable ASCII", x.AppName))
				break
			}
		}
	}
	return errs
}

func checkAddrPort(s string) error {
	if s == "" {
		return errors.New("required (IP:port)")
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return fmt.Errorf("%q is not IP:port with a literal address: %w", s, err)
	}
	if ap.Port() == 0 {
		return fmt.Errorf("%q: port 0", s)
	}
	return nil
}
