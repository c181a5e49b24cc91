package leasehook

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// dnsmasq's --dhcp-script actions that describe a DHCPv4 or DHCPv6 lease.
// "old" covers three cases: a lease read from the lease file at start (with
// DNSMASQ_DATA_MISSING=1), a changed hostname or MAC, and, with
// --script-on-renewal, a renewal. All of them say "this lease holds now".
var dnsmasqKinds = map[string]string{
	"add": KindAdd,
	"old": KindRenew,
	"del": KindRelease,
}

// FromDnsmasq reads one --dhcp-script call: args are the script's arguments
// without the program name (action, MAC, IP[, hostname]) and env its
// environment. An empty result means the call is not about a DHCPv4 lease
// (init, arp-add, arp-del, tftp, relay-snoop, DHCPv6, or an action dnsmasq adds
// later, which its manual tells scripts to ignore).
func FromDnsmasq(args []string, env map[string]string, now time.Time) ([]Event, error) {
	if len(args) == 0 {
		return nil, fmt.Errorf("dnsmasq: no action argument")
	}
	kind, ok := dnsmasqKinds[args[0]]
	if !ok {
		return nil, nil
	}
	// DHCPv6 calls pass a DUID where the MAC goes; DNSMASQ_IAID marks them even
	// before the address is looked at.
	if env["DNSMASQ_IAID"] != "" || env["DNSMASQ_SERVER_DUID"] != "" {
		return nil, nil
	}
	if len(args) < 3 {
		return nil, fmt.Errorf("dnsmasq %s: want MAC and IP arguments, got %q", args[0], args[1:])
	}
	addr, err := netip.ParseAddr(args[2])
	if err != nil {
		return nil, fmt.Errorf("dnsmasq %s: IP argument %q: %w", args[0], args[2], err)
	}
	if addr.Is6() && !addr.Is4In6() {
		return nil, nil
	}
	mac, err := dnsmasqMAC(args[1])
	if err != nil {
		return nil, fmt.Errorf("dnsmasq %s %s: %w", args[0], args[2], err)
	}
	ev := Event{
		Kind:   kind,
		Time:   now.UTC(),
		Inside: addr.Unmap().String(),
		MAC:    mac,
		Source: SourceDnsmasq,
	}
	if len(args) > 3 {
		ev.Hostname = cleanHostname(args[3])
	}
	if ev.Hostname == "" {
		// The argument is the name dnsmasq settled on (it may come from
		// --dhcp-host); without one, what the client asked for still helps.
		ev.Hostname = cleanHostname(env["DNSMASQ_SUPPLIED_HOSTNAME"])
	}
	if id := env["DNSMASQ_CLIENT_ID"]; id != "" {
		if ev.ClientID, err = normalClientID(id); err != nil {
			return nil, fmt.Errorf("dnsmasq %s %s: DNSMASQ_CLIENT_ID: %w", args[0], args[2], err)
		}
	}
	if kind != KindRelease {
		if ev.Expires, err = dnsmasqExpiry(env, now); err != nil {
			return nil, fmt.Errorf("dnsmasq %s %s: %w", args[0], args[2], err)
		}
	}
	if err := ev.Validate(); err != nil {
		return nil, fmt.Errorf("dnsmasq %s %s: %w", args[0], args[2], err)
	}
	return []Event{ev}, nil
}

// dnsmasqMAC undoes helper.c's formatting: Ethernet addresses come bare,
// anything else (or an empty address) as "<hwtype>-<bytes>", e.g.
// "06-01:23:45:67:89:ab" for token ring or "20-..." for InfiniBand.
func dnsmasqMAC(s string) (string, error) {
	if len(s) >= 3 && s[2] == '-' && (len(s) == 3 || strings.Contains(s[3:], ":")) {
		hwtype, err := strconv.ParseUint(s[:2], 16, 8)
		if err != nil {
			return "", fmt.Errorf("MAC argument %q: hardware type is not hex", s)
		}
		if len(s) == 3 {
			return "", fmt.Errorf("MAC argument %q: the lease has no hardware address", s)
		}
		return "", fmt.Errorf("MAC argument %q: hardware type %d is not Ethernet (1); only Ethernet leases are recorded", s, hwtype)
	}
	mac, err := normalMAC(s)
	if err != nil {
		return "", fmt.Errorf("MAC argument: %w", err)
	}
	return mac, nil
}

// dnsmasqExpiry prefers the absolute DNSMASQ_LEASE_EXPIRES. A dnsmasq built
// with HAVE_BROKEN_RTC sets DNSMASQ_LEASE_LENGTH instead, which is the whole
// lease length, so DNSMASQ_TIME_REMAINING (set unless the lease is infinite)
// is the better measure there. 0 is dnsmasq's infinite in both variables.
func dnsmasqExpiry(env map[string]string, now time.Time) (*time.Time, error) {
	if s, ok := env["DNSMASQ_LEASE_EXPIRES"]; ok {
		unix, err := strconv.ParseInt(s, 10, 64)
		if err != nil || unix < 0 {
			return nil, fmt.Errorf("DNSMASQ_LEASE_EXPIRES %q is not a unix time", s)
		}
		if unix == 0 {
			return nil, nil
		}
		t := time.Unix(unix, 0).UTC()
		return &t, nil
	}
	if s, ok := env["DNSMASQ_TIME_REMAINING"]; ok {
		secs, err := strconv.ParseUint(s, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("DNSMASQ_TIME_REMAINING %q is not a number of seconds", s)
		}
		t := now.UTC().Add(time.Duration(secs) * time.Second).Truncate(time.Second)
		return &t, nil
	}
	if s, ok := env["DNSMASQ_LEASE_LENGTH"]; ok {
		secs, err := strconv.ParseUint(s, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("DNSMASQ_LEASE_LENGTH %q is not a number of seconds", s)
		}
		if secs == 0 {
			return nil, nil
		}
		t := now.UTC().Add(time.Duration(secs) * time.Second).Truncate(time.Second)
		return &t, nil
	}
	return nil, nil
}
