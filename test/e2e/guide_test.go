package e2e

import (
	"bufio"
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/blocknat/blocknat/test/harness"
	"github.com/blocknat/blocknat/test/netns"
	"github.com/blocknat/blocknat/userspace/clockstate"
	"github.com/blocknat/blocknat/userspace/config"
)

// The operator guide's examples are run by TestGuideExamples, so that the
// guide cannot drift from the code. The guide holds:
//
//   - one ```yaml block right after <!-- guide-test: config -->: the
//     router's configuration, which the test runs (interface names and
//     paths swapped for the test topology's, see guideSubstitutions);
//   - ```console blocks: "$ command" lines, each followed by the output it
//     prints. In the output, "…" stands for any text, a line holding only
//     "…" for any number of lines, and every RFC 3339 time must be within
//     guideTimeSlack of the guide's time moved to the test's clock;
//   - directives in HTML comments, run in document order with the blocks:
//     <!-- guide-test: clock T --> says the guide's time T is now;
//     <!-- guide-test: traffic ADDRESS at T --> sends traffic from the
//     subscriber ADDRESS at the guide's time T;
//     <!-- guide-test: released ADDRESS --> waits until the agent has
//     released that subscriber's block;
//     <!-- guide-test: dnsmasq add MAC ADDRESS HOST for DURATION --> runs
//     `blocknat lease dnsmasq` as dnsmasq would when it grants ADDRESS to
//     MAC for DURATION (its arguments and DNSMASQ_LEASE_EXPIRES), as root.
//
// Only blocknat and blocknatd commands, and cat and head, are run. Times in
// commands are moved to the test's clock; a lookup waits until its time
// (and tolerance) has passed. Commands run as the uid whose role they need
// (guideUIDs), as they would on a router.
//
// Commands that start with sudo are the lab's (section 11), run as they
// are shown: `make lab` and `make lab-down` in the repository, `ip netns
// exec` and `ip -n` into the lab's namespaces, and bin/blocknat, which
// make lab built. The lab is named for the test (see labRun), and its
// outputs are compared with runs of spaces taken as one and trailing ones
// dropped, since the test's longer name widens the lab's columns.
const guidePath = "../../docs/operator-guide.md"

// guideTimeSlack is how far a time the command printed may lie from the
// guide's time on the test's clock: traffic and sweeps are not to the
// millisecond.
const guideTimeSlack = 2 * time.Second

// defaultClockBound is selfcheck.clock_max_error's default, which the
// guide's configuration keeps.
const defaultClockBound = config.DefaultClockMaxError

// guideUIDs are the uids the guide's configuration gives each role.
var guideUIDs = map[string]uint32{"investigator": 1001, "auditor": 1002, "admin": 0}

// roleOf is the role a command needs ("" for offline commands, run as root).
func roleOf(args []string) string {
	if len(args) < 2 || args[0] != "blocknat" {
		return ""
	}
	switch args[1] {
	case "lookup", "history", "export":
		return "investigator"
	case "audit":
		if slicesContains(args, "--dir") {
			return ""
		}
		return "auditor"
	case "status":
		return "admin"
	}
	return ""
}

func slicesContains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// guideStep is a directive or a command with its expected output.
type guideStep struct {
	line      int
	directive string
	command   string
	want      []string
}

// parseGuide reads the config block and the steps.
func parseGuide(text string) (config string, steps []guideStep, err error) {
	lines := strings.Split(text, "\n")
	directive := regexp.MustCompile(`^<!-- guide-test: (.*) -->$`)
	for i := 0; i < len(lines); i++ {
		line := lines[i]
		if m := directive.FindStringSubmatch(line); m != nil {
			if m[1] == "config" {
				if i+1 >= len(lines) || lines[i+1] != "```yaml" {
					return "", nil, fmt.Errorf("line %d: guide-test: config is not followed by a ```yaml block", i+1)
				}
				var b strings.Builder
				for i += 2; i < len(lines) && lines[i] != "```"; i++ {
					b.WriteString(lines[i] + "\n")
				}
				config = b.String()
				continue
			}
			if m[1] != "reference" { // read by TestGuideConfigReference
				steps = append(steps, guideStep{line: i + 1, directive: m[1]})
			}
			continue
		}
		if line != "```console" {
			continue
		}
		for i++; i < len(lines) && lines[i] != "```"; i++ {
			if cmd, ok := strings.CutPrefix(lines[i], "$ "); ok {
				steps = append(steps, guideStep{line: i + 1, command: cmd})
				continue
			}
			if len(steps) == 0 || steps[len(steps)-1].command == "" {
				return "", nil, fmt.Errorf("line %d: output before any command in a console block", i+1)
			}
			steps[len(steps)-1].want = append(steps[len(steps)-1].want, lines[i])
		}
	}
	if config == "" {
		return "", nil, fmt.Errorf("%s has no <!-- guide-test: config --> block", guidePath)
	}
	return config, steps, nil
}

