package leasehook_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/blocknat/blocknat/userspace/leasehook"
)

// hookRan is when the hook ran in every parse case; the server's own clock
// values below are a little earlier, as they are in life.
var hookRan = time.Date(2026, 12, 1, 23, 36, 17, 166227699, time.UTC)

func at(unix int64) *time.Time {
	t := time.Unix(unix, 0).UTC()
	return &t
}

type parseCase struct {
	name    string
	args    []string
	env     map[string]string
	want    []leasehook.Event
	wantErr string // a substring; "" means no error
}

func runParseCases(t *testing.T, parse func([]string, map[string]string, time.Time) ([]leasehook.Event, error), cases []parseCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parse(tc.args, tc.env, hookRan)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one containing %q (events %+v)", err, tc.wantErr, got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			gotJSON, _ := json.Marshal(got)
			wantJSON, _ := json.Marshal(tc.want)
			if len(tc.want) == 0 && len(got) == 0 {
				return
			}
			if string(gotJSON) != string(wantJSON) {
				t.Errorf("got  %s\nwant %s", gotJSON, wantJSON)
			}
		})
	}
}

// dnsmasqAddEnv is what dnsmasq 2.90 passed for a grant in TestRealDnsmasqLease.
func dnsmasqAddEnv() map[string]string {
	return map[string]string{
		"DNSMASQ_CLIENT_ID":         "01:02:1B:4E:00:07:01",
		"DNSMASQ_INTERFACE":         "lh-srv",
		"DNSMASQ_LEASE_EXPIRES":     "1796171775",
		"DNSMASQ_REQUESTED_OPTIONS": "1,3",
		"DNSMASQ_SUPPLIED_HOSTNAME": "lh-dm-client",
		"DNSMASQ_TAGS":              "lh-srv",
		"DNSMASQ_TIME_REMAINING":    "3600",
		"PATH":                      "/usr/sbin:/usr/bin",
	}
}

func with(env map[string]string, kv ...string) map[string]string {
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] == "" {
			delete(env, kv[i])
		} else {
			env[kv[i]] = kv[i+1]
		}
	}
	return env
}

func dnsmasqEvent(kind string, expires *time.Time, hostname string) leasehook.Event {
	return leasehook.Event{
		Kind: kind, Time: hookRan, Inside: "100.64.7.101", MAC: "02:1b:4e:00:07:01",
		ClientID: "01021b4e000701", Hostname: hostname, Expires: expires, Source: leasehook.SourceDnsmasq,
	}
}

