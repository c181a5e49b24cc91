package pcpserver

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/blocknat/blocknat/test/testutil"
)

// PCP result codes (RFC 6887 §7.4) and NAT-PMP ones (RFC 6886 §3.5), as
// the tests expect them on the wire.
const (
	rSuccess               = 0
	rUnsuppVersion         = 1
	rNotAuthorized         = 2
	rMalformedRequest      = 3
	rUnsuppOpcode          = 4
	rUnsuppOption          = 5
	rMalformedOption       = 6
	rNetworkFailure        = 7
	rNoResources           = 8
	rUnsuppProtocol        = 9
	rUserExQuota           = 10
	rCannotProvideExternal = 11
	rAddressMismatch       = 12

	nNotAuthorized  = 2
	nOutOfResources = 4
	nUnsuppOpcode   = 5
)

func nonce(b byte) [12]byte { return [12]byte{b, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, b} }

func udpMap(client netip.Addr, n byte, intPort uint16, lifetime uint32) mapReq {
	return mapReq{op: 1, lifetime: lifetime, client: client, nonce: nonce(n), proto: 17, intPort: intPort}
}

func wantResult(t *testing.T, what string, r response, result uint16, lifetime uint32) {
	t.Helper()
	if r.result != result || r.lifetime != lifetime {
		t.Fatalf("%s: result %d lifetime %d, want result %d lifetime %d (% x)", what, r.result, r.lifetime, result, lifetime, r.raw)
	}
}

func TestNewValidates(t *testing.T) {
	plane := newFakePlane(testMapping(t), 0)
	clock := testutil.NewClock(time.Now(), 0)
	for _, tc := range []struct {
		field string
		edit  func(*Config)
	}{
		{"pcp.interfaces", func(c *Config) { c.Interfaces = nil }},
		{"pcp.interfaces[1]", func(c *Config) { c.Interfaces = []string{"lo", "lo"} }},
		{"pcp.interfaces[0]", func(c *Config) { c.Interfaces = []string{""} }},
		{"pcp.max_lifetime", func(c *Config) { c.MaxLifetime = 0 }},
		{"pcp.max_lifetime", func(c *Config) { c.MaxLifetime = 1500 * time.Millisecond }},
		{"pcp.min_lifetime", func(c *Config) { c.MinLifetime = c.MaxLifetime + time.Second }},
		{"pcp.max_mappings", func(c *Config) { c.MaxMappings = 0 }},
		{"pcp.rate", func(c *Config) { c.Rate = -1 }},
		{"pcp.burst", func(c *Config) { c.Burst = 0 }},
		{"pcp.suspect_port", func(c *Config) { c.Port, c.SuspectPort = 5351, 5351 }},
		{"pcp.announce_group", func(c *Config) { c.AnnounceGroup = netip.MustParseAddr("192.0.2.1") }},
		{"Config.Plane", func(c *Config) { c.Plane = nil }},
	} {
		cfg := Config{Interfaces: []string{"lo"}, Mapping: plane.m, Plane: plane, Clock: clock,
			MinLifetime: time.Minute, MaxLifetime: time.Hour, MaxMappings: 1, Rate: 1, Burst: 1}
		tc.edit(&cfg)
		_, err := New(cfg)
		if err == nil || !strings.HasPrefix(strings.TrimPrefix(err.Error(), "pcpserver: "), tc.field) {
			t.Errorf("%s: New = %v, want an error naming it", tc.field, err)
		}
	}
	cfg := Config{Interfaces: []string{"lo"}, Mapping: plane.m, Plane: plane, Clock: clock,
		MinLifetime: time.Minute, MaxLifetime: time.Hour, MaxMappings: 1, Rate: 1, Burst: 1}
	s, err := New(cfg)
	if err != nil {
		t.Fatalf("New of a good config: %v", err)
	}
	if s.cfg.Port != 5351 || s.cfg.SuspectPort != 5352 || s.cfg.AnnouncePort != 5350 || s.cfg.AnnounceGroup != netip.MustParseAddr("224.0.0.1") {
		t.Errorf("defaults: port %d suspect %d announce %d group %s", s.cfg.Port, s.cfg.SuspectPort, s.cfg.AnnouncePort, s.cfg.AnnounceGroup)
	}
}

