package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/blocknat/blocknat/test/harness"
	"github.com/blocknat/blocknat/test/netns"
)

// guideLabName is the lab's name as the guide shows it (make's default).
const guideLabName = "bnlab"

// labRun runs the guide's lab commands (section 11) for TestGuideExamples
// against a lab of the test's own, named apart from an operator's
// (TestPrefix), which is taken down when the test ends however it ends.
type labRun struct {
	t     *testing.T
	name  string
	root  string
	subst [][2]string
	// up is set once make lab has run: lab-down is then due.
	up bool
}

func newLabRun(t *testing.T) *labRun {
	t.Helper()
	netns.RequireTools(t, "make", "curl", "ping", "ethtool")
	root, err := harness.ModuleRoot(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	name := netns.TestPrefix("bn-e2elab")
	return &labRun{t: t, name: name, root: root, subst: [][2]string{{guideLabName, name}}}
}

// env is the test's environment for make, with the lab's name, and with
// nothing of an outer make (its jobserver descriptors are not ours) or of
// a proxy, which would take curl away from the lab's server.
func (l *labRun) env() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if slices.Contains([]string{"MAKEFLAGS", "MAKELEVEL", "MFLAGS", "LAB"}, k) || strings.HasSuffix(strings.ToLower(k), "_proxy") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "LAB="+l.name)
}

// allowed says whether args (sudo taken off) is a command of the lab's the
// test may run.
func (l *labRun) allowed(args []string) bool {
	inLab := func(ns string) bool { return strings.HasPrefix(ns, l.name+"-") }
	switch {
	case len(args) == 2 && args[0] == "make":
		return args[1] == "lab" || args[1] == "lab-down"
	case len(args) > 4 && args[0] == "ip" && args[1] == "netns" && args[2] == "exec":
		return inLab(args[3]) && slices.Contains([]string{"curl", "ping", "ethtool"}, args[4])
	case len(args) > 3 && args[0] == "ip" && args[1] == "-n":
		return inLab(args[2])
	case len(args) > 1 && args[0] == "bin/blocknat":
		return true
	}
	return false
}

// down runs make lab-down at the test's end, and checks that nothing the
// lab made is left: namespaces, processes, pins, files.
func (l *labRun) down() {
	lab, _, err := harness.LoadLab(l.name)
	if err != nil {
		l.t.Error(err)
	}
	cmd := exec.Command("make", "lab-down")
	cmd.Dir, cmd.Env = l.root, l.env()
	if out, err := cmd.CombinedOutput(); err != nil {
		l.t.Errorf("make lab-down: %v\n%s", err, out)
	}
	left := slices.DeleteFunc(append(netns.TopologyNamespaces(l.name), lab.Dir, lab.StateDir, lab.PinDir), func(p string) bool {
		if !strings.HasPrefix(p, "/") {
			p = "/run/netns/" + p
		}
		_, err := os.Stat(p)
		return err != nil
	})
	for what, pid := range lab.PIDs {
		if cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil && strings.Contains(string(cmdline), lab.Dir) {
			left = append(left, fmt.Sprintf("%s (pid %d)", what, pid))
		}
	}
	if len(left) > 0 {
		l.t.Errorf("left after make lab-down: %s", strings.Join(left, ", "))
	}
}

var spaceRun = regexp.MustCompile(`  +`)

// labCommand runs one of the lab's commands in the repository, as root,
// and compares its output, the lab's name put back, with the guide's.
func (r *guideRun) labCommand(s guideStep, args []string) {
	t, l := r.t, r.lab
	if !l.allowed(args) {
		t.Fatalf("guide line %d: sudo %s is not a command of the lab's the guide test runs", s.line, strings.Join(args, " "))
	}
	if args[0] == "make" && args[1] == "lab" && !l.up {
		l.up = true
		t.Cleanup(l.down)
	}
	cmd := exec.CommandContext(t.Context(), args[0], args[1:]...)
	cmd.Dir, cmd.Env = l.root, l.env()
	out, _ := cmd.CombinedOutput() // as in command: the output says what happened
	// The lab tells make which lab to remove unless it is the default.
	got := strings.ReplaceAll(strings.TrimRight(string(out), "\n"), " LAB="+l.name, "")
	got = strings.ReplaceAll(got, l.name, guideLabName)
	var gotLines, want []string
	if got != "" {
		for _, line := range strings.Split(got, "\n") {
			gotLines = append(gotLines, spaceRun.ReplaceAllString(strings.TrimRight(line, " "), " "))
		}
	}
	for _, line := range s.want {
		want = append(want, spaceRun.ReplaceAllString(line, " "))
	}
	if err := r.matchLines(want, gotLines); err != nil {
		t.Errorf("guide line %d: $ %s\n%v\n--- the guide says:\n%s\n--- the command printed:\n%s", s.line, s.command, err,
			strings.Join(s.want, "\n"), got)
	}
}
