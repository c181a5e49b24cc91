// Package config reads and validates the blocknat YAML configuration.
//
// Decoding is strict: an unknown or misspelt field is an error, because a
// NAT that silently ignores a setting can map subscribers differently from
// what the operator wrote, and the mapping is what later answers "who was
// it?". Every error names the field at fault, as written in the file
// (inside.prefixes[1], ports.range), so an operator can fix it without
// reading code.
package config

import (
	_ "embed"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"unicode"

	"github.com/goccy/go-yaml"
	"github.com/goccy/go-yaml/ast"
	"github.com/goccy/go-yaml/parser"

	"github.com/blocknat/blocknat/userspace/mapping"
)

// Default is the demo topology's configuration, embedded so the demo and
// the tests run without a file on disk.
//
//go:embed default.yaml
var Default []byte

// Defaults of the optional fields.
const (
	DefaultPortRange = "1024-65535"
	DefaultXDPMode   = XDPModeNative
	DefaultStateDir  = "/var/lib/blocknat"
	DefaultBPFFSDir  = "/sys/fs/bpf/blocknat"
	// DefaultMaxFlows, 0, sizes the flow tables from the mapping:
	// subscribers × block size × protocols (Mapping.FlowsNeeded), so no
	// subscriber can take another's capacity.
	DefaultMaxFlows = 0
)

// XDP attach modes accepted in xdp_mode.
const (
	XDPModeNative  = "native"
	XDPModeGeneric = "generic"
)

// MaxFlows bounds max_flows, derived or explicit: it keeps the kernel
// tables allocatable. The lower bound is the mapping's own need.
const MaxFlows = 1 << 24

// Config is the whole configuration file.
type Config struct {
	Inside   Inside  `yaml:"inside"`
	Outside  Outside `yaml:"outside"`
	Ports    Ports   `yaml:"ports"`
	XDPMode  string  `yaml:"xdp_mode"`
	StateDir string  `yaml:"state_dir"`
	BPFFSDir string  `yaml:"bpffs_dir"`
	// MaxFlows is the size of each kernel flow table. 0 or absent derives
	// it from the mapping; Parse then holds the derived size here. An
	// explicit value below what the mapping needs is refused.
	MaxFlows uint32 `yaml:"max_flows"`

	Retention Retention `yaml:"retention"`
	Timeouts  Timeouts  `yaml:"timeouts"`
	API       API       `yaml:"api"`
	Roles     Roles     `yaml:"roles"`
	Leases    Leases    `yaml:"leases"`
	Audit     Audit     `yaml:"audit"`
	Intervals Intervals `yaml:"intervals"`
	Metrics   Metrics   `yaml:"metrics"`
	SelfCheck SelfCheck `yaml:"selfcheck"`
	// NATExempt are destinations subscribers reach untranslated: the
	// ISP's own resolvers, portal or management network (see exempt.go).
	NATExempt []string `yaml:"nat_exempt"`
	// Filtering is which inbound packets a mapping admits (RFC 4787
	// REQ-8): any (endpoint-independent, the default) or only those from
	// an address and port the subscriber has sent to.
	Filtering string `yaml:"filtering"`
	// Export sends block events to IPFIX and syslog collectors (optional).
	Export Export `yaml:"export"`
	// Disk is the free space kept under state_dir.
	Disk Disk `yaml:"disk"`
	// PCP lets subscribers open ports of their own block (see pcp.go);
	// off by default.
	PCP PCP `yaml:"pcp"`
	// Replicate copies the records to PostgreSQL (see replicate.go); off
	// by default.
	Replicate Replicate `yaml:"replicate"`

	// parsed is what Validate parsed, for Mapping and SourceRules to hand
	// out rather than parse again; nil until Validate succeeds.
	parsed *parsed
}

// parsed is the typed form of the fields that are written as text.
type parsed struct {
	mapping  *mapping.Mapping
	sources  SourceRules
	exempt   Exemptions
	overflow *mapping.Overflow
}

// Inside is the subscriber side.
type Inside struct {
	Interfaces []string `yaml:"interfaces"`
	Prefixes   []string `yaml:"prefixes"`
	// Source validation (see sources.go): the prefixes each interface
	// carries, addresses bound to a MAC, and interfaces that translate
	// bound addresses only.
	InterfacePrefixes map[string][]string `yaml:"interface_prefixes"`
	StaticBindings    []StaticBinding     `yaml:"static_bindings"`
	RequireBinding    []string            `yaml:"require_binding"`
	// Public are the prefixes of subscribers with addresses of their own,
	// routed untouched both ways (see exempt.go).
	Public []string `yaml:"public"`
}