// A MAP is made, renewed at the same port and deleted; the answers come
// from the address the request went to, and carry the epoch.
func TestMapNewRenewDelete(t *testing.T) {
	h := newHarness(t, nil)
	c := newClient(t, client2)
	key := Key{Inside: client2, Port: 4000, Proto: 17}
	to := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.6"), h.cfg.Port)

	c.send(udpMap(client2, 1, 4000, 3600).bytes(), to)
	raw, from, ok := c.recv(time.Second)
	if !ok {
		t.Fatal("no answer to a MAP")
	}
	if from != to {
		t.Errorf("answer from %s, want %s, the address the request went to", from, to)
	}
	r, err := decodeResponse(raw)
	if err != nil {
		t.Fatal(err)
	}
	wantResult(t, "new MAP for 3600 s", r, rSuccess, testMaxLifetime)
	if r.opcode != 0x81 || r.nonce != nonce(1) || r.proto != 17 || r.intPort != 4000 || r.extIP != public1 {
		t.Fatalf("MAP answer: opcode %#x nonce %x proto %d internal %d external %s", r.opcode, r.nonce, r.proto, r.intPort, r.extIP)
	}
	if r.extPort < 1024 || r.extPort > 1031 {
		t.Fatalf("external port %d, outside 127.0.0.2's block 1024-1031", r.extPort)
	}
	if r.epoch != testEpochAt {
		t.Errorf("epoch %d, want %d", r.epoch, testEpochAt)
	}
	port := r.extPort
	e, ok := h.plane.entry(key)
	if !ok || e.Port != port || e.Public != public1 || e.Nonce != nonce(1) || e.NATPMP || !e.Open || e.Subscriber != 2 {
		t.Fatalf("pinned entry %+v (present %v)", e, ok)
	}
	if want := h.clock.MonoNow() + testMaxLifetime*uint64(time.Second); e.Expires != want {
		t.Errorf("expires %d, want %d", e.Expires, want)
	}
	if km, ok := h.plane.kernelMapping(key); !ok || !km.Open || km.Implicit {
		t.Errorf("kernel mapping %+v (present %v), want an open PCP one", km, ok)
	}
	if st := h.srv.Stats(); st.Mappings[17] != 1 || st.Requests[RequestKey{"pcp", "MAP", "SUCCESS"}] != 1 {
		t.Errorf("stats %+v", st)
	}

	h.clock.Advance(30 * time.Second)
	r = h.ask(c, udpMap(client2, 1, 4000, 60).bytes())
	wantResult(t, "renewal for 60 s", r, rSuccess, testMinLifetime)
	if r.extPort != port || r.epoch != testEpochAt+30 {
		t.Errorf("renewal: port %d epoch %d, want %d and %d", r.extPort, r.epoch, port, testEpochAt+30)
	}
	if e, _ := h.plane.entry(key); e.Expires != h.clock.MonoNow()+testMinLifetime*uint64(time.Second) {
		t.Errorf("renewed entry expires %d", e.Expires)
	}

	r = h.ask(c, udpMap(client2, 1, 4000, 0).bytes())
	wantResult(t, "deletion", r, rSuccess, 0)
	if r.extPort != port {
		t.Errorf("deletion answers port %d, want the mapping's %d", r.extPort, port)
	}
	if _, ok := h.plane.entry(key); ok {
		t.Error("the deleted mapping is still pinned")
	}
	if _, ok := h.plane.kernelMapping(key); ok {
		t.Error("the deleted mapping is still in the kernel")
	}
	if u, _ := h.plane.lastUnmap(); u != (unmapCall{Key: key, Drop: true}) {
		t.Errorf("last Unmap %+v, want a drop of %v", u, key)
	}
	r = h.ask(c, udpMap(client2, 1, 4000, 0).bytes())
	wantResult(t, "deleting nothing", r, rSuccess, 0)
	if st := h.srv.Stats(); st.Mappings[17] != 0 {
		t.Errorf("mappings after deletion: %v", st.Mappings)
	}
}