// guideRun is the state of one run through the guide.
type guideRun struct {
	t        *testing.T
	e        *env
	work     string
	subst    [][2]string // guide text -> test text, for commands
	offset   time.Duration
	clockSet bool
	lab      *labRun
}

func TestGuideExamples(t *testing.T) {
	text, err := os.ReadFile(guidePath)
	if err != nil {
		t.Fatal(err)
	}
	config, steps, err := parseGuide(string(text))
	if err != nil {
		t.Fatal(err)
	}
	commands := 0
	for _, s := range steps {
		if s.command != "" {
			commands++
		}
	}
	if commands < 10 {
		t.Fatalf("the guide holds %d example commands; the test would prove little", commands)
	}
	for _, key := range []string{"timeouts:", "intervals:"} {
		if strings.Contains(config, key) {
			t.Fatalf("the guide's configuration sets %s, which the test sets itself to make blocks go idle quickly", key)
		}
	}
	e, subst := startGuideEnv(t, config)
	r := &guideRun{t: t, e: e, work: t.TempDir(), subst: subst, lab: newLabRun(t)}
	if err := os.Chmod(r.work, 0o777); err != nil {
		t.Fatal(err)
	}
	for _, s := range steps {
		if s.directive != "" {
			r.directive(s)
			continue
		}
		r.command(s)
	}
}

// startGuideEnv starts blocknatd with the guide's configuration on a test
// topology: the guide's interfaces and paths become the test's.
func startGuideEnv(t *testing.T, config string) (*env, [][2]string) {
	t.Helper()
	netns.RequirePrivileged(t)
	netns.RequireTools(t, "curl")
	topo := netns.NewTestTopology(t, "bn-e2eguide")
	dir := t.TempDir()
	unmount, err := harness.MountBPFFS(filepath.Join(dir, "bpf"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := unmount(); err != nil {
			t.Errorf("cleanup bpffs: %v", err)
		}
	})
	e := &env{topo: topo, cfgPath: filepath.Join(dir, "blocknat.yaml"), pinDir: filepath.Join(dir, "bpf", "blocknat"),
		stateDir: filepath.Join(dir, "state")}
	// Other uids reach the socket through these directories; the roles
	// decide who may ask, as on a router.
	for d := dir; d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	socket := harness.SocketPath(e.stateDir)
	// Longest first, so that a path is replaced before its prefix.
	subst := [][2]string{
		{"/etc/blocknat/blocknat.yaml", e.cfgPath},
		{"/run/blocknat/api.sock", socket},
		{"/sys/fs/bpf/blocknat", e.pinDir},
		{"/var/lib/blocknat", e.stateDir},
		{"/var/spool/blocknat", filepath.Join(dir, "spool")},
		{"eth1", topo.InsideIfaces[0]},
		{"eth2", topo.InsideIfaces[1]},
		{"eth0", topo.OutsideIface},
	}
	rendered := config
	for _, s := range subst {
		rendered = strings.ReplaceAll(rendered, s[0], s[1])
	}
	rendered += "timeouts: {udp: 6s, block_idle: 1s}\nintervals: {sweep: 200ms}\n"
	// The guide shows a router whose NTP client has synchronised its
	// clock: its status has no alarm. A test machine's clock may not be
	// synchronised (namespaces share it), and then the clock alarm, which
	// TestClockHealth proves, is turned off here so that the guide's other
	// lines are checked as they stand; the lines that state the clock
	// match either way ("…").
	if st, err := clockstate.Read(); err != nil || !st.Within(defaultClockBound) {
		t.Logf("this machine's clock (%+v, %v) is not within %s: the guide runs with selfcheck.clock_max_error: 0", st, err, defaultClockBound)
		rendered += "selfcheck: {clock_max_error: 0}\n"
	}
	if err := os.WriteFile(e.cfgPath, []byte(rendered), 0o644); err != nil {
		t.Fatal(err)
	}
	e.ifaces = append(append([]string{}, topo.InsideIfaces...), topo.OutsideIface)
	e.start(t)
	t.Cleanup(func() {
		if err := e.agent.Stop(); err != nil {
			t.Errorf("stop blocknatd: %v\n%s", err, e.agent.Log())
		}
		if t.Failed() {
			t.Logf("blocknatd log:\n%s", e.agent.Log())
		}
	})
	return e, subst
}