// Outside is the internet side.
type Outside struct {
	Interfaces []string `yaml:"interfaces"`
	Pool       []string `yaml:"pool"`
}

// Ports is the port range cut into blocks.
type Ports struct {
	Range     string `yaml:"range"`
	BlockSize uint16 `yaml:"block_size"` // 0: derived from the sharing ratio
	// Overflow lends extra blocks to subscribers whose own is full (see
	// overflow.go); nil when it is off.
	Overflow *Overflow `yaml:"overflow"`
}

// withDefaults returns a Config holding the default of every optional
// field. Decoding into it leaves absent fields at their default, while a
// field written explicitly, even as empty, is validated as written.
func withDefaults() *Config {
	c := &Config{
		Ports:    Ports{Range: DefaultPortRange},
		XDPMode:  DefaultXDPMode,
		StateDir: DefaultStateDir,
		BPFFSDir: DefaultBPFFSDir,
		MaxFlows: DefaultMaxFlows,
	}
	agentDefaults(c)
	monitoringDefaults(c)
	c.Disk = Disk{MinFree: DefaultDiskMinFree, Reserve: DefaultDiskReserve}
	c.PCP = pcpDefaults()
	c.Replicate = replicateDefaults()
	return c
}

// Parse decodes a configuration strictly, applies defaults and validates it.
func Parse(data []byte) (*Config, error) {
	file, err := parser.ParseBytes(data, 0)
	if err != nil {
		return nil, fmt.Errorf("parse config: %s", describeYAMLError(err, nil))
	}
	var body ast.Node
	documents := 0
	for _, doc := range file.Docs {
		if doc.Body == nil {
			continue
		}
		documents++
		body = doc.Body
	}
	if documents > 1 {
		return nil, errors.New("parse config: the file holds more than one YAML document")
	}
	if body == nil || body.Type() == ast.NullType {
		return nil, errors.New("parse config: the file is empty; at least inside and outside are required")
	}

	c := withDefaults()
	if err := yaml.NodeToValue(body, c, yaml.Strict()); err != nil {
		return nil, fmt.Errorf("parse config: %s", describeYAMLError(err, body))
	}
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("invalid config: %w", err)
	}
	if c.MaxFlows == 0 {
		m, err := c.Mapping()
		if err != nil {
			return nil, fmt.Errorf("invalid config: %w", err)
		}
		c.MaxFlows = uint32(m.FlowsNeeded())
	}
	return c, nil
}

// Load reads and parses the configuration file at path.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load config %s: %w", path, err)
	}
	c, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("load config %s: %w", path, err)
	}
	return c, nil
}

// DescribeYAMLError is describeYAMLError for the project's other strict
// files (the fleet service's configuration), so that their errors name
// the field the same way.
func DescribeYAMLError(err error, body ast.Node) string { return describeYAMLError(err, body) }

// describeYAMLError turns a go-yaml error into one line with its position
// and, when the node is found in body, the field path ("inside.bogus");
// the library's own rendering spans several lines and names Go types.
func describeYAMLError(err error, body ast.Node) string {
	var bad badValueError
	if errors.As(err, &bad) && body != nil {
		if field := fieldHolding(body, bad.value); field != "" {
			return field + ": " + bad.Error()
		}
	}
	var yerr yaml.Error
	if !errors.As(err, &yerr) || yerr.GetToken() == nil {
		return err.Error()
	}
	pos := yerr.GetToken().Position
	field := ""
	if body != nil {
		field = fieldAt(body, pos.Line, pos.Column)
	}
	text := yerr.GetMessage()
	if r, ok := integerRangeOf(text, field); ok {
		// The decoder names a Go type ("uint16 ( overflow )"); the
		// operator needs the numbers the field takes.
		text = fmt.Sprintf("%s is not a whole number from %s", yerr.GetToken().Value, r)
	}
	msg := fmt.Sprintf("%s (line %d, column %d)", text, pos.Line, pos.Column)
	if field != "" {
		msg = field + ": " + msg
	}
	return msg
}

// fieldAt returns the dotted path of the first node at line:column.
// fieldHolding is the path of the first scalar whose text is value.
func fieldHolding(body ast.Node, value string) string {
	finder := &valueFinder{value: value}
	ast.Walk(finder, body)
	return strings.TrimPrefix(strings.TrimPrefix(finder.path, "$"), ".")
}

type valueFinder struct {
	value, path string
}

