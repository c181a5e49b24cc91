package loader

import (
	"net/netip"
	"testing"

	"github.com/google/gopacket/layers"
)

// tcpPeer is the connection the peer tests run: subscriber 2's port 40001
// to the server's 443.
var tcpPeer = pkt{proto: layers.IPProtocolTCP, src: sub2 + ":40001", dst: server + ":443", tcpFlags: "S"}

var tcpPeerKey = FlowKey{Addr: be32(netip.MustParseAddr(sub2)), Port: htons(40001), Proto: ProtoTCP}

// tcpFrom builds a TCP segment with flags from `from` to the public
// endpoint mapped, as it arrives on the outside.
func tcpFrom(f *natFixture, from string, mapped netip.AddrPort, flags string) []byte {
	return pkt{proto: layers.IPProtocolTCP, src: from, dst: mapped.String(), tcpFlags: flags, srcMAC: macUpstream}.build(f.t)
}

// tcpOut builds the subscriber's segment with flags to `to`.
func tcpOut(f *natFixture, to, flags string) []byte {
	return pkt{proto: layers.IPProtocolTCP, src: tcpPeer.src, dst: to, tcpFlags: flags}.build(f.t)
}

// establish opens tcpPeer (SYN, then ACK) and returns its public endpoint.
func establish(f *natFixture) netip.AddrPort {
	f.t.Helper()
	mapped := mapOut(tcpPeer)(f)
	if act, _ := f.outbound(tcpOut(f, server+":443", "A")); act != xdpRedirect {
		f.t.Fatalf("setup: ACK out %s", actionNames[act])
	}
	return mapped
}

func (f *natFixture) tcpMapping() (FlowFwd, FlowRev) {
	f.t.Helper()
	var fwd FlowFwd
	var rev FlowRev
	if err := f.nat.objs.FlowsFwd.Lookup(&tcpPeerKey, &fwd); err != nil {
		f.t.Fatalf("forward entry: %v", err)
	}
	rkey := FlowKey{Addr: fwd.NatAddr, Port: fwd.NatPort, Proto: ProtoTCP}
	if err := f.nat.objs.FlowsRev.Lookup(&rkey, &rev); err != nil {
		f.t.Fatalf("reverse entry: %v (RFC 7857 2.2: the mapping is held, not removed)", err)
	}
	return fwd, rev
}

// TestTCPStateOnlyFromPeer: an established mapping stays established, with
// the established timeout, whatever RSTs and FINs strangers send to its
// public port under endpoint-independent filtering, and whatever the
// subscriber answers them; the peer's own FIN or RST, and the subscriber's
// to the peer, move it to closing, which holds the mapping for the
// transitory timeout instead of removing it (RFC 7857 2.2).
func TestTCPStateOnlyFromPeer(t *testing.T) {
	f := defaultFixture(t)
	type step struct {
		outbound bool
		remote   string
		flags    string
	}
	cases := []struct {
		name      string
		steps     []step
		wantState uint8
	}{
		{"stranger's RST", []step{{false, "203.0.113.99:443", "R"}}, FlowStateTCPEst},
		{"stranger's RST+ACK", []step{{false, "203.0.113.99:443", "RA"}}, FlowStateTCPEst},
		{"stranger's FIN", []step{{false, "203.0.113.99:443", "FA"}}, FlowStateTCPEst},
		{"RST from the peer's address, another port", []step{{false, server + ":444", "R"}}, FlowStateTCPEst},
		{"RST from another address, the peer's port", []step{{false, "203.0.113.2:443", "R"}}, FlowStateTCPEst},
		{"stranger's FIN and the subscriber's RST back", []step{{false, "203.0.113.99:80", "FA"}, {true, "203.0.113.99:80", "R"}}, FlowStateTCPEst},
		{"a flood of strangers", func() []step {
			var s []step
			for i := 0; i < 64; i++ {
				flags := []string{"R", "FA", "RA", "F"}[i%4]
				s = append(s, step{false, netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte(i), 7}), uint16(1000+i)).String(), flags})
			}
			return s
		}(), FlowStateTCPEst},
		{"peer's RST", []step{{false, server + ":443", "R"}}, FlowStateTCPClosing},
		{"peer's FIN", []step{{false, server + ":443", "FA"}}, FlowStateTCPClosing},
		{"subscriber's FIN to the peer", []step{{true, server + ":443", "FA"}}, FlowStateTCPClosing},
		{"subscriber's RST to the peer", []step{{true, server + ":443", "R"}}, FlowStateTCPClosing},
		{"strangers after the peer's FIN", []step{{false, server + ":443", "FA"}, {false, "203.0.113.99:443", "A"}, {false, "203.0.113.99:443", "A"}}, FlowStateTCPClosing},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f.t = t
			f.reset()
			mapped := establish(f)
			before, _ := f.tcpMapping()
			for _, s := range tc.steps {
				var act uint32
				if s.outbound {
					act, _ = f.outbound(tcpOut(f, s.remote, s.flags))
				} else {
					act, _ = f.inbound(tcpFrom(f, s.remote, mapped, s.flags))
				}
				// Endpoint-independent filtering delivers them all:
				// the subscriber's stack judges its own segments.
				if act != xdpRedirect {
					t.Fatalf("%+v: %s, want XDP_REDIRECT", s, actionNames[act])
				}
			}
			fwd, rev := f.tcpMapping()
			if fwd.State != tc.wantState {
				t.Errorf("state %d, want %d", fwd.State, tc.wantState)
			}
			wantClass := TimeoutTCPEstablished
			if tc.wantState == FlowStateTCPClosing {
				wantClass = TimeoutTCPTransitory
			}
			if got := TimeoutClassOf(tcpPeerKey, fwd); got != wantClass {
				t.Errorf("timeout class %d, want %d", got, wantClass)
			}
			if (rev.Closing == 1) != (tc.wantState == FlowStateTCPClosing) {
				t.Errorf("reverse entry's closing copy %d with state %d", rev.Closing, fwd.State)
			}
			if fwd.PeerAddr != before.PeerAddr || fwd.PeerPort != before.PeerPort ||
				AddrFromBE32(fwd.PeerAddr).String() != server || PortFromBE16(fwd.PeerPort) != 443 {
				t.Errorf("peer %s:%d, want %s:443", AddrFromBE32(fwd.PeerAddr), PortFromBE16(fwd.PeerPort), server)
			}
			if fwdN, revN := f.flowCount(); fwdN != 1 || revN != 1 {
				t.Errorf("flows fwd=%d rev=%d, want the one mapping, held", fwdN, revN)
			}
		})
	}
}