var rfc3339 = regexp.MustCompile(`\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:\d{2})`)

// toTest moves a guide time to the test's clock.
func (r *guideRun) toTest(t time.Time) time.Time { return t.Add(r.offset) }

func (r *guideRun) directive(s guideStep) {
	t := r.t
	fields := strings.Fields(s.directive)
	switch {
	case len(fields) == 2 && fields[0] == "clock":
		guideNow, err := time.Parse(time.RFC3339, fields[1])
		if err != nil {
			t.Fatalf("guide line %d: %v", s.line, err)
		}
		// The next whole second, so that moved times print as the guide's do.
		now := time.Now().Truncate(time.Second).Add(time.Second)
		time.Sleep(time.Until(now))
		r.offset, r.clockSet = now.Sub(guideNow), true
	case len(fields) == 4 && fields[0] == "traffic" && fields[2] == "at":
		at, err := time.Parse(time.RFC3339Nano, fields[3])
		if err != nil || !r.clockSet {
			t.Fatalf("guide line %d: traffic needs a clock and a time: %v", s.line, err)
		}
		time.Sleep(time.Until(r.toTest(at)))
		sub := r.subscriber(s.line, fields[1])
		srv, err := netns.StartUDPEcho(r.e.topo.Internet, netip.AddrPortFrom(r.e.topo.ServerAddrs[0], 9000))
		if err != nil {
			t.Fatal(err)
		}
		_, err = netns.UDPRoundTrip(sub.NS, 0, srv.Addr, []byte("guide"), 3*time.Second)
		srv.Close()
		if err != nil {
			t.Fatalf("guide line %d: traffic from %s: %v", s.line, fields[1], err)
		}
	case len(fields) == 2 && fields[0] == "released":
		sub := r.subscriber(s.line, fields[1])
		block := r.e.forward(t, sub.Addr)
		deadline := time.Now().Add(15 * time.Second)
		for slicesContainsU32(r.e.activeInKernel(t), block.Subscriber) {
			if time.Now().After(deadline) {
				t.Fatalf("guide line %d: %s's block still active after 15s", s.line, fields[1])
			}
			time.Sleep(50 * time.Millisecond)
		}
		// The release reaches the store within a sweep and a commit.
		time.Sleep(300 * time.Millisecond)
	case len(fields) == 7 && fields[0] == "dnsmasq" && fields[1] == "add" && fields[5] == "for":
		length, err := time.ParseDuration(fields[6])
		if err != nil {
			t.Fatalf("guide line %d: %v", s.line, err)
		}
		// The device is the topology's subscriber with that address, and
		// the MAC the guide names becomes its own: the lease binds the
		// address to it, and the data plane drops the address from any
		// other MAC.
		sub := r.subscriber(s.line, fields[3])
		for i, ts := range r.e.topo.Subscribers {
			if ts != sub {
				continue
			}
			if out, err := sub.NS.Exec(t.Context(), "ip", "link", "set", "dev", sub.Iface, "address", fields[2]); err != nil {
				t.Fatalf("guide line %d: set %s's MAC: %v\n%s", s.line, fields[3], err, out)
			}
			if out, err := r.e.topo.Router.Exec(t.Context(), "ip", "neigh", "replace", fields[3], "lladdr", fields[2],
				"dev", r.e.topo.InsideIfaces[i], "nud", "permanent"); err != nil {
				t.Fatalf("guide line %d: router neighbour %s: %v\n%s", s.line, fields[3], err, out)
			}
		}
		cmd := exec.CommandContext(t.Context(), bins.Blocknat, "lease", "dnsmasq", "--config", r.e.cfgPath, "--", "add", fields[2], fields[3], fields[4])
		cmd.Env = append(os.Environ(), fmt.Sprintf("DNSMASQ_LEASE_EXPIRES=%d", time.Now().Add(length).Unix()))
		if out, err := cmd.CombinedOutput(); err != nil || len(out) != 0 {
			t.Fatalf("guide line %d: blocknat lease dnsmasq: %v\n%s", s.line, err, out)
		}
	default:
		t.Fatalf("guide line %d: unknown directive %q", s.line, s.directive)
	}
}

