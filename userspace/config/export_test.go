package config

import (
	"strings"
	"testing"
	"time"
)

func TestExportOffByDefault(t *testing.T) {
	c, err := Parse([]byte(agentMinimal))
	if err != nil {
		t.Fatal(err)
	}
	if c.Export.IPFIX != nil || c.Export.Syslog != nil {
		t.Errorf("export %+v, want both exporters off", c.Export)
	}
}

func TestExportDefaults(t *testing.T) {
	c, err := Parse([]byte(agentMinimal + `
export:
  ipfix: {collector: "192.0.2.9:4739"}
  syslog: {address: "192.0.2.9:514"}
`))
	if err != nil {
		t.Fatal(err)
	}
	x, s := c.Export.IPFIX, c.Export.Syslog
	if x == nil || x.Collector != "192.0.2.9:4739" || time.Duration(x.TemplateRefresh) != DefaultTemplateRefresh ||
		x.ObservationDomain != DefaultObservationDomain {
		t.Errorf("ipfix %+v, want the collector and the defaults", x)
	}
	if s == nil || s.Address != "192.0.2.9:514" || s.Network != "udp" || s.AppName != "blocknat" {
		t.Errorf("syslog %+v, want the address and the defaults", s)
	}
}

func TestExportFields(t *testing.T) {
	c, err := Parse([]byte(agentMinimal + `
export:
  ipfix: {collector: "127.0.0.1:4739", template_refresh: 30s, observation_domain: 0}
  syslog: {address: "127.0.0.1:6514", network: tcp, app_name: cgnat-7}
`))
	if err != nil {
		t.Fatal(err)
	}
	if x := c.Export.IPFIX; time.Duration(x.TemplateRefresh) != 30*time.Second || x.ObservationDomain != 0 {
		t.Errorf("ipfix %+v: an explicit 0 must stay 0", x)
	}
	if s := c.Export.Syslog; s.Network != "tcp" || s.AppName != "cgnat-7" {
		t.Errorf("syslog %+v", s)
	}
}

func TestExportErrorsNameTheField(t *testing.T) {
	for _, tc := range []struct{ yaml, want string }{
		{`export: {ipfix: {}}`, "export.ipfix.collector: required"},
		{`export: {ipfix: {collector: "collector.example:4739"}}`, "export.ipfix.collector:"},
		{`export: {ipfix: {collector: "127.0.0.1:0"}}`, "export.ipfix.collector:"},
		{`export: {ipfix: {collector: "127.0.0.1:4739", template_refresh: 10ms}}`, "export.ipfix.template_refresh"},
		{`export: {syslog: {address: "127.0.0.1"}}`, "export.syslog.address"},
		{`export: {syslog: {address: "127.0.0.1:514", network: tls}}`, "export.syslog.network"},
		{`export: {syslog: {address: "127.0.0.1:514", app_name: "two words"}}`, "export.syslog.app_name"},
		{`export: {syslog: {address: "127.0.0.1:514", app_name: ""}}`, "export.syslog.app_name"},
		{`export: {ipfix: {collector: "127.0.0.1:4739", destination: yes}}`, "destination"},
		{`export: {kafka: {}}`, "kafka"},
	} {
		_, err := Parse([]byte(agentMinimal + tc.yaml + "\n"))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want it to name %q", tc.yaml, err, tc.want)
		}
	}
}