func TestFromDnsmasq(t *testing.T) {
	mac, ip := "02:1B:4E:00:07:01", "100.64.7.101"
	remaining := hookRan.Add(3600 * time.Second).Truncate(time.Second)
	lengthOnly := hookRan.Add(7200 * time.Second).Truncate(time.Second)
	runParseCases(t, leasehook.FromDnsmasq, []parseCase{
		{
			name: "add",
			args: []string{"add", mac, ip, "lh-dm-client"},
			env:  dnsmasqAddEnv(),
			want: []leasehook.Event{dnsmasqEvent(leasehook.KindAdd, at(1796171775), "lh-dm-client")},
		},
		{
			// A renewal under --script-on-renewal: no supplied hostname, but the
			// lease's name is the fourth argument.
			name: "old is a renewal",
			args: []string{"old", mac, ip, "lh-dm-client"},
			env:  with(dnsmasqAddEnv(), "DNSMASQ_SUPPLIED_HOSTNAME", "", "DNSMASQ_DATA_MISSING", "1", "DNSMASQ_LEASE_EXPIRES", "1796171779"),
			want: []leasehook.Event{dnsmasqEvent(leasehook.KindRenew, at(1796171779), "lh-dm-client")},
		},
		{
			name: "del is a release without expiry",
			args: []string{"del", mac, ip, "lh-dm-client"},
			env:  with(dnsmasqAddEnv(), "DNSMASQ_TIME_REMAINING", ""),
			want: []leasehook.Event{dnsmasqEvent(leasehook.KindRelease, nil, "lh-dm-client")},
		},
		{
			name: "no hostname argument falls back to the supplied one",
			args: []string{"add", mac, ip},
			env:  dnsmasqAddEnv(),
			want: []leasehook.Event{dnsmasqEvent(leasehook.KindAdd, at(1796171775), "lh-dm-client")},
		},
		{
			// DNSMASQ_OLD_HOSTNAME case: the name was removed, so none is given.
			name: "no hostname at all",
			args: []string{"old", mac, ip},
			env:  with(dnsmasqAddEnv(), "DNSMASQ_SUPPLIED_HOSTNAME", "", "DNSMASQ_OLD_HOSTNAME", "printer"),
			want: []leasehook.Event{dnsmasqEvent(leasehook.KindRenew, at(1796171775), "")},
		},
		{
			name: "a hostname with control characters is dropped, not the event",
			args: []string{"add", mac, ip},
			env:  with(dnsmasqAddEnv(), "DNSMASQ_SUPPLIED_HOSTNAME", "evil\x1b[2J"),
			want: []leasehook.Event{dnsmasqEvent(leasehook.KindAdd, at(1796171775), "")},
		},
		{
			name: "expiry 0 is an infinite lease",
			args: []string{"add", mac, ip, "lh-dm-client"},
			env:  with(dnsmasqAddEnv(), "DNSMASQ_LEASE_EXPIRES", "0", "DNSMASQ_TIME_REMAINING", ""),
			want: []leasehook.Event{dnsmasqEvent(leasehook.KindAdd, nil, "lh-dm-client")},
		},
		{
			name: "broken-RTC build: time remaining beats lease length",
			args: []string{"add", mac, ip, "lh-dm-client"},
			env:  with(dnsmasqAddEnv(), "DNSMASQ_LEASE_EXPIRES", "", "DNSMASQ_LEASE_LENGTH", "7200"),
			want: []leasehook.Event{dnsmasqEvent(leasehook.KindAdd, &remaining, "lh-dm-client")},
		},
		{
			name: "broken-RTC build: lease length alone",
			args: []string{"add", mac, ip, "lh-dm-client"},
			env:  with(dnsmasqAddEnv(), "DNSMASQ_LEASE_EXPIRES", "", "DNSMASQ_TIME_REMAINING", "", "DNSMASQ_LEASE_LENGTH", "7200"),
			want: []leasehook.Event{dnsmasqEvent(leasehook.KindAdd, &lengthOnly, "lh-dm-client")},
		},
		{
			name: "broken-RTC build: infinite",
			args: []string{"add", mac, ip, "lh-dm-client"},
			env:  with(dnsmasqAddEnv(), "DNSMASQ_LEASE_EXPIRES", "", "DNSMASQ_TIME_REMAINING", "", "DNSMASQ_LEASE_LENGTH", "0"),
			want: []leasehook.Event{dnsmasqEvent(leasehook.KindAdd, nil, "lh-dm-client")},
		},
		{name: "init", args: []string{"init"}, env: map[string]string{}},
		{name: "arp-add", args: []string{"arp-add", mac, ip}, env: map[string]string{}},
		{name: "arp-del", args: []string{"arp-del", mac, ip}, env: map[string]string{}},
		{name: "tftp", args: []string{"tftp", "1234", ip, "/srv/tftp/pxelinux.0"}, env: map[string]string{}},
		{name: "relay-snoop", args: []string{"relay-snoop", "eth0", "fe80::1", "2001:db8:1::/48"}, env: map[string]string{}},
		{name: "unknown future action", args: []string{"shutdown"}, env: map[string]string{}},
		{
			name: "DHCPv6 lease",
			args: []string{"add", "00:01:00:01:2c:4f:7a:10:02:1b:4e:00:07:01", "2001:db8::101", "lh-dm-client"},
			env: map[string]string{
				"DNSMASQ_IAID": "1", "DNSMASQ_SERVER_DUID": "00:01:00:01:2c:4f:7a:00:02:00:00:00:00:01",
				"DNSMASQ_MAC": mac, "DNSMASQ_LEASE_EXPIRES": "1796171775",
			},
		},
		{
			name:    "token ring",
			args:    []string{"add", "06-01:23:45:67:89:ab", ip},
			env:     dnsmasqAddEnv(),
			wantErr: "hardware type 6 is not Ethernet (1)",
		},
		{
			name:    "InfiniBand",
			args:    []string{"add", "20-00:00:00:00:fe:80:00:00:00:00:00:00:00:02:c9:03:00:01:02:03", ip},
			env:     dnsmasqAddEnv(),
			wantErr: "hardware type 32 is not Ethernet",
		},
		{
			name:    "no hardware address",
			args:    []string{"add", "01-", ip},
			env:     dnsmasqAddEnv(),
			wantErr: "no hardware address",
		},
		{name: "no action", args: nil, wantErr: "no action"},
		{name: "missing IP", args: []string{"add", mac}, env: dnsmasqAddEnv(), wantErr: "want MAC and IP"},
		{name: "bad IP", args: []string{"add", mac, "100.64.7"}, env: dnsmasqAddEnv(), wantErr: "IP argument"},
		{name: "bad MAC", args: []string{"add", "02:1b:4e", ip}, env: dnsmasqAddEnv(), wantErr: "not a MAC address"},
		{
			name:    "bad expiry",
			args:    []string{"add", mac, ip},
			env:     with(dnsmasqAddEnv(), "DNSMASQ_LEASE_EXPIRES", "soon"),
			wantErr: "DNSMASQ_LEASE_EXPIRES",
		},
		{
			name:    "bad client id",
			args:    []string{"add", mac, ip},
			env:     with(dnsmasqAddEnv(), "DNSMASQ_CLIENT_ID", "01:zz"),
			wantErr: "DNSMASQ_CLIENT_ID",
		},
	})
}