// Only the nonce that made a mapping renews or deletes it, and NAT-PMP
// cannot touch what PCP made.
func TestNonceMismatch(t *testing.T) {
	h := newHarness(t, nil)
	c := newClient(t, client2)
	r := h.ask(c, udpMap(client2, 1, 4000, 300).bytes())
	wantResult(t, "new MAP", r, rSuccess, 300)
	port := r.extPort

	r = h.ask(c, udpMap(client2, 2, 4000, 300).bytes())
	wantResult(t, "renewal under another nonce", r, rNotAuthorized, 1800)
	if r.nonce != nonce(2) || r.intPort != 4000 {
		t.Errorf("error answer does not copy the request: nonce %x port %d", r.nonce, r.intPort)
	}
	r = h.ask(c, udpMap(client2, 2, 4000, 0).bytes())
	wantResult(t, "deletion under another nonce", r, rNotAuthorized, 1800)
	r = h.ask(c, natpmpMapReq(1, 4000, 0, 0))
	if r.version != 0 || r.opcode != 129 || r.result != nNotAuthorized {
		t.Errorf("NAT-PMP deletion of a PCP mapping: % x, want result %d", r.raw, nNotAuthorized)
	}
	if e, ok := h.plane.entry(Key{client2, 4000, 17}); !ok || e.Port != port {
		t.Fatalf("the mapping did not survive the refused requests: %+v %v", e, ok)
	}

	// A PCP client may pick the zero nonce; NAT-PMP, which has none,
	// still may not touch its mapping.
	wantResult(t, "MAP under the zero nonce", h.ask(c, mapReq{op: 1, lifetime: 300, client: client2, proto: 6, intPort: 4001}.bytes()), rSuccess, 300)
	if r := h.ask(c, natpmpMapReq(2, 4001, 0, 300)); r.result != nNotAuthorized {
		t.Errorf("NAT-PMP renewal of a PCP mapping under the zero nonce: % x, want result %d", r.raw, nNotAuthorized)
	}
	if r := h.ask(c, natpmpMapReq(2, 4001, 0, 0)); r.result != nNotAuthorized {
		t.Errorf("NAT-PMP deletion of a PCP mapping under the zero nonce: % x, want result %d", r.raw, nNotAuthorized)
	}
}

func TestSuggestedPort(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.MaxMappings = 8 })
	c := newClient(t, client3) // block 1032-1039 on 203.0.113.1

	req := udpMap(client3, 1, 5000, 300)
	req.extPort = 1036
	r := h.ask(c, req.bytes())
	wantResult(t, "suggested port in the block", r, rSuccess, 300)
	if r.extPort != 1036 {
		t.Errorf("suggested 1036 in the block, got %d", r.extPort)
	}

	req = udpMap(client3, 1, 5001, 300)
	req.extPort = 1024 // 127.0.0.2's block
	r = h.ask(c, req.bytes())
	wantResult(t, "suggested port outside the block", r, rSuccess, 300)
	if r.extPort < 1032 || r.extPort > 1039 {
		t.Errorf("suggested 1024 outside the block, got %d, want one of 1032-1039", r.extPort)
	}
	if m := h.plane.lastMap(); m.Suggested != 0 || m.Required {
		t.Errorf("a suggestion outside the block reached the plane: %+v", m)
	}

	req = udpMap(client3, 1, 5002, 300)
	req.extPort = 1024
	req.options = [][]byte{optPreferFailure}
	r = h.ask(c, req.bytes())
	wantResult(t, "PREFER_FAILURE outside the block", r, rCannotProvideExternal, 30)
	if !bytes.Equal(r.options, optPreferFailure) {
		t.Errorf("PREFER_FAILURE answer options % x, want the option back", r.options)
	}

	req.extPort = 1036 // taken by the first mapping
	r = h.ask(c, req.bytes())
	wantResult(t, "PREFER_FAILURE on a taken port", r, rCannotProvideExternal, 30)

	req.extPort, req.extIP = 1037, public2
	r = h.ask(c, req.bytes())
	wantResult(t, "PREFER_FAILURE on another public address", r, rCannotProvideExternal, 30)

	req.extIP = public1
	r = h.ask(c, req.bytes())
	wantResult(t, "PREFER_FAILURE on a free port", r, rSuccess, 300)
	if r.extPort != 1037 || r.extIP != public1 {
		t.Errorf("PREFER_FAILURE on free 1037: got %s:%d", r.extIP, r.extPort)
	}

	req = udpMap(client3, 1, 5003, 300)
	req.extIP = public2
	r = h.ask(c, req.bytes())
	wantResult(t, "another public address suggested", r, rSuccess, 300)
	if r.extIP != public1 {
		t.Errorf("external address %s, want the subscriber's own %s", r.extIP, public1)
	}
	if n := h.plane.tableSize(); n != 4 {
		t.Errorf("%d pinned mappings, want 4: no refused request made one", n)
	}
}