func (f *valueFinder) Visit(n ast.Node) ast.Visitor {
	if n == nil || f.path != "" {
		return nil
	}
	if _, isMap := n.(*ast.MappingValueNode); !isMap {
		if tk := n.GetToken(); tk != nil && tk.Value == f.value && n.Type() != ast.MappingKeyType {
			f.path = n.GetPath()
			return nil
		}
	}
	return f
}

func fieldAt(body ast.Node, line, column int) string {
	finder := &nodeFinder{line: line, column: column}
	ast.Walk(finder, body)
	return strings.TrimPrefix(strings.TrimPrefix(finder.path, "$"), ".")
}

type nodeFinder struct {
	line, column int
	path         string
}

func (f *nodeFinder) Visit(n ast.Node) ast.Visitor {
	if n == nil || f.path != "" {
		return nil
	}
	if tk := n.GetToken(); tk != nil && tk.Position.Line == f.line && tk.Position.Column == f.column {
		f.path = n.GetPath()
		return nil
	}
	return f
}

// Validate reports every problem found, joined, each naming its field.
// When there is none it keeps what it parsed: Mapping and SourceRules
// return it, so a start parses the prefixes, the pool and the range once.
func (c *Config) Validate() error {
	c.parsed = nil
	var errs []error
	errs = append(errs, validateInterfaces(c.Inside.Interfaces, c.Outside.Interfaces)...)

	p := &parsed{}
	m, mappingErrs := c.buildMapping()
	errs = append(errs, mappingErrs...)
	if m != nil {
		p.mapping = m
		if err := c.checkMaxFlows(m); err != nil {
			errs = append(errs, err)
		}
	} else if c.MaxFlows > MaxFlows {
		errs = append(errs, fmt.Errorf("max_flows: %d is more than %d", c.MaxFlows, MaxFlows))
	}
	var sourceErrs, exemptErrs []error
	p.sources, sourceErrs = c.parseSources()
	errs = append(errs, sourceErrs...)
	p.exempt, exemptErrs = c.parseExemptions()
	errs = append(errs, exemptErrs...)
	var overflowErrs []error
	p.overflow, overflowErrs = c.parseOverflow(m)
	errs = append(errs, overflowErrs...)

	if c.XDPMode != XDPModeNative && c.XDPMode != XDPModeGeneric {
		errs = append(errs, fmt.Errorf("xdp_mode: %q is not %q or %q", c.XDPMode, XDPModeNative, XDPModeGeneric))
	}
	for _, dir := range []struct{ field, path string }{{"state_dir", c.StateDir}, {"bpffs_dir", c.BPFFSDir}} {
		if !filepath.IsAbs(dir.path) {
			errs = append(errs, fmt.Errorf("%s: %q is not an absolute path", dir.field, dir.path))
		}
	}
	errs = append(errs, c.validateAgent()...)
	errs = append(errs, c.validateDisk()...)
	errs = append(errs, c.validateExport()...)
	errs = append(errs, c.validateMonitoring()...)
	errs = append(errs, c.validatePCP(m)...)
	errs = append(errs, c.validateReplicate()...)
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	c.parsed = p
	return nil
}

// checkMaxFlows refuses flow tables the mapping's subscribers could fill:
// then a few busy subscribers would leave the others no new flow.
func (c *Config) checkMaxFlows(m *mapping.Mapping) error {
	need := m.FlowsNeeded()
	switch {
	case need > MaxFlows:
		return fmt.Errorf("max_flows: the mapping needs %s flows, more than %d; use fewer subscribers per address or smaller blocks",
			m.FlowsExplained(), MaxFlows)
	case c.MaxFlows > MaxFlows:
		return fmt.Errorf("max_flows: %d is more than %d", c.MaxFlows, MaxFlows)
	case c.MaxFlows != 0 && uint64(c.MaxFlows) < need:
		return fmt.Errorf("max_flows: %d cannot hold %s; leave it out to size the tables from the mapping", c.MaxFlows, m.FlowsExplained())
	}
	return nil
}

// validateInterfaces checks names and that no interface is listed twice,
// in one list or across both: an interface on both sides would translate
// its own traffic.
func validateInterfaces(inside, outside []string) []error {
	var errs []error
	if len(inside) == 0 {
		errs = append(errs, errors.New("inside.interfaces: at least one interface is required"))
	}
	if len(outside) == 0 {
		errs = append(errs, errors.New("outside.interfaces: at least one interface is required"))
	}
	seen := make(map[string]string) // name -> field where it was first listed
	for _, list := range []struct {
		field string
		names []string
	}{{"inside.interfaces", inside}, {"outside.interfaces", outside}} {
		for k, name := range list.names {
			field := fmt.Sprintf("%s[%d]", list.field, k)
			if err := checkInterfaceName(name); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", field, err))
				continue
			}
			if first, dup := seen[name]; dup {
				errs = append(errs, fmt.Errorf("%s: %s is already listed as %s", field, name, first))
				continue
			}
			seen[name] = field
		}
	}
	return errs
}

