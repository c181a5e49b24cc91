package pcpserver

import (
	"errors"
	"fmt"
	"net/netip"
	"runtime/debug"
	"time"

	"golang.org/x/time/rate"

	"github.com/blocknat/blocknat/userspace/logattr"
	"github.com/blocknat/blocknat/userspace/pcp"
)

// subscriberLimiter is one subscriber's request bucket and the slower
// bucket of the error answers it may still get beyond it.
type subscriberLimiter struct {
	requests *rate.Limiter
	errors   *rate.Limiter
	last     time.Time
}

func (s *Server) limiter(sub uint32, now time.Time) *subscriberLimiter {
	l := s.limiters[sub]
	if l == nil {
		l = &subscriberLimiter{
			requests: rate.NewLimiter(rate.Limit(s.cfg.Rate), s.cfg.Burst),
			errors:   rate.NewLimiter(rate.Every(errorAnswerInterval), 1),
		}
		s.limiters[sub] = l
	}
	l.last = now
	return l
}

// pruneLimiters forgets the buckets that have refilled: a new one is the
// same, and a NAT with many subscribers should not keep one for each
// that ever asked.
func (s *Server) pruneLimiters(now time.Time) {
	refill := time.Duration(float64(s.cfg.Burst)/s.cfg.Rate*float64(time.Second)) + errorAnswerInterval
	for sub, l := range s.limiters {
		if now.Sub(l.last) > refill {
			delete(s.limiters, sub)
		}
	}
}

// handle answers one datagram from source; nil means no answer. suspect
// is set for what arrived at SuspectPort.
func (s *Server) handle(b []byte, source netip.Addr, suspect bool) (out []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	// A bug must cost one request, not the agent that runs the NAT.
	defer func() {
		if r := recover(); r != nil {
			s.stats.dropped[DropInternal]++
			s.log.Error("pcp request handler panicked", logattr.Err, fmt.Sprint(r), logattr.Stack, string(debug.Stack()))
			out = nil
		}
	}()
	if suspect {
		s.stats.suspect++
	}
	req, err := pcp.Decode(b, source)
	var reqErr *pcp.RequestError
	if err != nil && !errors.As(err, &reqErr) {
		s.stats.dropped[DropMalformed]++
		return nil
	}
	if reqErr != nil && reqErr.Drop {
		s.stats.dropped[DropMalformed]++
		return nil
	}
	sub, isSubscriber := s.cfg.Mapping.SubscriberOf(source)
	if suspect || !isSubscriber {
		if !s.refusals.Allow() {
			s.stats.dropped[DropRefusalRate]++
			return nil
		}
		if reqErr != nil {
			return s.send(reqErr.Response(errorLifetime(reqErr.Result), s.epochLocked()))
		}
		return s.send(s.refuse(req, pcp.NotAuthorized))
	}
	lim := s.limiter(sub, time.Now())
	if !lim.requests.Allow() {
		if !lim.errors.Allow() {
			s.stats.dropped[DropRateLimited]++
			return nil
		}
		if reqErr != nil {
			return s.send(reqErr.Response(errorLifetime(reqErr.Result), s.epochLocked()))
		}
		return s.send(s.refuse(req, pcp.NoResources))
	}
	if reqErr != nil {
		return s.send(reqErr.Response(errorLifetime(reqErr.Result), s.epochLocked()))
	}
	switch r := req.(type) {
	case *pcp.PublicAddressRequest:
		block, err := s.cfg.Mapping.Block(sub)
		if err != nil {
			s.log.Error("pcp subscriber has no block", logattr.Subscriber, sub, logattr.Err, err)
			return s.send(s.refuse(req, pcp.NetworkFailure))
		}
		return s.send(&pcp.PublicAddressResponse{Result: pcp.NATPMPSuccess, Epoch: s.epochLocked(), ExternalIP: block.Public})
	case *pcp.MappingRequest:
		o := s.mapping(sub, source, r.PCP(source), true)
		resp := &pcp.MappingResponse{
			Opcode:       r.Opcode,
			Result:       pcp.NATPMPResultFor(o.result),
			Epoch:        s.epochLocked(),
			InternalPort: r.InternalPort,
		}
		if o.result == pcp.Success {
			resp.ExternalPort, resp.Lifetime = o.port, o.lifetime
		}
		return s.send(resp)
	case *pcp.PCPRequest:
		switch r.Opcode {
		case pcp.OpAnnounce:
			return s.send(&pcp.PCPResponse{Opcode: pcp.OpAnnounce, Result: pcp.Success, Epoch: s.epochLocked()})
		case pcp.OpMap, pcp.OpPeer:
			o := s.mapping(sub, source, r, false)
			return s.send(s.pcpAnswer(r, o))
		}
	}
	// Decode gives no other request; answer rather than fall silent.
	return s.send(s.refuse(req, pcp.UnsuppOpcode))
}