// keaLeaseEnv is a lease as Kea 2.2's run_script wrote it in TestRealKeaLease,
// under prefix (LEASE4, LEASES4_AT0, DELETED_LEASES4_AT0).
func keaLeaseEnv(env map[string]string, prefix, addr, mac string, cltt string) map[string]string {
	for k, v := range map[string]string{
		"_ADDRESS": addr, "_CLIENT_ID": "01:" + mac, "_CLTT": cltt, "_HOSTNAME": "lh-kea-client",
		"_HWADDR": mac, "_HWADDR_TYPE": "1", "_STATE": "default", "_SUBNET_ID": "1", "_VALID_LIFETIME": "3600",
	} {
		env[prefix+k] = v
	}
	return env
}

func keaQuery(kind, ciaddr string) map[string]string {
	return map[string]string{
		"QUERY4_TYPE": kind, "QUERY4_CIADDR": ciaddr, "QUERY4_TXID": "551587859",
		"QUERY4_HWADDR": "02:1b:4e:00:08:01", "QUERY4_HWADDR_TYPE": "1", "QUERY4_IFACE_NAME": "lh-srv",
	}
}

func keaEvent(kind, addr string, expires *time.Time) leasehook.Event {
	return leasehook.Event{
		Kind: kind, Time: hookRan, Inside: addr, MAC: "02:1b:4e:00:08:01", ClientID: "01021b4e000801",
		Hostname: "lh-kea-client", Expires: expires, Source: leasehook.SourceKea,
	}
}

