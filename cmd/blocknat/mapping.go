package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"strconv"

	"github.com/blocknat/blocknat/userspace/config"
	"github.com/blocknat/blocknat/userspace/mapping"
)

func init() {
	commands["mapping"] = command{
		summary: "compute the deterministic mapping of a configuration file (offline)",
		run:     runMapping,
	}
}

var mappingVerbs = []string{"forward", "reverse"}

const mappingSynopsis = `mapping forward [--config FILE] [--json] INSIDE-ADDRESS
       blocknat mapping reverse [--config FILE] [--json] PUBLIC-ADDRESS:PORT

Computes the mapping of the configuration in FILE as it is now. It does not
know earlier configurations; to ask about a past time, use lookup.`

func runMapping(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintf(stderr, "blocknat mapping: missing verb (%s)\nusage: blocknat %s\n", oneOf(mappingVerbs), mappingSynopsis)
		return exitUsage
	}
	verb, args := args[0], args[1:]
	switch verb {
	case "forward", "reverse":
	case "help", "-h", "-help", "--help":
		fmt.Fprintf(stdout, "usage: blocknat %s\n", mappingSynopsis)
		return exitOK
	default:
		fmt.Fprintf(stderr, "blocknat mapping: unknown verb %q (want %s)\n", verb, oneOf(mappingVerbs))
		return exitUsage
	}

	name := "mapping " + verb
	fs := newFlagSet(name, mappingSynopsis, stderr)
	configPath := fs.String("config", DefaultConfigPath, "configuration `file`")
	asJSON := fs.Bool("json", false, "print the block as one JSON object")
	positional, err := parseInterspersed(fs, args)
	if err != nil {
		return flagExit(err)
	}

	var query func(*mapping.Mapping) (mapping.Block, string, error)
	if verb == "forward" {
		query, err = forwardQuery(positional)
	} else {
		query, err = reverseQuery(positional)
	}
	if err != nil {
		return report(stderr, name, err)
	}

	cfg, err := config.Load(*configPath)
	if err != nil {
		return report(stderr, name, err)
	}
	m, err := cfg.Mapping()
	if err != nil {
		return report(stderr, name, fmt.Errorf("build mapping from %s: %w", *configPath, err))
	}
	block, line, err := query(m)
	if err != nil {
		return report(stderr, name, err)
	}
	if *asJSON {
		err = json.NewEncoder(stdout).Encode(block)
	} else {
		_, err = fmt.Fprintln(stdout, line)
	}
	if err != nil {
		return report(stderr, name, fmt.Errorf("write output: %w", err))
	}
	return exitOK
}

// forwardQuery parses "INSIDE-ADDRESS" before the configuration is read, so
// a typo is reported as such even without a configuration.
func forwardQuery(positional []string) (func(*mapping.Mapping) (mapping.Block, string, error), error) {
	if len(positional) != 1 {
		return nil, usagef("want exactly one inside address, got %d arguments", len(positional))
	}
	inside, err := netip.ParseAddr(positional[0])
	if err != nil {
		return nil, usagef("inside address %q: %w", positional[0], err)
	}
	return func(m *mapping.Mapping) (mapping.Block, string, error) {
		b, err := m.Forward(inside)
		if err != nil {
			return b, "", err
		}
		return b, fmt.Sprintf("%s -> %s ports %d-%d (subscriber %d)", b.Inside, b.Public, b.PortLo, b.PortHi, b.Subscriber), nil
	}, nil
}

// reverseQuery parses "PUBLIC-ADDRESS:PORT" or "PUBLIC-ADDRESS PORT".
func reverseQuery(positional []string) (func(*mapping.Mapping) (mapping.Block, string, error), error) {
	var public netip.Addr
	var port uint16
	switch len(positional) {
	case 1:
		ap, err := netip.ParseAddrPort(positional[0])
		if err != nil {
			return nil, usagef("public address and port %q (want ADDRESS:PORT): %w", positional[0], err)
		}
		public, port = ap.Addr(), ap.Port()
	case 2:
		a, err := netip.ParseAddr(positional[0])
		if err != nil {
			return nil, usagef("public address %q: %w", positional[0], err)
		}
		p, err := strconv.ParseUint(positional[1], 10, 16)
		if err != nil {
			return nil, usagef("port %q: not a number between 0 and 65535", positional[1])
		}
		public, port = a, uint16(p)
	default:
		return nil, usagef("want one PUBLIC-ADDRESS:PORT, got %d arguments", len(positional))
	}
	return func(m *mapping.Mapping) (mapping.Block, string, error) {
		b, err := m.Reverse(public, port)
		if err != nil {
			return b, "", fmt.Errorf("no subscriber owns %s: %w", netip.AddrPortFrom(public, port), err)
		}
		return b, fmt.Sprintf("%s -> %s (subscriber %d, block %s ports %d-%d)",
			netip.AddrPortFrom(b.Public, port), b.Inside, b.Subscriber, b.Public, b.PortLo, b.PortHi), nil
	}, nil
}
