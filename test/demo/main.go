// Command demo is `sudo make demo`: it builds blocknat, creates a small
// network-namespace topology (two subscribers, a router, the internet),
// starts blocknatd on the router with the embedded default configuration,
// sends real traffic, answers "who was that?" for an address and port the
// server observed, and removes everything again.
package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/blocknat/blocknat/test/harness"
	"github.com/blocknat/blocknat/test/netns"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "demo failed: %v\n", err)
		os.Exit(1)
	}
}

type step struct {
	w io.Writer
	n int
}

func (s *step) say(format string, args ...any) {
	s.n++
	fmt.Fprintf(s.w, "\n[%d] %s\n", s.n, fmt.Sprintf(format, args...))
}

func (s *step) show(format string, args ...any) {
	fmt.Fprintf(s.w, "    %s\n", fmt.Sprintf(format, args...))
}

func run(ctx context.Context, w io.Writer) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("run as root (sudo make demo): it creates network namespaces and loads XDP")
	}
	s := &step{w: w}
	work, err := os.MkdirTemp("", "blocknat-demo")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)

	s.say("Building blocknatd and blocknat")
	bins, err := harness.Build(ctx, filepath.Join(work, "bin"))
	if err != nil {
		return err
	}

	s.say("Creating the topology: two subscribers -> router -> internet")
	// make lab's, run through and removed again: the same namespaces,
	// configuration and agent, named for this run alone.
	lab := harness.NewLab(fmt.Sprintf("bn-demo-%d", os.Getpid()%100000))
	defer func() {
		fmt.Fprintf(w, "\n[cleanup] removing namespaces %s-*, the data plane and demo state\n", lab.Name)
		err = errors.Join(err, lab.Remove())
	}()
	cfgText, err := lab.WriteConfig()
	if err != nil {
		return err
	}
	topo, err := netns.NewTopology(ctx, netns.TopologyOptions{Prefix: lab.Name})
	if err != nil {
		return err
	}
	for i, sub := range topo.Subscribers {
		s.show("subscriber %d: %s in namespace %s", i, sub.Addr, sub.NS.Name)
	}
	s.show("router:       %s (inside %s, outside %s); the internet: %s, servers %s",
		topo.Router.Name, strings.Join(topo.InsideIfaces, ","), topo.OutsideIface, topo.Internet.Name, topo.ServerAddrs[0])

	s.say("Starting blocknatd on the router with the embedded default configuration, its paths the demo's")
	for _, line := range strings.Split(strings.TrimSpace(string(cfgText)), "\n") {
		if line != "" && !strings.HasPrefix(strings.TrimSpace(line), "#") {
			s.show("%s", line)
		}
	}
	ifaces, err := lab.Interfaces()
	if err != nil {
		return err
	}
	// The agent pins into the host's bpffs, where the data plane outlives
	// it; lab.Remove detaches it, and unmounts the bpffs if the agent
	// brought it.
	agent, err := harness.StartAgent(ctx, topo.Router, bins.Blocknatd, lab.Config, lab.PinDir, ifaces, 20*time.Second)
	if err != nil {
		return err
	}
	defer func() {
		if stopErr := agent.Stop(); stopErr != nil {
			err = errors.Join(err, fmt.Errorf("stop blocknatd: %w\n%s", stopErr, agent.Log()))
		}
	}()
	s.show("XDP attached to %s", strings.Join(ifaces, ", "))

	s.say("Sending real traffic: curl and UDP from each subscriber")
	httpAddr := netip.AddrPortFrom(topo.ServerAddrs[0], 8080)
	srv, err := netns.StartHTTPServer(topo.Internet, httpAddr)
	if err != nil {
		return err
	}
	defer srv.Close()
	udpAddr := netip.AddrPortFrom(topo.ServerAddrs[1], 9000)
	echo, err := netns.StartUDPEcho(topo.Internet, udpAddr)
	if err != nil {
		return err
	}
	defer echo.Close()
	for i, sub := range topo.Subscribers {
		out, err := sub.NS.Exec(ctx, "curl", "--noproxy", "*", "-sS", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}", "http://"+httpAddr.String()+"/")
		if err != nil {
			return fmt.Errorf("curl from subscriber %d: %w", i, err)
		}
		s.show("subscriber %d: curl http://%s/ -> HTTP %s", i, httpAddr, strings.TrimSpace(string(out)))
		payload := []byte(fmt.Sprintf("hello from %s", sub.Addr))
		reply, err := netns.UDPRoundTrip(sub.NS, 0, udpAddr, payload, 3*time.Second)
		if err != nil {
			return fmt.Errorf("UDP from subscriber %d: %w", i, err)
		}
		s.show("subscriber %d: UDP to %s echoed %q", i, udpAddr, reply)
	}

	s.say("What the internet saw (the HTTP server's log)")
	remotes := srv.Remotes()
	if len(remotes) == 0 {
		return errors.New("the HTTP server saw no client")
	}
	seenAt := time.Now().UTC().Truncate(time.Millisecond)
	for _, r := range remotes {
		s.show("request from %s", r)
	}
	observed := remotes[len(remotes)-1]
	// Records are committed within 50 ms of the block becoming active.
	time.Sleep(300 * time.Millisecond)

	// As a server's log states it: to the second, which the lookup reads
	// as that whole second.
	stated := seenAt.Format(time.RFC3339)
	s.say("The police ask: who used %s at %s?", observed, stated)
	evidence := filepath.Join(lab.StateDir, "case-2026-0001.evidence")
	args := []string{"lookup", "--socket", lab.Socket, "--ip", observed.Addr().String(), "--port", fmt.Sprint(observed.Port()),
		"--time", stated, "--purpose", "demo: case 2026-0001", "--evidence", evidence}
	s.show("$ blocknat %s", shellJoin(args))
	out, err := runCLI(ctx, bins.Blocknat, args...)
	if err != nil {
		return err
	}
	for _, line := range strings.Split(strings.TrimRight(string(out), "\n"), "\n") {
		s.show("%s", line)
	}
	want := topo.Subscribers[len(topo.Subscribers)-1].Addr.String()
	if !strings.Contains(string(out), "inside "+want) {
		return fmt.Errorf("blocknat named someone other than %s", want)
	}
	s.show("correct: that request came from %s", want)

	s.say("The lookup is in the tamper-evident audit log, and the police can check the answer offline")
	for _, args := range [][]string{
		{"audit", "show", "--socket", lab.Socket, "--limit", "1"},
		{"audit", "verify", "--socket", lab.Socket},
		{"evidence", "verify", evidence, "--pubkey", filepath.Join(lab.StateDir, "audit", "audit.pub")},
	} {
		s.show("$ blocknat %s", strings.Join(args, " "))
		out, err := runCLI(ctx, bins.Blocknat, args...)
		if err != nil {
			return err
		}
		for _, line := range strings.Split(strings.TrimRight(string(out), "\n"), "\n") {
			s.show("%s", line)
		}
	}
	return nil
}

// shellJoin quotes what a shell would split, so a shown command can be
// pasted as it is.
func shellJoin(args []string) string {
	out := make([]string, len(args))
	for i, a := range args {
		if strings.ContainsAny(a, " \t'\"$") {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		out[i] = a
	}
	return strings.Join(out, " ")
}

func runCLI(ctx context.Context, bin string, args ...string) ([]byte, error) {
	var out, errb bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("blocknat %s: %w\n%s", strings.Join(args, " "), err, errb.String())
	}
	return out.Bytes(), nil
}
