// Command lab is `make lab` and `make lab-down`. `lab up` builds the
// demo's namespace topology (two subscribers, a router, "the internet"),
// starts blocknatd on the router with the default configuration and an
// HTTP server on the internet, and leaves them running for an operator to
// explore; it prints how. `lab down` removes everything `up` made, and
// does nothing when nothing is up. Both take -name, which every namespace
// and path is named after, so two labs never meet.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/blocknat/blocknat/test/harness"
	"github.com/blocknat/blocknat/test/netns"
)

// defaultName is the lab's when -name is not given (make's LAB).
const defaultName = "bnlab"

// The internet's servers: addresses of the topology's internet namespace.
const (
	httpPort = 8080
	udpPort  = 9000
)

var commands = map[string]func(ctx context.Context, w io.Writer, args []string) error{
	"up":    up,
	"down":  down,
	"serve": serve,
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if len(os.Args) < 2 || commands[os.Args[1]] == nil {
		fmt.Fprintln(os.Stderr, "usage: lab up|down [-name NAME] [-bin DIR]")
		os.Exit(2)
	}
	if err := commands[os.Args[1]](ctx, os.Stdout, os.Args[2:]); err != nil {
		fmt.Fprintf(os.Stderr, "lab %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

func up(ctx context.Context, w io.Writer, args []string) (err error) {
	fs := flag.NewFlagSet("up", flag.ContinueOnError)
	name := fs.String("name", defaultName, "the lab's name: namespaces NAME-*, /run/NAME, /var/lib/NAME, /sys/fs/bpf/NAME")
	binDir := fs.String("bin", "bin", "where blocknatd and blocknat are (make build)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return errors.New("run as root (sudo make lab): it creates network namespaces and loads XDP")
	}
	if _, ok, err := harness.LoadLab(*name); err != nil || ok {
		return errors.Join(err, fmt.Errorf("lab %s is already up; sudo make lab-down LAB=%s removes it", *name, *name))
	}
	for _, ns := range netns.TopologyNamespaces(*name) {
		if _, err := os.Stat(filepath.Join("/run/netns", ns)); err == nil {
			return fmt.Errorf("namespace %s exists already; sudo make lab-down LAB=%s removes a lab's, or choose another LAB", ns, *name)
		}
	}
	blocknatd, blocknat := filepath.Join(*binDir, "blocknatd"), filepath.Join(*binDir, "blocknat")
	for _, b := range []string{blocknatd, blocknat} {
		if _, err := os.Stat(b); err != nil {
			return fmt.Errorf("-bin: %w (make build puts them in bin/)", err)
		}
	}
	absAgent, err := filepath.Abs(blocknatd)
	if err != nil {
		return err
	}

	l := harness.NewLab(*name)
	defer func() {
		if err != nil {
			err = errors.Join(err, l.Remove())
		}
	}()
	if _, err := l.WriteConfig(); err != nil {
		return err
	}
	if err := l.Save(); err != nil {
		return err
	}
	topo, err := netns.NewTopology(ctx, netns.TopologyOptions{Prefix: *name})
	if err != nil {
		return err
	}
	httpAddr := netip.AddrPortFrom(topo.ServerAddrs[0], httpPort)
	udpAddr := netip.AddrPortFrom(topo.ServerAddrs[1], udpPort)
	if err := startServers(l, topo.Internet, httpAddr, udpAddr); err != nil {
		return err
	}
	if err := l.Save(); err != nil {
		return err
	}
	pid, err := l.StartDetachedAgent(ctx, topo.Router, absAgent, 20*time.Second)
	// Recorded even on failure: the pid is one to stop.
	if serr := l.Save(); err == nil {
		err = serr
	}
	if err != nil {
		return err
	}

	fmt.Fprintf(w, "\nblocknat lab %s is up: blocknatd (pid %d) translates on %s.\n\n", l.Name, pid, topo.Router.Name)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "  namespace\twhat\tenter it with\n")
	for _, sub := range topo.Subscribers {
		fmt.Fprintf(tw, "  %s\ta subscriber, %s on %s\tsudo ip netns exec %s bash\n", sub.NS.Name, sub.Addr, sub.Iface, sub.NS.Name)
	}
	fmt.Fprintf(tw, "  %s\tthe router: inside %s, outside %s\tsudo ip netns exec %s bash\n", topo.Router.Name,
		strings.Join(topo.InsideIfaces, ", "), topo.OutsideIface, topo.Router.Name)
	fmt.Fprintf(tw, "  %s\tthe internet: %s, %s\tsudo ip netns exec %s bash\n", topo.Internet.Name, topo.ServerAddrs[0], topo.ServerAddrs[1], topo.Internet.Name)
	tw.Flush()
	fmt.Fprintf(w, "\nThe internet serves HTTP on %s, answering with the address and port it saw, and a UDP echo on %s.\n\n", httpAddr, udpAddr)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, row := range [][2]string{
		{"config", l.Config}, {"API socket", l.Socket}, {"agent log", l.AgentLog},
		{"state_dir", l.StateDir}, {"bpffs_dir", l.PinDir},
	} {
		fmt.Fprintf(tw, "  %s\t%s\n", row[0], row[1])
	}
	tw.Flush()
	sub := topo.Subscribers[1]
	fmt.Fprintf(w, `
Try:
  sudo ip netns exec %s curl -s http://%s/      # prints the public address and port the internet saw
  sudo ip netns exec %s ping -c 3 %s
  sudo %s lookup --config %s --ip ADDRESS --port PORT --time $(date -u +%%FT%%TZ) --purpose lab
  sudo %s status --config %s
Remove it all: sudo make lab-down%s
`, sub.NS.Name, httpAddr, topo.Subscribers[0].NS.Name, topo.ServerAddrs[1], blocknat, l.Config, blocknat, l.Config, labArg(l.Name))
	return nil
}

// labArg is what make needs to find a lab that is not the default one.
func labArg(name string) string {
	if name == defaultName {
		return ""
	}
	return " LAB=" + name
}

// startServers runs `lab serve` in the internet namespace. It runs from a
// copy of this program in the lab's directory, since `go run` deletes
// its own build when it exits.
func startServers(l *harness.Lab, inet *netns.NS, httpAddr, udpAddr netip.AddrPort) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	exe := filepath.Join(l.Dir, "lab")
	if err := copyFile(self, exe); err != nil {
		return err
	}
	logPath := filepath.Join(l.Dir, "servers.log")
	servers, err := harness.StartDetached(inet, logPath, exe, "serve", "-netns", inet.Name, "-http", httpAddr.String(), "-udp", udpAddr.String())
	if err != nil {
		return err
	}
	l.PIDs["servers"] = servers.PID
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		b, _ := os.ReadFile(logPath)
		if strings.Contains(string(b), "serving") {
			return nil
		}
		if exited, err := servers.Exited(); exited {
			return fmt.Errorf("servers exited (%v):\n%s", err, b)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("servers did not start within 10s:\n%s", b)
		}
	}
}

