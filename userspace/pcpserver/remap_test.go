package pcpserver

import (
	"net/netip"
	"testing"

	"github.com/blocknat/blocknat/userspace/mapping"
)

// TestRemap: after a reload's Remap, subscribers are judged by the new
// mapping (their public address is the new one), and the mappings the
// pinned table still holds are the server's, quota included.
func TestRemap(t *testing.T) {
	h := newHarness(t, nil)
	c := newClient(t, client2)
	wantResult(t, "map before", h.ask(c, udpMap(client2, 1, 5000, 300).bytes()), rSuccess, 300)
	moved, err := mapping.New([]netip.Prefix{netip.MustParsePrefix("127.0.0.0/29")}, []netip.Prefix{netip.MustParsePrefix("198.51.100.0/30")}, 1024, 1039, 8)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.srv.Remap(moved); err != nil {
		t.Fatal(err)
	}
	want := netip.MustParseAddr("198.51.100.1")
	if b, _ := moved.Forward(client2); b.Public != want {
		t.Fatalf("test mapping: %s's public address is %s, want %s", client2, b.Public, want)
	}
	if r := h.ask(c, natpmpPublicReq()); r.result != 0 || r.public != want {
		t.Errorf("public address after the remap: %s (result %d), want %s", r.public, r.result, want)
	}
	if got := h.srv.Stats().Mappings[ProtoUDP]; got != 1 {
		t.Errorf("after the remap the server counts %d UDP mappings, want the 1 the table holds", got)
	}
	if err := h.srv.Remap(nil); err == nil {
		t.Error("a remap onto no mapping was accepted")
	}
}