func TestFromKea(t *testing.T) {
	const mac, addr, moved = "02:1b:4e:00:08:01", "100.64.8.100", "100.64.8.101"
	committed := func(kind, ciaddr string, deleted, leases int) map[string]string {
		env := keaQuery(kind, ciaddr)
		env["DELETED_LEASES4_SIZE"] = string(rune('0' + deleted))
		env["LEASES4_SIZE"] = string(rune('0' + leases))
		return env
	}
	runParseCases(t, leasehook.FromKea, []parseCase{
		{
			name: "grant",
			args: []string{"leases4_committed"},
			env:  keaLeaseEnv(committed("DHCPREQUEST", "0.0.0.0", 0, 1), "LEASES4_AT0", addr, mac, "1796168184"),
			want: []leasehook.Event{keaEvent(leasehook.KindAdd, addr, at(1796168184+3600))},
		},
		{
			name: "renewal: ciaddr is the lease",
			args: []string{"leases4_committed"},
			env:  keaLeaseEnv(committed("DHCPREQUEST", addr, 0, 1), "LEASES4_AT0", addr, mac, "1796168187"),
			want: []leasehook.Event{keaEvent(leasehook.KindRenew, addr, at(1796168187+3600))},
		},
		{
			name: "release",
			args: []string{"leases4_committed"},
			env:  keaLeaseEnv(committed("DHCPRELEASE", addr, 1, 0), "DELETED_LEASES4_AT0", addr, mac, "1796168187"),
			want: []leasehook.Event{keaEvent(leasehook.KindRelease, addr, nil)},
		},
		{
			name: "moved address: old released before new added",
			args: []string{"leases4_committed"},
			env: keaLeaseEnv(keaLeaseEnv(committed("DHCPREQUEST", "0.0.0.0", 1, 1),
				"DELETED_LEASES4_AT0", addr, mac, "1796168187"), "LEASES4_AT0", moved, mac, "1796168190"),
			want: []leasehook.Event{
				keaEvent(leasehook.KindRelease, addr, nil),
				keaEvent(leasehook.KindAdd, moved, at(1796168190+3600)),
			},
		},
		{
			name: "infinite lifetime",
			args: []string{"leases4_committed"},
			env: with(keaLeaseEnv(committed("DHCPREQUEST", "0.0.0.0", 0, 1), "LEASES4_AT0", addr, mac, "1796168184"),
				"LEASES4_AT0_VALID_LIFETIME", "4294967295"),
			want: []leasehook.Event{keaEvent(leasehook.KindAdd, addr, nil)},
		},
		{
			name: "reused lease: nothing committed",
			args: []string{"leases4_committed"},
			env:  committed("DHCPREQUEST", addr, 0, 0),
		},
		{
			name: "decline",
			args: []string{"lease4_decline"},
			env:  keaLeaseEnv(keaQuery("DHCPDECLINE", "0.0.0.0"), "LEASE4", addr, mac, "1796168184"),
			want: []leasehook.Event{keaEvent(leasehook.KindRelease, addr, nil)},
		},
		{
			name: "expire has no query",
			args: []string{"lease4_expire"},
			env:  with(keaLeaseEnv(map[string]string{}, "LEASE4", addr, mac, "1796168184"), "REMOVE_LEASE", "false"),
			want: []leasehook.Event{keaEvent(leasehook.KindRelease, addr, nil)},
		},
		{name: "lease4_renew repeats the committed renewal", args: []string{"lease4_renew"},
			env: keaLeaseEnv(keaQuery("DHCPREQUEST", addr), "LEASE4", addr, mac, "1796168187")},
		{name: "lease4_release repeats the committed release", args: []string{"lease4_release"},
			env: keaLeaseEnv(keaQuery("DHCPRELEASE", addr), "LEASE4", addr, mac, "1796168187")},
		{name: "lease4_recover", args: []string{"lease4_recover"},
			env: with(keaLeaseEnv(map[string]string{}, "LEASE4", addr, "", "1796168184"), "LEASE4_HWADDR_TYPE", "")},
		{name: "lease4_select", args: []string{"lease4_select"},
			env: keaLeaseEnv(keaQuery("DHCPREQUEST", "0.0.0.0"), "LEASE4", addr, mac, "1796168184")},
		{name: "DISCOVER", args: []string{"leases4_committed"},
			env: keaLeaseEnv(committed("DHCPDISCOVER", "0.0.0.0", 0, 1), "LEASES4_AT0", addr, mac, "1796168184")},
		{name: "DHCPv6", args: []string{"leases6_committed"},
			env: map[string]string{"LEASES6_SIZE": "1", "LEASES6_AT0_ADDRESS": "2001:db8::100"}},
		{name: "lease6_release", args: []string{"lease6_release"}, env: map[string]string{"LEASE6_ADDRESS": "2001:db8::100"}},
		{
			name: "non-Ethernet",
			args: []string{"leases4_committed"},
			env: with(keaLeaseEnv(committed("DHCPREQUEST", "0.0.0.0", 0, 1), "LEASES4_AT0", addr, mac, "1796168184"),
				"LEASES4_AT0_HWADDR_TYPE", "32"),
			wantErr: "HWADDR_TYPE 32 is not Ethernet (1)",
		},
		{
			name: "no hardware address",
			args: []string{"lease4_expire"},
			env: with(keaLeaseEnv(map[string]string{}, "LEASE4", addr, mac, "1796168184"),
				"LEASE4_HWADDR", "", "LEASE4_HWADDR_TYPE", ""),
			wantErr: "no hardware address",
		},
		{
			name:    "count without lease",
			args:    []string{"leases4_committed"},
			env:     committed("DHCPREQUEST", "0.0.0.0", 0, 1),
			wantErr: "LEASES4_AT0_ADDRESS",
		},
		{
			name:    "bad count",
			args:    []string{"leases4_committed"},
			env:     with(committed("DHCPREQUEST", "0.0.0.0", 0, 0), "LEASES4_SIZE", "-1"),
			wantErr: "LEASES4_SIZE",
		},
		{
			name: "bad lifetime",
			args: []string{"leases4_committed"},
			env: with(keaLeaseEnv(committed("DHCPREQUEST", "0.0.0.0", 0, 1), "LEASES4_AT0", addr, mac, "1796168184"),
				"LEASES4_AT0_VALID_LIFETIME", "forever"),
			wantErr: "VALID_LIFETIME",
		},
		{name: "no hook point", wantErr: "no hook point"},
	})
}