// TestTCPClosingReverts: closing reverts to established once both sides go
// on exchanging plain ACKs (two each way after the last FIN or RST), as a
// connection does that survived a forged RST from its peer's address; an
// orderly close, a simultaneous one, and a one-sided stream stay closing.
// A new SYN from the subscriber makes its destination the peer.
func TestTCPClosingReverts(t *testing.T) {
	f := defaultFixture(t)
	type step struct {
		outbound bool
		flags    string
	}
	peerRST := step{false, "R"}
	cases := []struct {
		name  string
		steps []step
		want  uint8
	}{
		{"data both ways after the peer's RST", []step{peerRST, {true, "PA"}, {false, "PA"}, {true, "A"}, {false, "A"}}, FlowStateTCPEst},
		{"one ACK each way is not enough", []step{peerRST, {true, "A"}, {false, "A"}}, FlowStateTCPClosing},
		{"only the subscriber sends", []step{peerRST, {true, "PA"}, {true, "PA"}, {true, "PA"}, {true, "PA"}}, FlowStateTCPClosing},
		{"only the peer sends", []step{peerRST, {false, "PA"}, {false, "PA"}, {false, "PA"}}, FlowStateTCPClosing},
		{"orderly close by the peer", []step{{false, "FA"}, {true, "A"}, {true, "FA"}, {false, "A"}}, FlowStateTCPClosing},
		{"orderly close by the subscriber", []step{{true, "FA"}, {false, "A"}, {false, "FA"}, {true, "A"}}, FlowStateTCPClosing},
		{"simultaneous close", []step{{true, "FA"}, {false, "FA"}, {true, "A"}, {false, "A"}}, FlowStateTCPClosing},
		{"a FIN restarts the count", []step{peerRST, {true, "A"}, {false, "A"}, {true, "A"}, {false, "FA"}, {false, "A"}, {true, "A"}}, FlowStateTCPClosing},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f.t = t
			f.reset()
			mapped := establish(f)
			for _, s := range tc.steps {
				var act uint32
				if s.outbound {
					act, _ = f.outbound(tcpOut(f, server+":443", s.flags))
				} else {
					act, _ = f.inbound(tcpFrom(f, server+":443", mapped, s.flags))
				}
				if act != xdpRedirect {
					t.Fatalf("%+v: %s", s, actionNames[act])
				}
			}
			fwd, rev := f.tcpMapping()
			if fwd.State != tc.want {
				t.Errorf("state %d, want %d", fwd.State, tc.want)
			}
			if (rev.Closing == 1) != (fwd.State == FlowStateTCPClosing) {
				t.Errorf("reverse entry's closing copy %d with state %d", rev.Closing, fwd.State)
			}
		})
	}

	t.Run("a new SYN moves the peer", func(t *testing.T) {
		f.t = t
		f.reset()
		mapped := establish(f)
		f.inbound(tcpFrom(f, server+":443", mapped, "FA"))
		f.outbound(tcpOut(f, "203.0.113.2:8443", "S"))
		fwd, _ := f.tcpMapping()
		if fwd.State != FlowStateTCPTrans || AddrFromBE32(fwd.PeerAddr).String() != "203.0.113.2" || PortFromBE16(fwd.PeerPort) != 8443 {
			t.Fatalf("after a new SYN: state %d peer %s:%d", fwd.State, AddrFromBE32(fwd.PeerAddr), PortFromBE16(fwd.PeerPort))
		}
		// The old peer is a stranger now.
		f.outbound(tcpOut(f, "203.0.113.2:8443", "A"))
		f.inbound(tcpFrom(f, server+":443", mapped, "R"))
		if fwd, _ := f.tcpMapping(); fwd.State != FlowStateTCPEst {
			t.Errorf("the old peer's RST moved the state to %d", fwd.State)
		}
	})
}