// outcome is what a MAP or PEER request (or a NAT-PMP mapping request
// taken as MAP) came to.
type outcome struct {
	result   pcp.ResultCode
	lifetime uint32 // granted, seconds
	public   netip.Addr
	port     uint16
	options  []pcp.Option // the processed options the answer repeats
}

func failed(code pcp.ResultCode, opts ...pcp.Option) outcome {
	return outcome{result: code, options: opts}
}

// pcpAnswer is the MAP or PEER response: on success with the assigned
// external endpoint, on an error with the request's fields copied (RFC
// 6887 §8.3), so that the client can match it to its nonce.
func (s *Server) pcpAnswer(r *pcp.PCPRequest, o outcome) *pcp.PCPResponse {
	resp := &pcp.PCPResponse{Opcode: r.Opcode, Result: o.result, Epoch: s.epochLocked(), Options: o.options}
	if o.result != pcp.Success {
		resp.Lifetime = errorLifetime(o.result)
		resp.Map, resp.Peer = r.Map, r.Peer
		return resp
	}
	resp.Lifetime = o.lifetime
	body := *requestBody(r)
	body.ExternalPort, body.ExternalIP = o.port, o.public
	if !o.public.IsValid() {
		// A deletion of nothing has no external address to give.
		body.ExternalIP = netip.IPv4Unspecified()
	}
	if r.Peer != nil {
		peer := *r.Peer
		peer.MapBody = body
		resp.Peer = &peer
	} else {
		resp.Map = &body
	}
	return resp
}

func requestBody(r *pcp.PCPRequest) *pcp.MapBody {
	if r.Peer != nil {
		return &r.Peer.MapBody
	}
	return r.Map
}

// refuse is the error answer to a request that decoded.
func (s *Server) refuse(req pcp.Request, code pcp.ResultCode) pcp.Response {
	epoch := s.epochLocked()
	switch r := req.(type) {
	case *pcp.PCPRequest:
		return &pcp.PCPResponse{Opcode: r.Opcode, Result: code, Lifetime: errorLifetime(code), Epoch: epoch, Map: r.Map, Peer: r.Peer}
	case *pcp.MappingRequest:
		return &pcp.MappingResponse{Opcode: r.Opcode, Result: pcp.NATPMPResultFor(code), Epoch: epoch, InternalPort: r.InternalPort}
	}
	return &pcp.PublicAddressResponse{Result: pcp.NATPMPResultFor(code), Epoch: epoch}
}

func errorLifetime(code pcp.ResultCode) uint32 {
	if code.ShortLifetime() {
		return shortErrorLifetime
	}
	return longErrorLifetime
}

// send counts the answer and encodes it.
func (s *Server) send(resp pcp.Response) []byte {
	if resp == nil {
		return nil
	}
	s.stats.requests[requestKey(resp)]++
	return resp.Encode()
}