// A quota, a full block, a plane failure and a full table each get their
// code, and nothing is left behind.
func TestResourceErrors(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.MaxMappings = 2 })
	c := newClient(t, client4)
	for port := uint16(4000); port < 4002; port++ {
		wantResult(t, "MAP within quota", h.ask(c, udpMap(client4, 1, port, 300).bytes()), rSuccess, 300)
	}
	maps := h.plane.mapCalls()
	wantResult(t, "MAP beyond quota", h.ask(c, udpMap(client4, 1, 4002, 300).bytes()), rUserExQuota, 30)
	if r := h.ask(c, natpmpMapReq(2, 4003, 0, 300)); r.result != nOutOfResources {
		t.Errorf("NAT-PMP beyond quota: result %d, want %d", r.result, nOutOfResources)
	}
	if h.plane.mapCalls() != maps {
		t.Error("a request beyond the quota reached the plane")
	}

	c5 := newClient(t, client5)
	h.plane.setMapErr(ErrBlockFull)
	wantResult(t, "block full", h.ask(c5, udpMap(client5, 1, 4000, 300).bytes()), rNoResources, 30)
	h.plane.setMapErr(errors.New("map update: no space left on device"))
	wantResult(t, "plane failure", h.ask(c5, udpMap(client5, 1, 4000, 300).bytes()), rNetworkFailure, 30)
	h.plane.setMapErr(nil)

	h.plane.setCapacity(2) // already full with 127.0.0.4's two
	wantResult(t, "table full", h.ask(c5, udpMap(client5, 1, 4000, 300).bytes()), rNoResources, 30)
	key := Key{client5, 4000, 17}
	if _, ok := h.plane.kernelMapping(key); ok {
		t.Error("the mapping the full table could not hold is still in the kernel")
	}
	if u, _ := h.plane.lastUnmap(); u != (unmapCall{Key: key, Drop: true}) {
		t.Errorf("last Unmap %+v, want a drop of %v", u, key)
	}
}

// An implicit mapping in the own block is adopted and left to the idle
// timeouts when PCP lets go; one in an overflow block is refused.
func TestAdoption(t *testing.T) {
	h := newHarness(t, nil)
	c := newClient(t, client2)
	key := Key{client2, 4000, 6}
	h.plane.seed(key, kernelMapping{Public: public1, Port: 1029, Implicit: true})
	r := h.ask(c, mapReq{op: 1, lifetime: 300, client: client2, nonce: nonce(1), proto: 6, intPort: 4000}.bytes())
	wantResult(t, "MAP over an implicit mapping", r, rSuccess, 300)
	if r.extPort != 1029 {
		t.Errorf("adopted port %d, want the implicit mapping's 1029", r.extPort)
	}
	if e, _ := h.plane.entry(key); !e.Adopted {
		t.Errorf("entry %+v not marked adopted", e)
	}
	wantResult(t, "deletion", h.ask(c, mapReq{op: 1, client: client2, nonce: nonce(1), proto: 6, intPort: 4000}.bytes()), rSuccess, 0)
	if km, ok := h.plane.kernelMapping(key); !ok || !km.Implicit || km.Port != 1029 {
		t.Errorf("after deletion the adopted mapping is %+v (present %v), want it implicit again", km, ok)
	}

	overflow := Key{client2, 4001, 6}
	h.plane.seed(overflow, kernelMapping{Public: public2, Port: 1200, Implicit: true, Overflow: true})
	r = h.ask(c, mapReq{op: 1, lifetime: 300, client: client2, nonce: nonce(1), proto: 6, intPort: 4001}.bytes())
	wantResult(t, "MAP over an overflow mapping", r, rCannotProvideExternal, 30)
}

// PEER makes a mapping that is not open; a MAP under its nonce opens it
// at the same port. The PEER answer copies the remote peer.
func TestPeer(t *testing.T) {
	h := newHarness(t, nil)
	c := newClient(t, client2)
	key := Key{client2, 4000, 17}
	remote := netip.MustParseAddr("198.51.100.7")
	peer := mapReq{op: 2, lifetime: 300, client: client2, nonce: nonce(1), proto: 17, intPort: 4000, remotePort: 443, remoteIP: remote}
	r := h.ask(c, peer.bytes())
	wantResult(t, "PEER", r, rSuccess, 300)
	if r.opcode != 0x82 || r.remotePort != 443 || r.remoteIP != remote || r.extIP != public1 {
		t.Fatalf("PEER answer: opcode %#x remote %s:%d external %s", r.opcode, r.remoteIP, r.remotePort, r.extIP)
	}
	port := r.extPort
	if e, _ := h.plane.entry(key); e.Open {
		t.Error("a PEER mapping is open to every remote")
	}
	r = h.ask(c, udpMap(client2, 1, 4000, 300).bytes())
	wantResult(t, "MAP over the PEER mapping", r, rSuccess, 300)
	if r.extPort != port {
		t.Errorf("MAP moved the PEER mapping from %d to %d", port, r.extPort)
	}
	if e, _ := h.plane.entry(key); !e.Open || e.Adopted {
		t.Errorf("after MAP the entry is %+v, want open and still PCP's own", e)
	}
	if km, _ := h.plane.kernelMapping(key); !km.Open || km.Implicit {
		t.Errorf("kernel mapping %+v, want open", km)
	}
	r = h.ask(c, announceReq(client2))
	if r.opcode != 0x80 || r.result != rSuccess || r.lifetime != 0 || len(r.raw) != 24 {
		t.Errorf("ANNOUNCE answer % x", r.raw)
	}
}