func copyFile(from, to string) error {
	b, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	return os.WriteFile(to, b, 0o755)
}

func down(_ context.Context, w io.Writer, args []string) error {
	fs := flag.NewFlagSet("down", flag.ContinueOnError)
	name := fs.String("name", defaultName, "the lab's name")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return errors.New("run as root (sudo make lab-down): it deletes network namespaces and detaches XDP")
	}
	l, recorded, err := harness.LoadLab(*name)
	if err != nil {
		return err
	}
	found := recorded
	for _, p := range append(netns.TopologyNamespaces(*name), l.Dir, l.StateDir, l.PinDir) {
		if !strings.HasPrefix(p, "/") {
			p = filepath.Join("/run/netns", p)
		}
		if _, err := os.Stat(p); err == nil {
			found = true
		}
	}
	if err := l.Remove(); err != nil {
		return err
	}
	if found {
		fmt.Fprintf(w, "lab %s removed: its processes, pins, namespaces and files\n", l.Name)
	} else {
		fmt.Fprintf(w, "lab %s: nothing was up\n", l.Name)
	}
	return nil
}

// serve is the lab's internet: the HTTP server and UDP echo the tests
// use, until it is told to stop.
func serve(ctx context.Context, w io.Writer, args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	nsName := fs.String("netns", "", "the internet's namespace")
	httpFlag := fs.String("http", "", "address:port of the HTTP server")
	udpFlag := fs.String("udp", "", "address:port of the UDP echo")
	if err := fs.Parse(args); err != nil {
		return err
	}
	httpAddr, err := netip.ParseAddrPort(*httpFlag)
	if err != nil {
		return fmt.Errorf("-http: %w", err)
	}
	udpAddr, err := netip.ParseAddrPort(*udpFlag)
	if err != nil {
		return fmt.Errorf("-udp: %w", err)
	}
	ns := &netns.NS{Name: *nsName}
	srv, err := netns.StartHTTPServer(ns, httpAddr)
	if err != nil {
		return err
	}
	defer srv.Close()
	echo, err := netns.StartUDPEcho(ns, udpAddr)
	if err != nil {
		return err
	}
	defer echo.Close()
	fmt.Fprintf(w, "serving http://%s/ and a UDP echo on %s\n", srv.Addr, echo.Addr)
	<-ctx.Done()
	return nil
}
