// Package leasehook turns the lease notifications of a DHCP server into lease
// events for the agent, and keeps them on disk while the agent cannot take them.
//
// dnsmasq runs `blocknat lease dnsmasq` as its --dhcp-script and Kea's run_script
// hook runs `blocknat lease kea`; FromDnsmasq and FromKea read what each server
// passes, and Run hands the result to the agent through a Spool, so that an
// agent that is down or restarting costs no lease history, only delay.
//
// The package imports only the standard library because it is linked into the
// CLI, which a DHCP server starts for every lease change.
package leasehook

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Event kinds.
const (
	KindAdd     = "add"
	KindRenew   = "renew"
	KindRelease = "release"
)

// Event sources.
const (
	SourceDnsmasq = "dnsmasq"
	SourceKea     = "kea"
)

// Event is one lease change as the CLI sends it to the agent. It is also the
// form a Spool keeps on disk, so a queued event is delivered byte for byte as
// it was seen.
type Event struct {
	Kind     string     `json:"kind"`                // KindAdd, KindRenew or KindRelease
	Time     time.Time  `json:"time"`                // when the hook ran (UTC), not when it was delivered
	Inside   string     `json:"inside"`              // IPv4 dotted
	MAC      string     `json:"mac"`                 // lowercase aa:bb:cc:dd:ee:ff
	ClientID string     `json:"client_id,omitempty"` // lowercase hex, no separators
	Hostname string     `json:"hostname,omitempty"`
	Expires  *time.Time `json:"expires,omitempty"` // nil: infinite lease, or not given (release)
	Source   string     `json:"source"`            // SourceDnsmasq or SourceKea
}

// FieldError says which field of an Event is wrong, by its JSON name.
type FieldError struct {
	Field   string
	Problem string
}

func (e *FieldError) Error() string {
	return "lease event: " + e.Field + ": " + e.Problem
}

func fieldErr(field, format string, args ...any) error {
	return &FieldError{Field: field, Problem: fmt.Sprintf(format, args...)}
}

// maxHostnameBytes is the longest value DHCP option 12 can carry.
const maxHostnameBytes = 255

// maxClientIDHex is option 61's longest value (255 bytes) written in hex.
const maxClientIDHex = 2 * 255

// Validate checks the wire form strictly: the parsers normalise, so anything
// not already normal here came from somewhere else and is refused rather than
// guessed at. The error is a *FieldError.
func (e Event) Validate() error {
	switch e.Kind {
	case KindAdd, KindRenew, KindRelease:
	default:
		return fieldErr("kind", "%q is not %s, %s or %s", e.Kind, KindAdd, KindRenew, KindRelease)
	}
	if e.Time.IsZero() {
		return fieldErr("time", "not set")
	}
	if err := validInside(e.Inside); err != nil {
		return err
	}
	if mac, err := normalMAC(e.MAC); err != nil {
		return fieldErr("mac", "%v", err)
	} else if mac != e.MAC {
		return fieldErr("mac", "%q is not written as %q", e.MAC, mac)
	}
	if e.ClientID != "" {
		if id, err := normalClientID(e.ClientID); err != nil {
			return fieldErr("client_id", "%v", err)
		} else if id != e.ClientID {
			return fieldErr("client_id", "%q is not written as %q", e.ClientID, id)
		}
	}
	if e.Hostname != "" {
		if err := validHostname(e.Hostname); err != nil {
			return fieldErr("hostname", "%v", err)
		}
	}
	if e.Expires != nil && e.Expires.IsZero() {
		return fieldErr("expires", "zero time; leave it out for an infinite lease")
	}
	switch e.Source {
	case SourceDnsmasq, SourceKea:
	default:
		return fieldErr("source", "%q is not %s or %s", e.Source, SourceDnsmasq, SourceKea)
	}
	return nil
}

func validInside(s string) error {
	addr, err := netip.ParseAddr(s)
	if err != nil {
		return fieldErr("inside", "%q is not an IPv4 address", s)
	}
	if !addr.Is4() {
		return fieldErr("inside", "%q is not an IPv4 address", s)
	}
	if addr.IsUnspecified() || addr == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
		return fieldErr("inside", "%s cannot be leased", s)
	}
	return nil
}

// normalMAC accepts the spellings net.ParseMAC knows, but only 6-byte
// (Ethernet) addresses: the agent's records join on MAC, and a 20-byte
// InfiniBand address would never match anything it knows.
func normalMAC(s string) (string, error) {
	if s == "" {
		return "", fmt.Errorf("no hardware address")
	}
	hw, err := net.ParseMAC(s)
	if err != nil {
		return "", fmt.Errorf("%q is not a MAC address", s)
	}
	if len(hw) != 6 {
		return "", fmt.Errorf("%q is %d bytes long; only 6-byte Ethernet addresses are recorded", s, len(hw))
	}
	return hw.String(), nil
}

// normalClientID takes the colon-separated hex both servers print
// ("01:aa:bb:...") and returns it without separators.
func normalClientID(s string) (string, error) {
	hex := strings.ToLower(strings.ReplaceAll(s, ":", ""))
	if hex == "" {
		return "", fmt.Errorf("empty")
	}
	if len(hex)%2 != 0 {
		return "", fmt.Errorf("%q has an odd number of hex digits", s)
	}
	if len(hex) > maxClientIDHex {
		return "", fmt.Errorf("%d bytes is longer than DHCP allows", len(hex)/2)
	}
	for _, r := range hex {
		if !(r >= '0' && r <= '9' || r >= 'a' && r <= 'f') {
			return "", fmt.Errorf("%q is not hex", s)
		}
	}
	return hex, nil
}

// validHostname refuses what would corrupt a log line or a report: the value
// comes from the client, which may send any bytes.
func validHostname(s string) error {
	if len(s) > maxHostnameBytes {
		return fmt.Errorf("%d bytes is longer than DHCP allows", len(s))
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("%q is not UTF-8", s)
	}
	for _, r := range s {
		if unicode.IsControl(r) {
			return fmt.Errorf("%q contains a control character", s)
		}
	}
	return nil
}

// cleanHostname drops a trailing root dot and returns "" for a name that
// would not validate. Losing a client's odd hostname is better than losing
// the event that ties its MAC to an address.
func cleanHostname(s string) string {
	s = strings.TrimSuffix(strings.TrimSpace(s), ".")
	if s == "" || validHostname(s) != nil {
		return ""
	}
	return s
}