func TestValidateNamesField(t *testing.T) {
	good := keaEvent(leasehook.KindAdd, "100.64.8.100", at(1796168184))
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	var zero time.Time
	for _, tc := range []struct {
		field string
		edit  func(*leasehook.Event)
	}{
		{"kind", func(e *leasehook.Event) { e.Kind = "grant" }},
		{"time", func(e *leasehook.Event) { e.Time = time.Time{} }},
		{"inside", func(e *leasehook.Event) { e.Inside = "2001:db8::1" }},
		{"inside", func(e *leasehook.Event) { e.Inside = "0.0.0.0" }},
		{"inside", func(e *leasehook.Event) { e.Inside = "100.64.8" }},
		{"mac", func(e *leasehook.Event) { e.MAC = "02:1B:4E:00:08:01" }},
		{"mac", func(e *leasehook.Event) { e.MAC = "" }},
		{"client_id", func(e *leasehook.Event) { e.ClientID = "01:02" }},
		{"client_id", func(e *leasehook.Event) { e.ClientID = "012" }},
		{"hostname", func(e *leasehook.Event) { e.Hostname = "a\nb" }},
		{"hostname", func(e *leasehook.Event) { e.Hostname = strings.Repeat("h", 256) }},
		{"expires", func(e *leasehook.Event) { e.Expires = &zero }},
		{"source", func(e *leasehook.Event) { e.Source = "isc-dhcpd" }},
	} {
		ev := good
		tc.edit(&ev)
		err := ev.Validate()
		var fe *leasehook.FieldError
		if !errors.As(err, &fe) || fe.Field != tc.field {
			t.Errorf("%+v: error %v, want one naming %s", ev, err, tc.field)
		}
	}
}

// The agent decodes these names; they are the contract.
func TestEventWireForm(t *testing.T) {
	ev := keaEvent(leasehook.KindAdd, "100.64.8.100", at(1796168184))
	data, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	const want = `{"kind":"add","time":"2026-12-01T23:36:17.166227699Z","inside":"100.64.8.100","mac":"02:1b:4e:00:08:01","client_id":"01021b4e000801","hostname":"lh-kea-client","expires":"2026-12-01T23:36:24Z","source":"kea"}`
	if string(data) != want {
		t.Errorf("wire form\n got %s\nwant %s", data, want)
	}
	ev.ClientID, ev.Hostname, ev.Expires = "", "", nil
	data, _ = json.Marshal(ev)
	for _, omitted := range []string{"client_id", "hostname", "expires"} {
		if strings.Contains(string(data), omitted) {
			t.Errorf("%s not omitted when empty: %s", omitted, data)
		}
	}
}