// Beyond its bucket a subscriber gets one NO_RESOURCES, then silence.
func TestRateFlood(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.Rate, c.Burst = 0.5, 3 })
	c := newClient(t, client4)
	const flood = 20
	for range flood {
		c.send(announceReq(client4), netip.AddrPortFrom(serverAddr, h.cfg.Port))
	}
	var success, noResources, answers int
	for {
		raw, _, ok := c.recv(300 * time.Millisecond)
		if !ok {
			break
		}
		answers++
		r, err := decodeResponse(raw)
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case r.result == rSuccess:
			success++
		case r.result == rNoResources && r.lifetime == 30:
			noResources++
		default:
			t.Errorf("unexpected answer % x", raw)
		}
	}
	if success != 3 || noResources != 1 {
		t.Errorf("%d requests at once: %d SUCCESS and %d NO_RESOURCES, want 3 (the burst) and 1 (the capped error)", flood, success, noResources)
	}
	if d := h.srv.Stats().Dropped[DropRateLimited]; d != uint64(flood-answers) {
		t.Errorf("dropped as rate limited: %d, want %d", d, flood-answers)
	}
	// Another subscriber is not held back by the flood.
	wantResult(t, "another subscriber", h.ask(newClient(t, client2), announceReq(client2)), rSuccess, 0)
}

func TestNotSubscriber(t *testing.T) {
	h := newHarness(t, nil)
	c := newClient(t, stranger)
	r := h.ask(c, udpMap(stranger, 1, 4000, 300).bytes())
	wantResult(t, "MAP from no subscriber", r, rNotAuthorized, 1800)
	r = h.ask(c, natpmpPublicReq())
	if r.opcode != 128 || r.result != nNotAuthorized || r.public != netip.IPv4Unspecified() {
		t.Errorf("NAT-PMP public address to no subscriber: % x", r.raw)
	}
	if h.plane.mapCalls() != 0 || h.plane.tableSize() != 0 {
		t.Error("a request from no subscriber reached the plane")
	}
}

// What the data plane diverts to the suspect port is refused from the
// PCP port and creates nothing, though it claims a subscriber's address.
func TestSuspectPort(t *testing.T) {
	h := newHarness(t, nil)
	c := newClient(t, client2)
	suspect := netip.AddrPortFrom(serverAddr, h.cfg.SuspectPort)
	c.send(udpMap(client2, 1, 4000, 300).bytes(), suspect)
	raw, from, ok := c.recv(time.Second)
	if !ok {
		t.Fatal("no answer at the suspect port")
	}
	if want := netip.AddrPortFrom(serverAddr, h.cfg.Port); from != want {
		t.Errorf("suspect answer from %s, want %s (the port the client sent to)", from, want)
	}
	r, _ := decodeResponse(raw)
	wantResult(t, "suspect MAP", r, rNotAuthorized, 1800)
	c.send(natpmpMapReq(1, 4000, 0, 300), suspect)
	raw, _, _ = c.recv(time.Second)
	if r, _ := decodeResponse(raw); r.opcode != 129 || r.result != nNotAuthorized {
		t.Errorf("suspect NAT-PMP map: % x", raw)
	}
	if h.plane.mapCalls() != 0 || h.plane.tableSize() != 0 {
		t.Error("a suspect request reached the plane")
	}
	if st := h.srv.Stats(); st.Suspect != 2 {
		t.Errorf("suspect count %d, want 2", st.Suspect)
	}
	// The suspect bucket is global and bounded: a flood is cut off.
	for range 100 {
		c.send(announceReq(client2), suspect)
	}
	answered := 0
	for {
		if _, _, ok := c.recv(200 * time.Millisecond); !ok {
			break
		}
		answered++
	}
	if answered > refusalBurst+2 {
		t.Errorf("%d of 100 suspect requests answered, want at most about %d", answered, refusalBurst)
	}
	if h.srv.Stats().Dropped[DropRefusalRate] == 0 {
		t.Error("no suspect request counted as dropped")
	}
}