// mapping handles MAP and PEER for the client at source, subscriber sub.
func (s *Server) mapping(sub uint32, source netip.Addr, r *pcp.PCPRequest, natpmp bool) outcome {
	body := requestBody(r)
	open := r.Opcode == pcp.OpMap
	if body.Protocol != ProtoTCP && body.Protocol != ProtoUDP {
		// Protocol 0 (all protocols) included: a subscriber's block is
		// ports, and only TCP and UDP map ports that PCP may hand out.
		return failed(pcp.UnsuppProtocol)
	}
	var required bool
	var processed []pcp.Option
	for _, o := range r.Options {
		switch o.(type) {
		case *pcp.ThirdParty:
			// A subscriber maps its own address only; any other inside
			// address is another subscriber's.
			return failed(pcp.NotAuthorized)
		case *pcp.Filter:
			// Not supported: the data plane filters by its configured
			// mode, with no per-mapping list of remote peers, and RFC
			// 6887 §13.3 lets a server that cannot filter refuse.
			return failed(pcp.UnsuppOption)
		case *pcp.PreferFailure:
			required = true
			processed = append(processed, o)
		}
	}
	if body.InternalPort == 0 {
		if r.Lifetime != 0 {
			// Port 0 means all ports, which only a deletion may name.
			return failed(pcp.MalformedRequest, processed...)
		}
		return s.deleteAll(source, body.Protocol, body.Nonce, natpmp)
	}
	block, err := s.cfg.Mapping.Block(sub)
	if err != nil {
		s.log.Error("pcp subscriber has no block", logattr.Subscriber, sub, logattr.Err, err)
		return failed(pcp.NetworkFailure, processed...)
	}
	if ip := body.ExternalIP.Unmap(); required && ip.IsValid() && !ip.IsUnspecified() && ip != block.Public {
		// Without PREFER_FAILURE a suggested address is only a hint, and
		// the subscriber has only the one.
		return failed(pcp.CannotProvideExternal, processed...)
	}
	suggested := body.ExternalPort
	if suggested != 0 && (suggested < block.PortLo || suggested > block.PortHi) {
		if required {
			return failed(pcp.CannotProvideExternal, processed...)
		}
		suggested = 0
	}
	key := Key{Inside: source, Port: body.InternalPort, Proto: body.Protocol}
	if e, ok := s.entries[key]; ok {
		return s.renew(e, r, body, open, natpmp, required, processed)
	}
	if r.Lifetime == 0 {
		// Deleting what does not exist succeeds (RFC 6887 §15).
		return outcome{result: pcp.Success, options: processed}
	}
	if len(s.byInside[source]) >= s.cfg.MaxMappings {
		return failed(pcp.UserExQuota, processed...)
	}
	res, err := s.cfg.Plane.Map(MapRequest{Key: key, Subscriber: sub, Suggested: suggested, Required: required && suggested != 0, Open: open})
	if err != nil {
		return failed(s.mapError(err, sub), processed...)
	}
	life := s.grant(r.Lifetime)
	e := Entry{
		Key: key, Subscriber: sub, Public: res.Public, Port: res.Port,
		Nonce: body.Nonce, NATPMP: natpmp, Open: open, Adopted: res.Adopted,
		Expires: s.cfg.Clock.MonoNow() + uint64(life)*uint64(time.Second),
	}
	if err := s.cfg.Plane.Put(e); err != nil {
		// Undo the Map, so the plane is as before the request: an
		// adopted mapping goes back to being implicit, a new one goes.
		if uerr := s.cfg.Plane.Unmap(e, !e.Adopted); uerr != nil {
			s.log.Error("pcp mapping not undone", logattr.Subscriber, sub, logattr.Err, uerr)
		}
		if errors.Is(err, ErrTableFull) {
			s.log.Warn("pcp table full", logattr.Count, len(s.entries))
			return failed(pcp.NoResources, processed...)
		}
		s.log.Error("pcp mapping not stored", logattr.Subscriber, sub, logattr.Err, err)
		return failed(pcp.NetworkFailure, processed...)
	}
	s.remember(e)
	return outcome{result: pcp.Success, lifetime: life, public: e.Public, port: e.Port, options: processed}
}

// mapError is the answer to a Plane.Map failure.
func (s *Server) mapError(err error, sub uint32) pcp.ResultCode {
	switch {
	case errors.Is(err, ErrBlockFull):
		return pcp.NoResources
	case errors.Is(err, ErrSuggestedTaken), errors.Is(err, ErrNotOwnBlock):
		return pcp.CannotProvideExternal
	}
	s.log.Error("pcp mapping failed", logattr.Subscriber, sub, logattr.Err, err)
	return pcp.NetworkFailure
}

