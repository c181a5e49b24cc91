package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
)

// Source validation: which inside source addresses a packet may carry on
// which line. A device on a shared segment (a municipal Wi-Fi) can send
// with a neighbour's address; translated, that traffic would be recorded,
// and answered for, in the neighbour's name. These fields say what the
// data plane checks before it translates anything:
//
//   - interface_prefixes: the inside prefixes each interface carries. A
//     packet from an address outside its interface's prefixes is dropped.
//     An interface not listed carries any inside prefix.
//   - static_bindings: addresses bound to one MAC (a static customer, a
//     server). DHCP leases bind the same way while they last.
//   - require_binding: interfaces on which only bound addresses (a lease or
//     a static binding) are translated, so that nobody can use an address
//     the DHCP server never gave them.
//
// A packet from a bound address must come from the bound MAC.

// StaticBinding binds one inside address to a MAC.
type StaticBinding struct {
	Address string `yaml:"address"`
	MAC     string `yaml:"mac"`
}

// SourceRules are the parsed source-validation fields.
type SourceRules struct {
	// InterfacePrefixes maps an inside interface to the prefixes it may
	// carry; absent interfaces carry every inside prefix.
	InterfacePrefixes map[string][]netip.Prefix
	// Static binds addresses to MACs.
	Static map[netip.Addr]net.HardwareAddr
	// RequireBinding lists interfaces that translate bound addresses only.
	RequireBinding map[string]bool
}

// SourceRules are the source-validation rules Validate parsed, or, for a
// Config that was not validated, the rules parsed now.
func (c *Config) SourceRules() (SourceRules, error) {
	if c.parsed != nil {
		return c.parsed.sources, nil
	}
	rules, errs := c.parseSources()
	return rules, errors.Join(errs...)
}

func (c *Config) parseSources() (SourceRules, []error) {
	var errs []error
	rules := SourceRules{
		InterfacePrefixes: map[string][]netip.Prefix{},
		Static:            map[netip.Addr]net.HardwareAddr{},
		RequireBinding:    map[string]bool{},
	}
	inside, _ := parsePrefixes("inside.prefixes", c.Inside.Prefixes)
	inInside := func(p netip.Prefix) bool {
		for _, q := range inside {
			if q.Bits() <= p.Bits() && q.Contains(p.Addr()) {
				return true
			}
		}
		return false
	}
	isInside := func(name string) bool { return slices.Contains(c.Inside.Interfaces, name) }
	for name, entries := range c.Inside.InterfacePrefixes {
		field := "inside.interface_prefixes." + name
		if !isInside(name) {
			errs = append(errs, fmt.Errorf("%s: %s is not one of inside.interfaces", field, name))
			continue
		}
		prefixes, perrs := parsePrefixes(field, entries)
		errs = append(errs, perrs...)
		for k, p := range prefixes {
			if !inInside(p) {
				errs = append(errs, fmt.Errorf("%s[%d]: %s lies outside inside.prefixes", field, k, p))
			}
		}
		rules.InterfacePrefixes[name] = prefixes
	}
	for k, b := range c.Inside.StaticBindings {
		field := fmt.Sprintf("inside.static_bindings[%d]", k)
		a, err := netip.ParseAddr(b.Address)
		switch {
		case err != nil || !a.Is4():
			errs = append(errs, fmt.Errorf("%s.address: %q is not an IPv4 address", field, b.Address))
			continue
		case !inInside(netip.PrefixFrom(a, 32)):
			errs = append(errs, fmt.Errorf("%s.address: %s lies outside inside.prefixes", field, a))
			continue
		}
		mac, err := net.ParseMAC(b.MAC)
		switch {
		case err != nil || len(mac) != 6:
			errs = append(errs, fmt.Errorf("%s.mac: %q is not an Ethernet MAC such as 02:00:00:00:00:01", field, b.MAC))
			continue
		case mac[0]&1 != 0:
			errs = append(errs, fmt.Errorf("%s.mac: %s is a multicast address; a device's MAC is unicast", field, mac))
			continue
		}
		if _, dup := rules.Static[a]; dup {
			errs = append(errs, fmt.Errorf("%s.address: %s is bound twice", field, a))
			continue
		}
		rules.Static[a] = mac
	}
	for k, name := range c.Inside.RequireBinding {
		if !isInside(name) {
			errs = append(errs, fmt.Errorf("inside.require_binding[%d]: %s is not one of inside.interfaces", k, name))
			continue
		}
		rules.RequireBinding[name] = true
	}
	return rules, errs
}