func TestMalformed(t *testing.T) {
	h := newHarness(t, nil)
	c := newClient(t, client2)
	good := udpMap(client2, 1, 4000, 300)
	withOpts := func(opts ...[]byte) []byte { r := good; r.options = opts; return r.bytes() }
	withProto := func(p byte) []byte { r := good; r.proto = p; return r.bytes() }
	const drop = 0xffff
	for _, tc := range []struct {
		name    string
		b       []byte
		version byte
		result  uint16
	}{
		{"one octet", []byte{2}, 0, drop},
		{"a response", append([]byte{2, 0x81}, make([]byte, 58)...), 0, drop},
		{"version 1", append([]byte{1, 1}, make([]byte, 58)...), 2, rUnsuppVersion},
		{"short header", good.bytes()[:20], 2, rMalformedRequest},
		{"not a multiple of 4", append(good.bytes(), 0), 2, rMalformedRequest},
		{"oversized", append(good.bytes(), make([]byte, 1200)...), 2, rMalformedRequest},
		{"opcode 5", append([]byte{2, 5}, make([]byte, 22)...), 2, rUnsuppOpcode},
		{"MAP cut short", good.bytes()[:40], 2, rMalformedRequest},
		{"client IP mismatch", udpMap(client3, 1, 4000, 300).bytes(), 2, rAddressMismatch},
		{"mandatory unknown option", withOpts([]byte{99, 0, 0, 0}), 2, rUnsuppOption},
		{"option longer than the packet", withOpts([]byte{2, 0, 0, 8}), 2, rMalformedOption},
		{"THIRD_PARTY", withOpts(optThirdParty(client3)), 2, rNotAuthorized},
		{"FILTER", withOpts(optFilter(96, 0, netip.MustParseAddr("198.51.100.0"))), 2, rUnsuppOption},
		{"protocol 0", withProto(0), 2, rUnsuppProtocol},
		{"protocol ICMP", withProto(1), 2, rUnsuppProtocol},
		{"internal port 0 with a lifetime", udpMap(client2, 1, 0, 300).bytes(), 2, rMalformedRequest},
		{"NAT-PMP opcode 3", []byte{0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, 0, nUnsuppOpcode},
		{"NAT-PMP map of 11 octets", natpmpMapReq(1, 4000, 0, 300)[:11], 0, drop},
		{"NAT-PMP public address of 4 octets", []byte{0, 0, 0, 0}, 0, drop},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, ok := h.tryAsk(c, tc.b, netip.AddrPortFrom(serverAddr, h.cfg.Port))
			switch {
			case tc.result == drop && ok:
				t.Errorf("want no answer, got % x", r.raw)
			case tc.result != drop && !ok:
				t.Errorf("no answer, want result %d", tc.result)
			case tc.result != drop && (r.version != tc.version || r.result != tc.result):
				t.Errorf("answer % x, want version %d result %d", r.raw, tc.version, tc.result)
			}
			wantResult(t, "ANNOUNCE after it", h.ask(c, announceReq(client2)), rSuccess, 0)
		})
	}
	// Random datagrams, and random changes to good ones: whatever each
	// gets, the server answers the next good request.
	rng := rand.New(rand.NewPCG(1, 2))
	seeds := [][]byte{good.bytes(), natpmpMapReq(2, 4000, 0, 300), announceReq(client2)}
	for i := range 300 {
		var b []byte
		if i%2 == 0 {
			b = make([]byte, rng.IntN(120))
			for j := range b {
				b[j] = byte(rng.UintN(256))
			}
		} else {
			b = append([]byte(nil), seeds[rng.IntN(len(seeds))]...)
			for range 1 + rng.IntN(4) {
				b[rng.IntN(len(b))] = byte(rng.UintN(256))
			}
		}
		c.send(b, netip.AddrPortFrom(serverAddr, h.cfg.Port))
	}
	for {
		if _, _, ok := c.recv(200 * time.Millisecond); !ok {
			break
		}
	}
	wantResult(t, "ANNOUNCE after the random datagrams", h.ask(c, announceReq(client2)), rSuccess, 0)
	if d := h.srv.Stats().Dropped[DropInternal]; d != 0 {
		t.Errorf("%d requests failed inside the server", d)
	}
}

