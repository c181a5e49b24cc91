package leasehook

import (
	"fmt"
	"net/netip"
	"strconv"
	"time"
)

// keaInfiniteLifetime is how Kea writes an infinite valid-lifetime.
const keaInfiniteLifetime = 0xffffffff

// keaHardwareEthernet is LEASE4_HWADDR_TYPE for Ethernet (ARP hardware type 1).
const keaHardwareEthernet = "1"

// FromKea reads one call from Kea's run_script hook library: args[0] is the
// hook point, and the lease comes in env (LEASE4_*, or LEASES4_AT<i>_* and
// DELETED_LEASES4_AT<i>_* for leases4_committed). An empty result means the
// call does not change which device holds an IPv4 address.
//
// Kea 2.2's library registers leases4_committed, lease4_renew, lease4_release,
// lease4_decline, lease4_expire and lease4_recover for DHCPv4, and no
// lease4_select or lease4_rebind. Kea runs leases4_committed after it has
// written the lease changes of every DHCPREQUEST, renewals included, and of
// every DHCPRELEASE, so that one call is the record of a transaction:
//
//	leases4_committed  each DELETED_LEASES4 → release, then each LEASES4 → add,
//	                   or renew when the query's ciaddr is that address (RFC
//	                   2131: only a client RENEWING or REBINDING a lease it
//	                   holds fills ciaddr)
//	lease4_decline     release: the client gave the address up
//	lease4_expire      release: the lease ran out and was reclaimed
//	lease4_renew       skipped: runs before the lease is written and repeats
//	                   the renewal leases4_committed reports
//	lease4_release     skipped: likewise repeats the release
//	lease4_recover     skipped: a declined address leaves probation and goes
//	                   back to the pool; no device holds it, and the decline
//	                   already ended the last one's lease
//
// Everything else (DHCPv6 hook points, and lease4_select or lease4_rebind
// should a later library pass them, since leases4_committed reports the same
// transaction) is skipped, as is any call whose query is a DHCPDISCOVER: a
// DISCOVER only ever yields an offer.
func FromKea(args []string, env map[string]string, now time.Time) ([]Event, error) {
	if len(args) == 0 {
		return nil, fmt.Errorf("kea: no hook point argument")
	}
	hook := args[0]
	if env["QUERY4_TYPE"] == "DHCPDISCOVER" {
		return nil, nil
	}
	switch hook {
	case "leases4_committed":
		return keaCommitted(env, now)
	case "lease4_decline", "lease4_expire":
		return keaOne(hook, KindRelease, env, now)
	default:
		return nil, nil
	}
}

func keaOne(hook, kind string, env map[string]string, now time.Time) ([]Event, error) {
	ev, err := keaLease(kind, "LEASE4", env, now)
	if err != nil {
		return nil, fmt.Errorf("kea %s: %w", hook, err)
	}
	return []Event{ev}, nil
}

func keaCommitted(env map[string]string, now time.Time) ([]Event, error) {
	const hook = "leases4_committed"
	deleted, err := keaCount(env, "DELETED_LEASES4_SIZE")
	if err != nil {
		return nil, fmt.Errorf("kea %s: %w", hook, err)
	}
	committed, err := keaCount(env, "LEASES4_SIZE")
	if err != nil {
		return nil, fmt.Errorf("kea %s: %w", hook, err)
	}
	// An unset or unparsable ciaddr means the client is not renewing.
	ciaddr, _ := netip.ParseAddr(env["QUERY4_CIADDR"])
	events := make([]Event, 0, deleted+committed)
	// The old lease ends before the new one starts: a client that moved to a
	// new address held the old one until this transaction.
	for i := range deleted {
		ev, err := keaLease(KindRelease, "DELETED_LEASES4_AT"+strconv.Itoa(i), env, now)
		if err != nil {
			return nil, fmt.Errorf("kea %s: %w", hook, err)
		}
		events = append(events, ev)
	}
	for i := range committed {
		ev, err := keaLease(KindAdd, "LEASES4_AT"+strconv.Itoa(i), env, now)
		if err != nil {
			return nil, fmt.Errorf("kea %s: %w", hook, err)
		}
		if ciaddr.IsValid() && ciaddr.String() == ev.Inside {
			ev.Kind = KindRenew
		}
		events = append(events, ev)
	}
	return events, nil
}

// keaMaxLeases bounds a count read from the environment before it sizes a
// slice; one DHCPv4 transaction commits one lease.
const keaMaxLeases = 1024

func keaCount(env map[string]string, name string) (int, error) {
	s, ok := env[name]
	if !ok || s == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || n > keaMaxLeases {
		return 0, fmt.Errorf("%s %q is not a lease count", name, s)
	}
	return n, nil
}

// keaLease reads the variables run_script's extractLease4 writes under prefix.
func keaLease(kind, prefix string, env map[string]string, now time.Time) (Event, error) {
	get := func(suffix string) string { return env[prefix+suffix] }
	addr, err := netip.ParseAddr(get("_ADDRESS"))
	if err != nil || !addr.Is4() {
		return Event{}, fmt.Errorf("%s_ADDRESS %q is not an IPv4 address", prefix, get("_ADDRESS"))
	}
	if t := get("_HWADDR_TYPE"); t != "" && t != keaHardwareEthernet {
		return Event{}, fmt.Errorf("%s %s: %s_HWADDR_TYPE %s is not Ethernet (1); only Ethernet leases are recorded", prefix, addr, prefix, t)
	}
	mac, err := normalMAC(get("_HWADDR"))
	if err != nil {
		return Event{}, fmt.Errorf("%s %s: %s_HWADDR: %w", prefix, addr, prefix, err)
	}
	ev := Event{
		Kind:     kind,
		Time:     now.UTC(),
		Inside:   addr.String(),
		MAC:      mac,
		Hostname: cleanHostname(get("_HOSTNAME")),
		Source:   SourceKea,
	}
	if id := get("_CLIENT_ID"); id != "" {
		if ev.ClientID, err = normalClientID(id); err != nil {
			return Event{}, fmt.Errorf("%s %s: %s_CLIENT_ID: %w", prefix, addr, prefix, err)
		}
	}
	if kind != KindRelease {
		if ev.Expires, err = keaExpiry(prefix, env, now); err != nil {
			return Event{}, fmt.Errorf("%s %s: %w", prefix, addr, err)
		}
	}
	if err := ev.Validate(); err != nil {
		return Event{}, fmt.Errorf("%s %s: %w", prefix, addr, err)
	}
	return ev, nil
}

// keaExpiry is CLTT (the client's last transmission, unix seconds) plus the
// valid lifetime, which is how Kea itself computes a lease's end.
func keaExpiry(prefix string, env map[string]string, now time.Time) (*time.Time, error) {
	lifeStr := env[prefix+"_VALID_LIFETIME"]
	if lifeStr == "" {
		return nil, nil
	}
	life, err := strconv.ParseUint(lifeStr, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("%s_VALID_LIFETIME %q is not a number of seconds", prefix, lifeStr)
	}
	if life == keaInfiniteLifetime {
		return nil, nil
	}
	start := now.UTC().Truncate(time.Second)
	if s := env[prefix+"_CLTT"]; s != "" {
		cltt, err := strconv.ParseInt(s, 10, 64)
		if err != nil || cltt <= 0 {
			return nil, fmt.Errorf("%s_CLTT %q is not a unix time", prefix, s)
		}
		start = time.Unix(cltt, 0).UTC()
	}
	t := start.Add(time.Duration(life) * time.Second)
	return &t, nil
}
