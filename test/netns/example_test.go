package netns_test

import (
	"context"
	"fmt"
	"log"
	"net/netip"
	"time"

	"github.com/blocknat/blocknat/test/netns"
)

// A demo program builds the same topology as the tests, without *testing.T.
func ExampleNewTopology() {
	ctx := context.Background()
	topo, err := netns.NewTopology(ctx, netns.TopologyOptions{Prefix: "bn-demo"})
	if err != nil {
		log.Fatal(err)
	}
	defer topo.Close()

	echo, err := netns.StartUDPEcho(topo.Internet, netip.AddrPortFrom(topo.ServerAddrs[0], 3478))
	if err != nil {
		log.Fatal(err)
	}
	defer echo.Close()

	// Without a NAT on the router the reply has no way back; with blocknat
	// running, the echo records a pool address instead of the subscriber's.
	sub := topo.Subscribers[0]
	_, err = netns.UDPRoundTrip(sub.NS, 0, echo.Addr, []byte("hello"), time.Second)
	fmt.Println(err != nil, echo.Remotes())
}
