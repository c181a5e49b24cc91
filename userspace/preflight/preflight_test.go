package preflight

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/blocknat/blocknat/test/netns"
	"github.com/blocknat/blocknat/userspace/config"
)

// holdEnv makes the test binary a lock holder: "posix:PATH" or
// "flock:PATH". It takes the lock, says so on stdout and waits for stdin
// to close.
const holdEnv = "BLOCKNAT_PREFLIGHT_HOLD"

func TestMain(m *testing.M) {
	if spec := os.Getenv(holdEnv); spec != "" {
		os.Exit(hold(spec))
	}
	os.Exit(m.Run())
}

func hold(spec string) int {
	kind, path, _ := strings.Cut(spec, ":")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		fmt.Println(err)
		return 1
	}
	if kind == "posix" {
		err = unix.FcntlFlock(f.Fd(), unix.F_SETLK, &unix.Flock_t{Type: unix.F_WRLCK})
	} else {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
	}
	if err != nil {
		fmt.Println(err)
		return 1
	}
	fmt.Println("locked")
	bufio.NewReader(os.Stdin).ReadString('\n')
	return 0
}

// startHolder runs a process that holds a lock on path until the test ends.
func startHolder(t *testing.T, kind, path string) int {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), holdEnv+"="+kind+":"+path)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		cmd.Wait()
	})
	line, _ := bufio.NewReader(stdout).ReadString('\n')
	if strings.TrimSpace(line) != "locked" {
		t.Fatalf("holder: %q", line)
	}
	return cmd.Process.Pid
}

// TestStoreHolderNamesTheProcess: a process holding Pebble's kind of lock
// (POSIX, F_SETLK) on state_dir/records/LOCK is named by pid and command,
// without the check taking the lock.
func TestStoreHolderNamesTheProcess(t *testing.T) {
	dir := t.TempDir()
	if _, held := StoreHolder(dir); held {
		t.Fatal("a state_dir without a store is held")
	}
	lock := filepath.Join(dir, "records", "LOCK")
	if err := os.MkdirAll(filepath.Dir(lock), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(lock, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, held := StoreHolder(dir); held {
		t.Fatal("an unlocked LOCK file is held")
	}
	pid := startHolder(t, "posix", lock)
	comm := filepath.Base(os.Args[0])
	if len(comm) > 15 {
		comm = comm[:15] // the kernel's TASK_COMM_LEN
	}
	holder, held := StoreHolder(dir)
	if want := fmt.Sprintf("%s (pid %d)", comm, pid); !held || holder != want {
		t.Fatalf("StoreHolder = %q, %v; want %q", holder, held, want)
	}
	cfg := &config.Config{StateDir: dir}
	fs := checkStateDir("state_dir "+dir, cfg)
	if len(fs) != 1 || fs[0].Status != Fail || !fs[0].Refuses ||
		!strings.HasPrefix(fs[0].Problem(), fmt.Sprintf("state_dir %s is in use by %s (pid %d)", dir, comm, pid)) {
		t.Fatalf("checkStateDir = %+v", fs)
	}
}

// TestFlockHolderFromProcLocks: a flock, as an agent holds on bpffs_dir,
// is found in /proc/locks by inode.
func TestFlockHolderFromProcLocks(t *testing.T) {
	path := filepath.Join(t.TempDir(), "dir-lock")
	if _, held := procLocksHolder(path); held {
		t.Fatal("a missing file is held")
	}
	pid := startHolder(t, "flock", path)
	got, held := procLocksHolder(path)
	if !held || got != pid {
		t.Fatalf("procLocksHolder = %d, %v; want %d", got, held, pid)
	}
}

// TestSocketDirectoryOutOfReach: a role's uid that cannot search a
// directory above api.socket is named with the directory and the fix; a
// directory still to be made is the agent's, 0755.
func TestSocketDirectoryOutOfReach(t *testing.T) {
	if os.Geteuid() != 0 {
		netns.RequirePrivileged(t) // skips, or fails under BLOCKNAT_REQUIRE_PRIVILEGED=1
	}
	base := t.TempDir()
	// The test's own directories, the one above t.TempDir() included,
	// are made searchable so that only "locked" stands in the way.
	for _, d := range []string{filepath.Dir(base), base} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	locked := filepath.Join(base, "locked")
	if err := os.Mkdir(locked, 0o750); err != nil {
		t.Fatal(err)
	}
	cfg := &config.Config{StateDir: filepath.Join(base, "state")}
	cfg.Roles.Investigator.UIDs = []uint32{0, 65534}
	cfg.API.Socket = filepath.Join(locked, "api.sock")
	fs := checkSocket("api.socket "+cfg.API.Socket, cfg)
	if len(fs) != 1 || fs[0].Status != Fail || !strings.Contains(fs[0].Text, "uid 65534") || !strings.Contains(fs[0].Text, "chmod o+x "+locked) {
		t.Fatalf("checkSocket over a 0750 directory = %+v", fs)
	}
	cfg.API.Socket = filepath.Join(base, "new", "api.sock")
	if fs := checkSocket("api.socket", cfg); len(fs) != 1 || fs[0].Status != Pass {
		t.Fatalf("checkSocket in a directory still to be made = %+v", fs)
	}
	cfg.API.Socket = filepath.Join(cfg.StateDir, "api.sock")
	if fs := checkSocket("api.socket", cfg); len(fs) != 1 || fs[0].Status != Fail {
		t.Fatalf("checkSocket inside state_dir = %+v", fs)
	}
}

// TestOfflineLooksAtNothing: offline, every live check is listed as not
// checked, none as ok.
func TestOfflineLooksAtNothing(t *testing.T) {
	cfg, err := config.Parse(config.Default)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Inside.Interfaces = []string{"eth7"}
	off := Offline(cfg)
	if Failed(off) || len(off) != len(checks(cfg, Options{})) {
		t.Fatalf("Offline = %v", off)
	}
	for _, f := range off {
		if f.Status != NotChecked || !strings.Contains(f.String(), "not checked (offline") {
			t.Errorf("%q", f)
		}
	}
	if !strings.Contains(fmt.Sprint(off), "inside interface eth7: not checked (offline") {
		t.Errorf("eth7 is not listed as not checked: %v", off)
	}
}

func TestSameInode(t *testing.T) {
	for _, c := range []struct {
		a, b string
		same bool
	}{{"00:1f:123", "00:1f:123", true}, {"fd:01:77", "fd:1:77", true}, {"00:1f:123", "00:1f:124", false}, {"x", "00:1f:1", false}} {
		if got := sameInode(c.a, c.b); got != c.same {
			t.Errorf("sameInode(%q, %q) = %v", c.a, c.b, got)
		}
	}
}