func TestNATPMP(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.MaxMappings = 8 })
	c := newClient(t, client2)
	for _, tc := range []struct {
		client netip.Addr
		public netip.Addr
	}{{client2, public1}, {client4, public2}} {
		r := h.ask(newClient(t, tc.client), natpmpPublicReq())
		if len(r.raw) != 12 || r.opcode != 128 || r.result != 0 || r.public != tc.public || r.epoch != testEpochAt {
			t.Errorf("public address for %s: % x, want %s", tc.client, r.raw, tc.public)
		}
	}
	r := h.ask(c, natpmpMapReq(1, 5000, 1030, 7200))
	if r.opcode != 129 || r.result != 0 || r.intPort != 5000 || r.extPort != 1030 || r.lifetime != testMaxLifetime {
		t.Fatalf("NAT-PMP UDP map: % x", r.raw)
	}
	if e, _ := h.plane.entry(Key{client2, 5000, 17}); !e.NATPMP || e.Nonce != ([12]byte{}) {
		t.Errorf("entry %+v, want made by NAT-PMP with no nonce", e)
	}
	if r := h.ask(c, natpmpMapReq(1, 5000, 0, 300)); r.result != 0 || r.extPort != 1030 || r.lifetime != 300 {
		t.Errorf("NAT-PMP renewal: % x", r.raw)
	}
	if r := h.ask(c, natpmpMapReq(2, 5001, 0, 300)); r.opcode != 130 || r.result != 0 {
		t.Fatalf("NAT-PMP TCP map: % x", r.raw)
	}
	if r := h.ask(c, natpmpMapReq(1, 5002, 0, 300)); r.result != 0 {
		t.Fatalf("NAT-PMP second UDP map: % x", r.raw)
	}
	wantResult(t, "PCP UDP map", h.ask(c, udpMap(client2, 1, 5003, 300).bytes()), rSuccess, 300)
	if r := h.ask(c, natpmpMapReq(1, 0, 0, 0)); r.opcode != 129 || r.result != 0 || r.intPort != 0 || r.extPort != 0 || r.lifetime != 0 {
		t.Fatalf("NAT-PMP delete all UDP: % x", r.raw)
	}
	for _, tc := range []struct {
		port  uint16
		proto uint8
		left  bool
	}{{5000, 17, false}, {5002, 17, false}, {5001, 6, true}, {5003, 17, true}} {
		if _, ok := h.plane.entry(Key{client2, tc.port, tc.proto}); ok != tc.left {
			t.Errorf("after NAT-PMP delete all UDP: mapping %d/%d present %v, want %v", tc.port, tc.proto, ok, tc.left)
		}
	}
	// PCP's delete all takes only its own nonce's mappings.
	wantResult(t, "PCP delete all under another nonce", h.ask(c, udpMap(client2, 2, 0, 0).bytes()), rSuccess, 0)
	if _, ok := h.plane.entry(Key{client2, 5003, 17}); !ok {
		t.Error("PCP delete all under another nonce took a mapping")
	}
	wantResult(t, "PCP delete all", h.ask(c, udpMap(client2, 1, 0, 0).bytes()), rSuccess, 0)
	if _, ok := h.plane.entry(Key{client2, 5003, 17}); ok {
		t.Error("PCP delete all left its mapping")
	}
}

func TestExpiry(t *testing.T) {
	h := newHarness(t, nil)
	c := newClient(t, client2)
	made := Key{client2, 4000, 17}
	adopted := Key{client2, 4001, 17}
	h.plane.seed(adopted, kernelMapping{Public: public1, Port: 1030, Implicit: true})
	wantResult(t, "MAP", h.ask(c, udpMap(client2, 1, 4000, 120).bytes()), rSuccess, 120)
	wantResult(t, "MAP adopting", h.ask(c, udpMap(client2, 1, 4001, 200).bytes()), rSuccess, 200)

	h.clock.Advance(119 * time.Second)
	time.Sleep(100 * time.Millisecond) // five expiry ticks
	if _, ok := h.plane.entry(made); !ok {
		t.Fatal("a mapping expired a second early")
	}
	h.clock.Advance(time.Second)
	testutil.Eventually(t, time.Second, func() bool { _, ok := h.plane.entry(made); return !ok }, "the mapping to expire")
	if _, ok := h.plane.kernelMapping(made); ok {
		t.Error("the expired mapping is still in the kernel")
	}
	if _, ok := h.plane.entry(adopted); !ok {
		t.Fatal("the adopted mapping expired with the other")
	}
	h.clock.Advance(80 * time.Second)
	testutil.Eventually(t, time.Second, func() bool { _, ok := h.plane.entry(adopted); return !ok }, "the adopted mapping to expire")
	if km, ok := h.plane.kernelMapping(adopted); !ok || !km.Implicit {
		t.Errorf("the expired adopted mapping is %+v (present %v), want it implicit", km, ok)
	}
	if st := h.srv.Stats(); st.Mappings[17] != 0 {
		t.Errorf("mappings after expiry: %v", st.Mappings)
	}
	// The slot is free again: the quota counts only what is held.
	wantResult(t, "MAP after expiry", h.ask(c, udpMap(client2, 1, 4000, 120).bytes()), rSuccess, 120)
}

