package api

import (
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/blocknat/blocknat/userspace/audit"
	"github.com/blocknat/blocknat/userspace/leasehook"
	"github.com/blocknat/blocknat/userspace/store"
	"github.com/blocknat/blocknat/userspace/wire"
)

// maxLeaseSkew bounds how far after the agent's clock a hook may date an
// event: a DHCP server on the same box shares its clock.
const maxLeaseSkew = 5 * time.Minute

func (s *Server) parseLeases(r *http.Request, rep *reply) (func(*reply) *failure, *failure) {
	var req wire.LeasesRequest
	if f := decodeBody(r, &req, false); f != nil {
		return nil, f
	}
	// The entry says how many events came, never which addresses or MACs:
	// the audit log records uses of the records, and must not become a
	// second copy of the lease history.
	rep.criteria["events"] = fmt.Sprint(len(req.Events))
	if len(req.Events) == 0 {
		return nil, malformed(http.StatusBadRequest, "events: empty; give at least one lease event")
	}
	if len(req.Events) > wire.MaxLeaseEvents {
		return nil, malformed(http.StatusBadRequest, "events: %d events; at most %d in one request", len(req.Events), wire.MaxLeaseEvents)
	}
	evs := make([]store.LeaseEvent, 0, len(req.Events))
	kinds := map[string]int{}
	now := s.now()
	for i, e := range req.Events {
		ev, err := storeLeaseEvent(leasehook.Event(e), now)
		if err != nil {
			return nil, malformed(http.StatusBadRequest, "events[%d]: %v", i, err)
		}
		kinds[e.Kind]++
		evs = append(evs, ev)
	}
	return func(rep *reply) *failure {
		if err := s.store.ApplyLeases(evs); err != nil {
			return fromStore("store leases", err)
		}
		if s.leased != nil {
			s.leased()
		}
		names := make([]string, 0, len(kinds))
		for k, n := range kinds {
			names = append(names, fmt.Sprintf("%d %s", n, k))
		}
		slices.Sort(names)
		rep.outcome = audit.OutcomeAnswered
		rep.detail = plural(len(evs), "lease event") + " (" + strings.Join(names, ", ") + ")"
		accepted := len(evs)
		rep.answer = func(seq uint64) any { return wire.LeasesResponse{AuditSeq: seq, Accepted: accepted} }
		return nil
	}, nil
}

// StoreLeaseEvent checks a hook's lease event and converts it for the store;
// the error names the field at fault. The agent uses it for events it
// delivers from the spool itself.
func StoreLeaseEvent(e leasehook.Event, now time.Time) (store.LeaseEvent, error) {
	return storeLeaseEvent(e, now)
}

func storeLeaseEvent(e leasehook.Event, now time.Time) (store.LeaseEvent, error) {
	if err := e.Validate(); err != nil {
		return store.LeaseEvent{}, err
	}
	ev := store.LeaseEvent{Time: e.Time, Hostname: e.Hostname, Source: e.Source}
	switch e.Kind {
	case "add":
		ev.Kind = store.LeaseAdd
	case "renew":
		ev.Kind = store.LeaseRenew
	case "release":
		ev.Kind = store.LeaseRelease
	default:
		return ev, fmt.Errorf("kind: %q is not add, renew or release", e.Kind)
	}
	if e.Time.After(now.Add(maxLeaseSkew)) {
		return ev, fmt.Errorf("time: %s is more than %s after the agent's clock (%s)", e.Time.UTC().Format(time.RFC3339), maxLeaseSkew, now.UTC().Format(time.RFC3339))
	}
	inside, err := netip.ParseAddr(e.Inside)
	if err != nil || !inside.Is4() {
		return ev, fmt.Errorf("inside: %q is not an IPv4 address", e.Inside)
	}
	ev.Inside = inside
	if ev.MAC, err = net.ParseMAC(e.MAC); err != nil {
		return ev, fmt.Errorf("mac: %q is not a hardware address", e.MAC)
	}
	if e.ClientID != "" {
		if ev.ClientID, err = hex.DecodeString(e.ClientID); err != nil {
			return ev, fmt.Errorf("client_id: %q is not hex", e.ClientID)
		}
	}
	if e.Expires != nil {
		ev.Expires = *e.Expires
	}
	return ev, nil
}

func (s *Server) parseAuditSubject(r *http.Request, rep *reply) (func(*reply) *failure, *failure) {
	var req wire.AuditSubjectRequest
	if f := decodeBody(r, &req, false); f != nil {
		return nil, f
	}
	setCriterion(rep, "subscriber", req.Subscriber)
	setCriterion(rep, "mac", req.MAC)
	setCriterion(rep, "from", req.From)
	setCriterion(rep, "to", req.To)
	sel, f := parseSelector(req.Subscriber, req.MAC, true)
	if f != nil {
		return nil, f
	}
	from, to, f := parseRange(req.From, req.To)
	if f != nil {
		return nil, f
	}
	if to.Sub(from) > wire.MaxSubjectWindow {
		return nil, malformed(http.StatusBadRequest, "to: the period %s .. %s is longer than %s", req.From, req.To, wire.MaxSubjectWindow)
	}
	subject := ""
	match := func(e audit.Entry) bool { return false }
	if sel.mac != nil {
		subject = subjectMAC(sel.mac)
		match = func(e audit.Entry) bool {
			hw, err := net.ParseMAC(e.Criteria["mac"])
			return err == nil && hw.String() == sel.mac.String()
		}
	} else {
		subject = subjectInside(sel.inside)
		match = func(e audit.Entry) bool {
			a, err := netip.ParseAddr(e.Criteria["subscriber"])
			return err == nil && a.Unmap() == sel.inside
		}
	}
	// The search itself names the subject, so it shows in the next one.
	rep.subjects = []string{subject}
	return func(rep *reply) *failure {
		uses := []wire.SubjectUse{}
		err := s.audit.Scan(from, to, func(e audit.Entry) error {
			var named []string
			switch {
			case match(e):
				named = append(named, "criteria")
			case slices.Contains(e.Subjects, subject):
				named = append(named, "answer")
			case truncatedSubjects(e):
				// A bulk export named more subjects than an entry holds:
				// it may have named this one, and a subject is owed the
				// benefit of that doubt.
				named = append(named, "answer (possibly: more subjects than the entry could hold)")
			}
			if named != nil {
				uses = append(uses, wire.SubjectUse{
					Seq: e.Seq, Time: e.Time.UTC(), Action: e.Action, Role: e.Role,
					Purpose: e.Purpose, Outcome: string(e.Outcome), Named: named,
				})
			}
			return nil
		})
		if err != nil {
			return internal("audit scan: %v", err)
		}
		rep.outcome = outcomeOf(len(uses))
		rep.detail = plural(len(uses), "use")
		resp := wire.AuditSubjectResponse{Subject: subject, From: from.UTC(), To: to.UTC(), Uses: uses}
		rep.answer = func(seq uint64) any {
			resp.AuditSeq = seq
			return resp
		}
		return nil
	}, nil
}

// truncatedSubjects reports whether the entry's subject list was cut at
// audit.MaxSubjects.
func truncatedSubjects(e audit.Entry) bool {
	n := len(e.Subjects)
	return n > 0 && strings.HasPrefix(e.Subjects[n-1], "…truncated")
}
