package pcpserver

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/blocknat/blocknat/userspace/logattr"
	"github.com/blocknat/blocknat/userspace/pcp"
)

// announceCount is how many times a restart is announced (RFC 6886
// §3.2.1: up to ten, the interval doubling from announceFirst).
const announceCount = 10

// announce tells clients that the server restarted, so that they renew
// at once rather than when their mappings were due (RFC 6887 §14.1.3,
// RFC 6886 §3.2.1). It runs beside the request loops: a client that
// hears the first announcement renews while the rest are still to go.
//
// PCP gets the unsolicited ANNOUNCE both to the group on every inside
// interface and to each client holding a mapping, since a home router
// behind a CPE that does not pass multicast hears only the unicast.
// NAT-PMP gets only the unicast public address announcement: the
// multicast one has room for a single address, and every subscriber has
// its own public address, so one sent to the group would tell all but a
// few subscribers a wrong one.
func (s *Server) announce(ctx context.Context, ifaces []*inside) {
	delay := s.announceFirst
	for round := range announceCount {
		s.announceRound(ifaces, round == 0)
		if round == announceCount-1 {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		delay *= 2
	}
}

type natpmpClient struct {
	inside, public netip.Addr
}

func (s *Server) announceRound(ifaces []*inside, first bool) {
	s.mu.Lock()
	epoch := s.epochLocked()
	var pcpClients []netip.Addr
	var natpmpClients []natpmpClient
	for addr, keys := range s.byInside {
		var hasPCP, hasNATPMP bool
		for k := range keys {
			if s.entries[k].NATPMP {
				hasNATPMP = true
			} else {
				hasPCP = true
			}
		}
		if hasPCP {
			pcpClients = append(pcpClients, addr)
		}
		if hasNATPMP {
			if b, err := s.cfg.Mapping.Forward(addr); err == nil {
				natpmpClients = append(natpmpClients, natpmpClient{inside: addr, public: b.Public})
			}
		}
	}
	s.mu.Unlock()

	announcement := (&pcp.PCPResponse{Opcode: pcp.OpAnnounce, Result: pcp.Success, Epoch: epoch}).Encode()
	sent, failed := 0, 0
	group := netip.AddrPortFrom(s.cfg.AnnounceGroup, s.cfg.AnnouncePort)
	for _, in := range ifaces {
		if err := sendTo(in, announcement, group); err != nil {
			// An interface without multicast (lo) fails every round;
			// once is enough to say so.
			if first {
				s.log.Warn("pcp multicast announcement not sent", logattr.Interface, in.name, logattr.Err, withoutAddresses(err))
			}
			continue
		}
		sent++
	}
	for _, addr := range pcpClients {
		for _, in := range s.interfacesFor(ifaces, addr) {
			if sendTo(in, announcement, netip.AddrPortFrom(addr, s.cfg.AnnouncePort)) != nil {
				failed++
				continue
			}
			sent++
		}
	}
	for _, c := range natpmpClients {
		b := (&pcp.PublicAddressResponse{Result: pcp.NATPMPSuccess, Epoch: epoch, ExternalIP: c.public}).Encode()
		for _, in := range s.interfacesFor(ifaces, c.inside) {
			if sendTo(in, b, netip.AddrPortFrom(c.inside, s.cfg.AnnouncePort)) != nil {
				failed++
				continue
			}
			sent++
		}
	}
	s.mu.Lock()
	s.stats.announcements += uint64(sent)
	s.mu.Unlock()
	if failed > 0 {
		s.log.Debug("pcp unicast announcements not sent", logattr.Count, failed)
	}
}

// interfacesFor picks the inside interface a client is reached by: the
// one the route to it leaves by. A socket bound to a device sends there
// whatever the routes say, so with no route by one of ours the
// announcement goes out on each and reaches the client where it is.
func (s *Server) interfacesFor(ifaces []*inside, client netip.Addr) []*inside {
	if len(ifaces) == 1 {
		return ifaces
	}
	routes, err := netlink.RouteGet(net.IP(client.AsSlice()))
	if err == nil {
		for _, r := range routes {
			if i := slices.IndexFunc(ifaces, func(in *inside) bool { return in.index == r.LinkIndex }); i >= 0 {
				return ifaces[i : i+1]
			}
		}
	}
	return ifaces
}