// A new server over the same pinned table keeps the mappings, their
// nonces and the quota, and announces the restart to the clients that
// hold them: PCP ANNOUNCE to one, NAT-PMP's public address to the other.
func TestRestart(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.MaxMappings = 1 })
	pcpClient, natpmpClient := newClient(t, client2), newClient(t, client3)
	r := h.ask(pcpClient, udpMap(client2, 1, 4000, 300).bytes())
	wantResult(t, "MAP", r, rSuccess, 300)
	port := r.extPort
	if r := h.ask(natpmpClient, natpmpMapReq(2, 4000, 0, 300)); r.result != 0 {
		t.Fatalf("NAT-PMP map: % x", r.raw)
	}
	if err := h.stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}

	pcpListener := newClient2(t, client2, h.cfg.AnnouncePort)
	natpmpListener := newClient2(t, client3, h.cfg.AnnouncePort)
	h.clock.Advance(7 * time.Second)
	h2 := startServer(t, h.cfg, func(s *Server) { s.announceFirst = 20 * time.Millisecond })

	for i := range 2 {
		raw, from, ok := pcpListener.recv(2 * time.Second)
		if !ok {
			t.Fatalf("PCP announcement %d not received", i+1)
		}
		if from.Port() != h.cfg.Port {
			t.Errorf("announcement from port %d, want the server's %d", from.Port(), h.cfg.Port)
		}
		a, err := decodeResponse(raw)
		if err != nil || len(raw) != 24 || a.version != 2 || a.opcode != 0x80 || a.result != 0 || a.lifetime != 0 || a.epoch != testEpochAt+7 {
			t.Fatalf("PCP announcement % x (%v)", raw, err)
		}
		raw, _, ok = natpmpListener.recv(2 * time.Second)
		if !ok {
			t.Fatalf("NAT-PMP announcement %d not received", i+1)
		}
		if a, err := decodeResponse(raw); err != nil || len(raw) != 12 || a.opcode != 128 || a.result != 0 || a.public != public1 || a.epoch != testEpochAt+7 {
			t.Fatalf("NAT-PMP announcement % x (%v)", raw, err)
		}
	}
	if st := h2.srv.Stats(); st.Mappings[17] != 1 || st.Mappings[6] != 1 {
		t.Errorf("mappings after restart %v, want one UDP and one TCP", st.Mappings)
	}
	wantResult(t, "MAP beyond the quota kept across the restart", h2.ask(pcpClient, udpMap(client2, 1, 4001, 300).bytes()), rUserExQuota, 30)
	r = h2.ask(pcpClient, udpMap(client2, 2, 4000, 300).bytes())
	wantResult(t, "renewal under another nonce after restart", r, rNotAuthorized, 1800)
	r = h2.ask(pcpClient, udpMap(client2, 1, 4000, 300).bytes())
	wantResult(t, "renewal after restart", r, rSuccess, 300)
	if r.extPort != port || r.epoch != testEpochAt+7 {
		t.Errorf("renewal after restart: port %d epoch %d, want %d and %d", r.extPort, r.epoch, port, testEpochAt+7)
	}
}

// newClient2 is a client bound to a given port (an announcement
// listener).
func newClient2(t *testing.T, addr netip.Addr, port uint16) *client {
	t.Helper()
	c := newClient(t, addr)
	c.conn.Close()
	l, err := listenUDP(netip.AddrPortFrom(addr, port))
	if err != nil {
		t.Fatalf("listen at %s:%d: %v", addr, port, err)
	}
	t.Cleanup(func() { l.Close() })
	c.conn = l
	return c
}
