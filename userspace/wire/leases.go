package wire

import "time"

// LeaseEvent is one lease change as a DHCP server's hook delivers it. It
// has exactly the fields of userspace/leasehook's Event, which parses the
// servers' notifications, spools them and checks this form (Validate); a
// leasehook.Event converts to a LeaseEvent and back.
type LeaseEvent struct {
	Kind     string     `json:"kind"`                // "add", "renew" or "release"
	Time     time.Time  `json:"time"`                // when the hook ran (UTC), not when it was delivered
	Inside   string     `json:"inside"`              // IPv4 dotted
	MAC      string     `json:"mac"`                 // lowercase aa:bb:cc:dd:ee:ff
	ClientID string     `json:"client_id,omitempty"` // lowercase hex, no separators
	Hostname string     `json:"hostname,omitempty"`
	Expires  *time.Time `json:"expires,omitempty"` // nil: infinite lease, or not given (release)
	Source   string     `json:"source"`            // "dnsmasq" or "kea"
}

// LeasesRequest is the body of POST /v1/leases (role dhcp): lease events
// from a DHCP server's hook, oldest first.
type LeasesRequest struct {
	Events []LeaseEvent `json:"events"`
}

// LeasesResponse acknowledges lease events: all of them are on disk.
type LeasesResponse struct {
	AuditSeq uint64 `json:"audit_seq"`
	Accepted int    `json:"accepted"`
}
