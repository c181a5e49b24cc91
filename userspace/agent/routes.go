package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/blocknat/blocknat/loader"
	"github.com/blocknat/blocknat/userspace/logattr"
)

// The next-hop cache (bpf/route.h) answers for the fib on the established
// path only while the agent watches the routes, neighbours and links of the
// router's namespace, which it runs in. Every change it sees bumps the
// cache's generation; its claim to be watching is a lease it renews, so a
// stopped or killed agent leaves the data plane asking the fib again
// within routeLease.
const (
	routeLease = 3 * time.Second
	routeRenew = time.Second
)

// routesComponent watches for route, neighbour and link changes. Stopping
// turns the cache off, then closes the subscriptions.
func (a *Agent) routesComponent() component {
	done := make(chan struct{})
	ended := make(chan struct{})
	return component{name: "routes",
		start: func(context.Context) error {
			w, err := subscribeRoutes(done)
			if err != nil {
				close(done)
				return err
			}
			gen, err := a.current().nat.RouteGeneration()
			if err != nil {
				close(done)
				return err
			}
			// A new generation: nothing cached before this watch began
			// is trusted.
			gen++
			if err := a.vouchRoutes(gen); err != nil {
				close(done)
				return err
			}
			go func() {
				defer close(ended)
				a.watchRoutes(w, gen, done)
			}()
			return nil
		},
		stop: func() error {
			close(done)
			<-ended
			return a.unvouchRoutes()
		},
	}
}

// routeWatch is the subscriptions: routes, neighbours and links for the
// cache, addresses for the source of the data plane's ICMP errors.
type routeWatch struct {
	routes chan netlink.RouteUpdate
	neighs chan netlink.NeighUpdate
	links  chan netlink.LinkUpdate
	addrs  chan netlink.AddrUpdate
	errs   chan error
}

func subscribeRoutes(done chan struct{}) (*routeWatch, error) {
	w := &routeWatch{routes: make(chan netlink.RouteUpdate, 64), neighs: make(chan netlink.NeighUpdate, 64),
		links: make(chan netlink.LinkUpdate, 64), addrs: make(chan netlink.AddrUpdate, 64), errs: make(chan error, 4)}
	onErr := func(err error) {
		select {
		case w.errs <- err:
		default:
		}
	}
	if err := netlink.RouteSubscribeWithOptions(w.routes, done, netlink.RouteSubscribeOptions{ErrorCallback: onErr}); err != nil {
		return nil, fmt.Errorf("subscribe to route changes: %w", err)
	}
	if err := netlink.NeighSubscribeWithOptions(w.neighs, done, netlink.NeighSubscribeOptions{ErrorCallback: onErr}); err != nil {
		return nil, fmt.Errorf("subscribe to neighbour changes: %w", err)
	}
	if err := netlink.LinkSubscribeWithOptions(w.links, done, netlink.LinkSubscribeOptions{ErrorCallback: onErr}); err != nil {
		return nil, fmt.Errorf("subscribe to link changes: %w", err)
	}
	if err := netlink.AddrSubscribeWithOptions(w.addrs, done, netlink.AddrSubscribeOptions{ErrorCallback: onErr}); err != nil {
		return nil, fmt.Errorf("subscribe to address changes: %w", err)
	}
	return w, nil
}

func (a *Agent) vouchRoutes(gen uint64) error {
	return a.current().nat.VouchRoutes(gen, loader.MonotonicNow()+routeLease)
}

// unvouchRoutes turns the cache off and keeps its generation, so that the
// next watch's first generation is one no entry was cached under; then it
// empties the cache, which no agent prunes now.
func (a *Agent) unvouchRoutes() error {
	nat := a.current().nat
	gen, err := nat.RouteGeneration()
	if err != nil {
		return err
	}
	if err := nat.VouchRoutes(gen, 0); err != nil {
		return err
	}
	_, err = nat.PruneNexthops(0)
	return err
}