// renew refreshes or deletes the mapping e that the request's key names.
func (s *Server) renew(e Entry, r *pcp.PCPRequest, body *pcp.MapBody, open, natpmp, required bool, processed []pcp.Option) outcome {
	// PCP holds a mapping to the nonce that made it (RFC 6887 §11.3).
	// NAT-PMP has no nonce, so it may touch only what NAT-PMP made, and
	// PCP only what PCP made.
	if e.NATPMP != natpmp || e.Nonce != body.Nonce {
		return failed(pcp.NotAuthorized, processed...)
	}
	if r.Lifetime == 0 {
		if err := s.release(e); err != nil {
			return failed(pcp.NetworkFailure, processed...)
		}
		return outcome{result: pcp.Success, public: e.Public, port: e.Port, options: processed}
	}
	if required && body.ExternalPort != 0 && body.ExternalPort != e.Port {
		return failed(pcp.CannotProvideExternal, processed...)
	}
	if open && !e.Open {
		// A MAP for what a PEER made must open it. The plane's only way
		// is to adopt: hand the mapping back as implicit, then map it
		// again at its port, which it takes over with its flows.
		if err := s.cfg.Plane.Unmap(e, false); err != nil {
			s.log.Error("pcp mapping not released", logattr.Subscriber, e.Subscriber, logattr.Err, err)
			return failed(pcp.NetworkFailure, processed...)
		}
		res, err := s.cfg.Plane.Map(MapRequest{Key: e.Key, Subscriber: e.Subscriber, Suggested: e.Port, Required: true, Open: true})
		if err != nil {
			// The mapping lives on as an implicit one; PCP's hold ends.
			if derr := s.cfg.Plane.Delete(e.Key); derr != nil {
				s.log.Error("pcp mapping not deleted", logattr.Subscriber, e.Subscriber, logattr.Err, derr)
			}
			s.forget(e.Key)
			return failed(s.mapError(err, e.Subscriber), processed...)
		}
		e.Open, e.Public, e.Port = true, res.Public, res.Port
	}
	life := s.grant(r.Lifetime)
	e.Expires = s.cfg.Clock.MonoNow() + uint64(life)*uint64(time.Second)
	if err := s.cfg.Plane.Put(e); err != nil {
		s.log.Error("pcp mapping not renewed", logattr.Subscriber, e.Subscriber, logattr.Err, err)
		if errors.Is(err, ErrTableFull) {
			return failed(pcp.NoResources, processed...)
		}
		return failed(pcp.NetworkFailure, processed...)
	}
	s.remember(e)
	return outcome{result: pcp.Success, lifetime: life, public: e.Public, port: e.Port, options: processed}
}

// deleteAll ends every mapping of the protocol the client holds by the
// same means (RFC 6886 §3.4; RFC 6887 §15 for PCP): NAT-PMP's, or PCP's
// under the request's nonce, since another nonce's are another
// application's.
func (s *Server) deleteAll(source netip.Addr, proto uint8, nonce pcp.Nonce, natpmp bool) outcome {
	for k := range s.byInside[source] {
		e := s.entries[k]
		if e.Proto != proto || e.NATPMP != natpmp || e.Nonce != nonce {
			continue
		}
		if err := s.release(e); err != nil {
			return failed(pcp.NetworkFailure)
		}
	}
	return outcome{result: pcp.Success}
}

// release ends PCP's hold on e: a mapping PCP made goes, an adopted one
// returns to the NAT's idle timeouts. On an error e stays in the index,
// for the expiry to try again.
func (s *Server) release(e Entry) error {
	if err := s.cfg.Plane.Unmap(e, !e.Adopted); err != nil {
		s.log.Error("pcp mapping not released", logattr.Subscriber, e.Subscriber, logattr.Err, err)
		return err
	}
	if err := s.cfg.Plane.Delete(e.Key); err != nil {
		s.log.Error("pcp mapping not deleted", logattr.Subscriber, e.Subscriber, logattr.Err, err)
		return err
	}
	s.forget(e.Key)
	return nil
}

// grant is the lifetime given for a requested one.
func (s *Server) grant(requested uint32) uint32 {
	return min(max(requested, s.minLife), s.maxLife)
}
