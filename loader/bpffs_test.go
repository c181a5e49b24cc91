package loader

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestBPFFSVanishErrorNamesCauseAndFix: the refusal says which directory,
// why its bpffs would not outlive the agent, what that would do to the
// traffic, and what the operator can do.
func TestBPFFSVanishErrorNamesCauseAndFix(t *testing.T) {
	err := error(&BPFFSVanishError{Dir: "/srv/pins", Cause: "it lies outside /sys/fs/bpf", Fix: "mount -t bpf bpf /srv/pins"})
	for _, want := range []string{"bpffs_dir /srv/pins", "it lies outside /sys/fs/bpf", "vanish when blocknatd exits", "detach the XDP programs", "mount -t bpf bpf /srv/pins"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q does not say %q", err, want)
		}
	}
	var ve *BPFFSVanishError
	if !errors.As(err, &ve) {
		t.Error("not a *BPFFSVanishError")
	}
}

// bpffsHelperEnv makes the test binary, re-run by runInPrivateMountNS,
// run one PrepareBPFFS in that namespace instead of the tests.
const bpffsHelperEnv = "BLOCKNAT_TEST_BPFFS_HELPER"

func TestMain(m *testing.M) {
	if spec := os.Getenv(bpffsHelperEnv); spec != "" {
		os.Exit(bpffsHelper(spec))
	}
	os.Exit(m.Run())
}

// bpffsHelper is "HIDE|DIR": it unmounts HIDE in its own mount namespace
// (as ip netns exec hides the host's /sys/fs/bpf) and prepares DIR.
func bpffsHelper(spec string) int {
	hide, dir, _ := strings.Cut(spec, "|")
	if hide != "" {
		if err := unix.Unmount(hide, unix.MNT_DETACH); err != nil {
			os.Stdout.WriteString("unmount " + hide + ": " + err.Error() + "\n")
			return 3
		}
	}
	setup, err := PrepareBPFFS(dir)
	if err != nil {
		os.Stdout.WriteString("refused: " + err.Error() + "\n")
		return 1
	}
	os.Stdout.WriteString("shared_at=" + setup.SharedAt + " mounted_at=" + setup.MountedAt + " host_mounted_at=" + setup.HostMountedAt + "\n")
	if err := os.Mkdir(filepath.Join(dir, "from-private-ns"), 0o700); err != nil {
		os.Stdout.WriteString("mkdir: " + err.Error() + "\n")
		return 4
	}
	return 0
}

// runInPrivateMountNS runs the helper in a mount namespace of its own,
// as `ip netns exec` starts the agent.
func runInPrivateMountNS(t *testing.T, hide, dir string) (string, error) {
	t.Helper()
	requirePrivileged(t)
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Fatalf("needs unshare (util-linux): %v", err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(t.Context(), "unshare", "--mount", "--propagation", "private", self, "-test.run=^$")
	cmd.Env = append(os.Environ(), bpffsHelperEnv+"="+hide+"|"+dir)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestBPFFSRefusedWhenItWouldVanish: in a private mount namespace, a
// bpffs_dir outside /sys/fs/bpf that is on no bpffs, here or in the
// namespace it was started from, is refused with the cause and the fix,
// and nothing is mounted.
func TestBPFFSRefusedWhenItWouldVanish(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pins")
	out, err := runInPrivateMountNS(t, "", dir)
	if err == nil {
		t.Fatalf("PrepareBPFFS(%s) in a private mount namespace succeeded:\n%s", dir, out)
	}
	for _, want := range []string{"refused: bpffs_dir " + dir, "outside /sys/fs/bpf", "mount namespace of its own",
		"would vanish when blocknatd exits", "mount -t bpf bpf " + dir, "bpffs_dir under /sys/fs/bpf"} {
		if !strings.Contains(out, want) {
			t.Errorf("refusal does not say %q:\n%s", want, out)
		}
	}
	if on, _ := ancestorIsBPFFS(dir); on {
		t.Errorf("a refused PrepareBPFFS left a bpffs at %s", dir)
	}
}

// TestBPFFSSharedFromHostMountNamespace: a process in a private mount
// namespace that cannot see the bpffs of the namespace it came from
// attaches that very bpffs instead of mounting its own, so what it pins
// lives on after it exits.
func TestBPFFSSharedFromHostMountNamespace(t *testing.T) {
	root := mountTestBPFFS(t)
	dir := filepath.Join(root, "blocknat")
	out, err := runInPrivateMountNS(t, root, dir)
	if err != nil {
		t.Fatalf("PrepareBPFFS in a private mount namespace: %v\n%s", err, out)
	}
	if !strings.Contains(out, "shared_at="+root+" ") {
		t.Errorf("want the host's bpffs at %s shared:\n%s", root, out)
	}
	// The helper has exited and its namespace is gone; its directory is
	// on the host's bpffs.
	if _, err := os.Stat(filepath.Join(dir, "from-private-ns")); err != nil {
		t.Errorf("what the private namespace made under %s is not on the host's bpffs: %v", dir, err)
	}
}