// pruneNexthops deletes the cache entries idle longer than the shortest
// mapping timeout: every mapping that used one has expired by then, and a
// cache entry names a destination.
func (a *Agent) pruneNexthops() {
	p := a.current()
	t := p.cfg.Timeouts
	idle := min(time.Duration(t.UDP), time.Duration(t.TCPEstablished), time.Duration(t.TCPTransitory), time.Duration(t.ICMP))
	cutoff := loader.MonotonicNow() - idle
	if cutoff <= 0 {
		return // nothing can be idle that long yet
	}
	if _, err := p.nat.PruneNexthops(cutoff); err != nil {
		a.log.Error("next-hop cache: prune", logattr.Err, err)
	}
}

// neighKey and neighSeen are what a neighbour entry gives the fib: its MAC,
// and whether it is usable (NUD_VALID). Its other state changes (reachable
// to stale, and back) change no answer, and on an inside link with many
// subscribers they are constant, so they do not bump the generation.
type neighKey struct {
	ifindex int
	ip      string
}

type neighSeen struct {
	mac   string
	valid bool
}

const nudValid = unix.NUD_PERMANENT | unix.NUD_NOARP | unix.NUD_REACHABLE | unix.NUD_PROBE | unix.NUD_STALE | unix.NUD_DELAY

func (a *Agent) watchRoutes(w *routeWatch, gen uint64, done chan struct{}) {
	renew := time.NewTicker(routeRenew)
	defer renew.Stop()
	neighs := map[neighKey]neighSeen{}
	bump := func() {
		gen++
		if err := a.vouchRoutes(gen); err != nil {
			a.log.Error("next-hop cache: bump generation", logattr.Err, err)
		}
	}
	// The data plane's ICMP errors must come from an address the
	// router still has: rewritten when an address comes or goes, not on
	// every route change, which a router may see by the thousand.
	refreshAddrs := func() {
		if err := a.current().nat.RefreshAddrs(); err != nil {
			a.log.Error("interface addresses for ICMP errors", logattr.Err, err)
		}
	}
	for {
		select {
		case <-done:
			return
		case <-renew.C:
			if err := a.vouchRoutes(gen); err != nil {
				a.log.Error("next-hop cache: renew", logattr.Err, err)
			}
			a.pruneNexthops()
		case _, ok := <-w.routes:
			if !ok {
				a.routeWatchEnded(done, errors.New("route subscription closed"), w)
				return
			}
			bump()
		case _, ok := <-w.links:
			if !ok {
				a.routeWatchEnded(done, errors.New("link subscription closed"), w)
				return
			}
			bump()
		case _, ok := <-w.addrs:
			if !ok {
				a.routeWatchEnded(done, errors.New("address subscription closed"), w)
				return
			}
			refreshAddrs()
		case u, ok := <-w.neighs:
			if !ok {
				a.routeWatchEnded(done, errors.New("neighbour subscription closed"), w)
				return
			}
			k := neighKey{u.LinkIndex, u.IP.String()}
			now := neighSeen{mac: net.HardwareAddr(u.HardwareAddr).String(), valid: u.State&nudValid != 0}
			if u.Type == unix.RTM_DELNEIGH {
				now = neighSeen{}
			}
			if last, seen := neighs[k]; seen && last == now {
				continue
			}
			if now == (neighSeen{}) {
				delete(neighs, k)
			} else {
				neighs[k] = now
			}
			bump()
		}
	}
}

// routeWatchEnded turns the cache off when a subscription fails (a netlink
// socket that overflowed has lost changes): without the watch the fib is
// asked for every packet, as before the cache.
func (a *Agent) routeWatchEnded(done chan struct{}, why error, w *routeWatch) {
	select {
	case <-done:
		return
	default:
	}
	select {
	case err := <-w.errs:
		why = errors.Join(why, err)
	default:
	}
	if err := a.unvouchRoutes(); err != nil {
		a.log.Error("next-hop cache: turn off", logattr.Err, err)
	}
	a.log.Error("next-hop cache off: the route watch ended", logattr.Err, why)
}