// checkInterfaceName applies the kernel's rules (dev_valid_name): at most
// IFNAMSIZ-1 = 15 bytes, not "." or "..", no '/', ':' or whitespace.
func checkInterfaceName(name string) error {
	switch {
	case name == "":
		return errors.New("empty interface name")
	case len(name) > 15:
		return fmt.Errorf("interface name %q is longer than 15 bytes", name)
	case name == "." || name == "..":
		return fmt.Errorf("%q is not a valid interface name", name)
	case strings.ContainsFunc(name, func(r rune) bool { return r == '/' || r == ':' || r == 0 || unicode.IsSpace(r) }):
		return fmt.Errorf("interface name %q contains '/', ':' or whitespace", name)
	}
	return nil
}

// parsePrefixes parses IPv4 prefixes; a bare address means a /32. Host bits
// are refused rather than masked: 100.64.0.1/24 is more likely a typo than
// a wish for 100.64.0.0/24, and the mapping depends on the exact set.
func parsePrefixes(field string, entries []string) ([]netip.Prefix, []error) {
	var errs []error
	if len(entries) == 0 {
		return nil, []error{fmt.Errorf("%s: at least one entry is required", field)}
	}
	out := make([]netip.Prefix, 0, len(entries))
	for k, entry := range entries {
		var p netip.Prefix
		var err error
		if strings.Contains(entry, "/") {
			p, err = netip.ParsePrefix(entry)
		} else {
			var a netip.Addr
			a, err = netip.ParseAddr(entry)
			p = netip.PrefixFrom(a, a.BitLen())
		}
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("%s[%d]: %q is not an IPv4 prefix or address: %w", field, k, entry, err))
		case !p.Addr().Is4():
			errs = append(errs, fmt.Errorf("%s[%d]: %q is not IPv4", field, k, entry))
		case p != p.Masked():
			errs = append(errs, fmt.Errorf("%s[%d]: %q has host bits set (the prefix is %s)", field, k, entry, p.Masked()))
		default:
			out = append(out, p)
		}
	}
	return out, errs
}

// PortRange parses ports.range, "lo-hi" with 1 <= lo <= hi <= 65535.
func (c *Config) PortRange() (lo, hi uint16, err error) {
	loText, hiText, ok := strings.Cut(c.Ports.Range, "-")
	if !ok {
		return 0, 0, fmt.Errorf("ports.range: %q is not of the form lo-hi", c.Ports.Range)
	}
	l, errLo := strconv.ParseUint(strings.TrimSpace(loText), 10, 16)
	h, errHi := strconv.ParseUint(strings.TrimSpace(hiText), 10, 16)
	if errLo != nil || errHi != nil {
		return 0, 0, fmt.Errorf("ports.range: %q is not of the form lo-hi with ports 1-65535", c.Ports.Range)
	}
	if l < 1 {
		return 0, 0, fmt.Errorf("ports.range: %q starts at port 0, which cannot be used", c.Ports.Range)
	}
	if l > h {
		return 0, 0, fmt.Errorf("ports.range: %q starts above its end", c.Ports.Range)
	}
	return uint16(l), uint16(h), nil
}

// Mapping is the deterministic mapping the configuration describes: the
// one Validate built, or, for a Config that was not validated, one built
// now.
func (c *Config) Mapping() (*mapping.Mapping, error) {
	if c.parsed != nil {
		return c.parsed.mapping, nil
	}
	m, errs := c.buildMapping()
	return m, errors.Join(errs...)
}

// buildMapping parses the mapping's fields and builds it; a nil mapping
// comes with the errors. The mapping's own checks (overlaps, sharing
// ratio, block size) run only once its inputs parse; otherwise they would
// repeat those errors in other words.
func (c *Config) buildMapping() (*mapping.Mapping, []error) {
	prefixes, errs := parsePrefixes("inside.prefixes", c.Inside.Prefixes)
	pool, poolErrs := parsePrefixes("outside.pool", c.Outside.Pool)
	errs = append(errs, poolErrs...)
	lo, hi, rangeErr := c.PortRange()
	if rangeErr != nil {
		errs = append(errs, rangeErr)
	}
	if len(errs) > 0 {
		return nil, errs
	}
	m, err := mapping.New(prefixes, pool, lo, hi, c.Ports.BlockSize)
	if err != nil {
		return nil, []error{err}
	}
	return m, nil
}
