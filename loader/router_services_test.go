package loader

import (
	"net"
	"net/netip"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

// dhcpPayload is a DHCP message of the given type from a client with
// macSub2, as the UDP payload of a test frame.
func dhcpPayload(t testing.TB, msg layers.DHCPMsgType, relay net.IP) []byte {
	t.Helper()
	d := &layers.DHCPv4{Operation: layers.DHCPOpRequest, HardwareType: layers.LinkTypeEthernet, HardwareLen: 6,
		Xid: 0x0b10c4a7, ClientHWAddr: macSub2, RelayAgentIP: relay,
		Options: layers.DHCPOptions{layers.NewDHCPOption(layers.DHCPOptMessageType, []byte{byte(msg)})}}
	buf := gopacket.NewSerializeBuffer()
	if err := d.SerializeTo(buf, gopacket.SerializeOptions{FixLengths: true}); err != nil {
		t.Fatalf("serialize DHCP: %v", err)
	}
	return buf.Bytes()
}

// dhcpFrame builds a DHCP message of type msg from src to dst.
func dhcpFrame(src, dst string, msg layers.DHCPMsgType, relay net.IP, dstMAC net.HardwareAddr) func(*natFixture, netip.AddrPort) []byte {
	return func(f *natFixture, _ netip.AddrPort) []byte {
		return pkt{proto: layers.IPProtocolUDP, src: src, dst: dst, srcMAC: macSub2, dstMAC: dstMAC,
			payload: dhcpPayload(f.t, msg, relay)}.build(f.t)
	}
}

// TestRouterServicesTable: the router's own services on the inside work
// with blocknat attached. DHCP from clients without an address, relays,
// multicast, broadcasts and traffic to the router's addresses reach the
// kernel untranslated, are not counted as spoofing, and create no mapping
// and activate no block, even from a subscriber that has mappings.
func TestRouterServicesTable(t *testing.T) {
	f := defaultFixture(t)
	const router = "100.64.0.254"
	relay := net.IPv4(10, 99, 0, 1) // in no inside prefix
	mdns := udpOut(sub2+":5353", "224.0.0.251:5353")
	mdns.dstMAC = net.HardwareAddr{0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb}
	mdnsTTL1 := mdns
	mdnsTTL1.ttl = 1
	cases := []natCase{
		{name: "dhcpdiscover from 0.0.0.0 to 255.255.255.255",
			frame:    dhcpFrame("0.0.0.0:68", "255.255.255.255:67", layers.DHCPMsgTypeDiscover, nil, layers.EthernetBroadcast),
			wantStat: "pass_local_service"},
		{name: "dhcprequest from 0.0.0.0 to 255.255.255.255",
			frame:    dhcpFrame("0.0.0.0:68", "255.255.255.255:67", layers.DHCPMsgTypeRequest, nil, layers.EthernetBroadcast),
			wantStat: "pass_local_service"},
		{name: "dhcprequest from 0.0.0.0 to the router's inside address",
			frame: dhcpFrame("0.0.0.0:68", router+":67", layers.DHCPMsgTypeRequest, nil, nil), wantStat: "pass_local_service"},
		{name: "dhcprequest renewing, from a subscriber to the router's inside address",
			frame: dhcpFrame(sub2+":68", router+":67", layers.DHCPMsgTypeRequest, nil, nil), wantStat: "pass_local"},
		{name: "relay's unicast to the router's port 67",
			frame: dhcpFrame(relay.String()+":67", router+":67", layers.DHCPMsgTypeDiscover, relay, nil), wantStat: "pass_local"},
		{name: "mdns multicast from a subscriber", frame: frameOf(mdns), wantStat: "pass_local_service"},
		{name: "link-local multicast with ttl 1", frame: frameOf(mdnsTTL1), wantStat: "pass_local_service"},
		{name: "multicast from a subscriber port that has a mapping", setup: mapOut(udpOut(sub2+":5353", server+":5353")),
			frame: frameOf(mdns), wantStat: "pass_local_service", wantFlows: 1},
		{name: "limited broadcast from a subscriber", frame: frameOf(udpOut(sub2+":40000", "255.255.255.255:9")),
			wantStat: "pass_local_service"},
		{name: "later fragment of a limited broadcast", frame: frameOf(pkt{proto: layers.IPProtocolUDP, src: sub2 + ":40000",
			dst: "255.255.255.255:9", fragOffset: 100, raw: true}), wantStat: "pass_local_service"},
		{name: "from 0.0.0.0 to an internet address", frame: frameOf(udpOut("0.0.0.0:68", server+":67")),
			wantStat: "pass_local_service"},
		{name: "directed broadcast of the inside subnet", frame: frameOf(udpOut(sub2+":40000", "100.64.0.255:9")),
			wantStat: "pass_local"},
	}
	for _, tc := range cases {
		tc.outbound, tc.wantAction = true, xdpPass
		t.Run(tc.name, func(t *testing.T) {
			st := f.runCase(t, tc)
			for _, name := range []string{"drop_spoofed", "new_flows", "block_activations", "out_packets", "fragments"} {
				if st[name] != 0 {
					t.Errorf("%s = %d, want 0 (all: %v)", name, st[name], st)
				}
			}
			if got, want := f.activeSubscribers(), tc.wantFlows; got != want {
				t.Errorf("%d active subscribers, want %d (the setup's)", got, want)
			}
		})
	}
}

// activeSubscribers counts the subscribers whose block is marked active.
func (f *natFixture) activeSubscribers() int {
	f.t.Helper()
	n := 0
	for i := uint32(0); i < f.m.Subscribers; i++ {
		var st SubscriberState
		if err := f.nat.objs.Subscribers.Lookup(&i, &st); err != nil {
			f.t.Fatal(err)
		}
		if st.Active != 0 {
			n++
		}
	}
	return n
}