func slicesContainsU32(s []uint32, v uint32) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func (r *guideRun) subscriber(line int, addr string) *netns.Subscriber {
	for _, sub := range r.e.topo.Subscribers {
		if sub.Addr.String() == addr {
			return sub
		}
	}
	r.t.Fatalf("guide line %d: %s is not a subscriber of the test topology", line, addr)
	return nil
}

func (r *guideRun) command(s guideStep) {
	t := r.t
	args, err := splitCommand(s.command)
	if err != nil || len(args) == 0 {
		t.Fatalf("guide line %d: %q: %v", s.line, s.command, err)
	}
	if args[0] == "sudo" {
		r.labCommand(s, r.prepare(s, args[1:], r.lab.subst))
		return
	}
	args = r.prepare(s, args, r.subst)
	role := roleOf(args)
	if role != "" {
		args = append(args, "--socket", harness.SocketPath(r.e.stateDir))
	}
	var bin string
	switch args[0] {
	case "blocknat":
		bin = bins.Blocknat
	case "blocknatd":
		bin = bins.Blocknatd
	case "cat", "head":
		bin = args[0]
	default:
		t.Fatalf("guide line %d: %s is not a command the guide test runs", s.line, args[0])
	}
	cmd := exec.CommandContext(t.Context(), bin, args[1:]...)
	cmd.Dir = r.work
	if role != "" && guideUIDs[role] != 0 {
		uid := guideUIDs[role]
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.Run() // the exit code is not checked: the output says what happened
	got := out.String()
	// Paths the guide writes appear in outputs as the test's; put the
	// guide's back.
	for _, sub := range r.subst {
		if strings.HasPrefix(sub[0], "/") {
			got = strings.ReplaceAll(got, sub[1], sub[0])
		}
	}
	var gotLines []string
	if got = strings.TrimRight(got, "\n"); got != "" {
		gotLines = strings.Split(got, "\n")
	}
	if err := r.matchLines(s.want, gotLines); err != nil {
		t.Errorf("guide line %d: $ %s\n%v\n--- the guide says:\n%s\n--- the command printed:\n%s", s.line, s.command, err,
			strings.Join(s.want, "\n"), strings.Join(gotLines, "\n"))
	}
}

// prepare swaps the guide's names in args for the test's (subst) and moves
// their times to the test's clock, and waits until a lookup's time has
// passed.
func (r *guideRun) prepare(s guideStep, args []string, subst [][2]string) []string {
	t := r.t
	var latest time.Time
	for i, a := range args {
		for _, sub := range subst {
			a = strings.ReplaceAll(a, sub[0], sub[1])
		}
		a = rfc3339.ReplaceAllStringFunc(a, func(ts string) string {
			v, err := time.Parse(time.RFC3339Nano, ts)
			if err != nil || !r.clockSet {
				t.Fatalf("guide line %d: time %s needs a clock directive before it", s.line, ts)
			}
			moved := r.toTest(v)
			if i > 0 && args[i-1] == "--time" {
				latest = moved
			}
			return moved.UTC().Format(time.RFC3339Nano)
		})
		args[i] = a
	}
	if !latest.IsZero() {
		// Ask only once the time, widened by the tolerance, has passed.
		wait := time.Duration(0)
		for i, a := range args {
			if a == "--tolerance" && i+1 < len(args) {
				wait, _ = time.ParseDuration(args[i+1])
			}
		}
		time.Sleep(time.Until(latest.Add(wait + 500*time.Millisecond)))
	}
	return args
}

// matchLines matches output lines against the guide's; a line "…" matches
// any number of lines.
func (r *guideRun) matchLines(want, got []string) error {
	if len(want) == 0 {
		if len(got) == 0 {
			return nil
		}
		return fmt.Errorf("the command printed more than the guide shows, from %q on", got[0])
	}
	if want[0] == "…" {
		for skip := 0; skip <= len(got); skip++ {
			if r.matchLines(want[1:], got[skip:]) == nil {
				return nil
			}
		}
		return fmt.Errorf("nothing after the skipped lines matches %q", want[1:])
	}
	if len(got) == 0 {
		return fmt.Errorf("output ends before %q", want[0])
	}
	if err := r.matchLine(want[0], got[0]); err != nil {
		return err
	}
	return r.matchLines(want[1:], got[1:])
}

// matchLine compares one line: times by value on the test's clock, "…" as
// any text, the rest exactly.
func (r *guideRun) matchLine(want, got string) error {
	wantTimes, gotTimes := rfc3339.FindAllString(want, -1), rfc3339.FindAllString(got, -1)
	if len(wantTimes) != len(gotTimes) {
		return fmt.Errorf("%q: %d times, the guide's line %q has %d", got, len(gotTimes), want, len(wantTimes))
	}
	for i := range wantTimes {
		w, err1 := time.Parse(time.RFC3339Nano, wantTimes[i])
		g, err2 := time.Parse(time.RFC3339Nano, gotTimes[i])
		if err1 != nil || err2 != nil {
			return fmt.Errorf("times %q, %q: %v %v", wantTimes[i], gotTimes[i], err1, err2)
		}
		if d := g.Sub(r.toTest(w)); d > guideTimeSlack || d < -guideTimeSlack {
			return fmt.Errorf("%q: time %s is %v from the guide's %s", got, gotTimes[i], d, wantTimes[i])
		}
	}
	const mark = "\x00"
	w, g := rfc3339.ReplaceAllString(want, mark), rfc3339.ReplaceAllString(got, mark)
	parts := strings.Split(w, "…")
	for i := range parts {
		parts[i] = regexp.QuoteMeta(parts[i])
	}
	if !regexp.MustCompile("^" + strings.Join(parts, ".*") + "$").MatchString(g) {
		return fmt.Errorf("line %q does not match the guide's %q", got, want)
	}
	return nil
}

// splitCommand splits a command line as a shell would for the quoting the
// guide uses: words, "double quoted" and 'single quoted' strings.
func splitCommand(line string) ([]string, error) {
	var args []string
	var cur strings.Builder
	inWord := false
	sc := bufio.NewReader(strings.NewReader(line))
	for {
		c, _, err := sc.ReadRune()
		if err != nil {
			break
		}
		switch {
		case c == '"' || c == '\'':
			inWord = true
			for {
				d, _, err := sc.ReadRune()
				if err != nil {
					return nil, fmt.Errorf("unterminated %c", c)
				}
				if d == c {
					break
				}
				cur.WriteRune(d)
			}
		case c == ' ' || c == '\t':
			if inWord {
				args = append(args, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			inWord = true
			cur.WriteRune(c)
		}
	}
	if inWord {
		args = append(args, cur.String())
	}
	return args, nil
}

// TestGuideConfigReference keeps the guide's configuration reference true:
// every field of the configuration is a row, every row is a field, and
// every default the guide shows in `code` is the one the agent applies.
func TestGuideConfigReference(t *testing.T) {
	text, err := os.ReadFile(guidePath)
	if err != nil {
		t.Fatal(err)
	}
	rows := referenceRows(t, string(text))
	fields := map[string]reflect.Type{}
	configFields(reflect.TypeOf(config.Config{}), "", fields)
	for path := range fields {
		if _, ok := rows[path]; !ok {
			t.Errorf("the guide's reference lacks %s", path)
		}
	}
	// Optional sections are switched on, with their required fields only,
	// so that their other fields show their defaults.
	c, err := config.Parse([]byte(`
inside:  {interfaces: [eth1], prefixes: [100.64.0.0/24]}
outside: {interfaces: [eth0], pool: [198.51.100.10/31]}
api: {tls: {listen: "127.0.0.1:8443", cert: /c, key: /k, client_ca: /ca}}
export: {ipfix: {collector: "127.0.0.1:4739"}, syslog: {address: "127.0.0.1:514"}}
ports: {overflow: {pool: [203.0.113.0/30]}}
`))
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	for path, def := range rows {
		typ, ok := fields[path]
		if !ok {
			t.Errorf("the guide's reference lists %s, which the configuration does not have", path)
			continue
		}
		// Only a cell that is one code span is a value; "required", "off"
		// and the like are said in words.
		if strings.Count(def, "`") != 2 || !strings.HasPrefix(def, "`") || !strings.HasSuffix(def, "`") {
			continue
		}
		code := strings.Trim(def, "`")
		got := valueAt(reflect.ValueOf(c).Elem(), strings.Split(path, "."))
		if !sameDefault(typ, code, got) {
			t.Errorf("%s: the guide says the default is %s, the agent applies %v", path, code, got)
		}
		checked++
	}
	if checked < 30 {
		t.Errorf("only %d defaults checked; the table's format may have changed", checked)
	}
}

// referenceRows reads the table after <!-- guide-test: reference -->:
// field -> default cell.
func referenceRows(t *testing.T, text string) map[string]string {
	t.Helper()
	_, after, ok := strings.Cut(text, "<!-- guide-test: reference -->\n")
	if !ok {
		t.Fatal("the guide has no <!-- guide-test: reference --> table")
	}
	rows := map[string]string{}
	for i, line := range strings.Split(after, "\n") {
		if !strings.HasPrefix(line, "|") {
			if i == 0 {
				t.Fatal("no table after the reference marker")
			}
			break
		}
		cells := strings.Split(strings.Trim(line, "|"), "|")
		if len(cells) < 3 || i < 2 { // header and separator
			continue
		}
		field := strings.Trim(strings.TrimSpace(cells[0]), "`")
		if _, dup := rows[field]; dup {
			t.Errorf("%s is listed twice", field)
		}
		rows[field] = strings.TrimSpace(cells[1])
	}
	return rows
}

// configFields lists every YAML path of t: leaves, and the optional
// sections (pointers to structs) themselves.
func configFields(t reflect.Type, prefix string, out map[string]reflect.Type) {
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "" || name == "-" {
			continue
		}
		path := prefix + name
		ft := f.Type
		switch {
		case ft.Kind() == reflect.Pointer && ft.Elem().Kind() == reflect.Struct:
			out[path] = ft
			configFields(ft.Elem(), path+".", out)
		case ft.Kind() == reflect.Struct:
			configFields(ft, path+".", out)
		default:
			out[path] = ft
		}
	}
}

func valueAt(v reflect.Value, path []string) reflect.Value {
	for _, name := range path {
		if v.Kind() == reflect.Pointer {
			v = v.Elem()
		}
		t := v.Type()
		for i := range t.NumField() {
			if tag, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ","); tag == name {
				v = v.Field(i)
				break
			}
		}
	}
	return v
}

// sameDefault compares the guide's text of a default with the value.
func sameDefault(typ reflect.Type, text string, v reflect.Value) bool {
	switch {
	case typ == reflect.TypeOf(config.Duration(0)):
		d, err := config.ParseDuration(text)
		return err == nil && config.Duration(d) == v.Interface().(config.Duration)
	case typ.Kind() == reflect.Slice:
		return text == "[]" && v.Len() == 0
	case typ.Kind() == reflect.String:
		return strings.Trim(text, `"`) == v.String()
	default:
		return text == fmt.Sprint(v.Interface())
	}
}
