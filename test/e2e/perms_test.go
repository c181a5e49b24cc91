package e2e

import (
	"bytes"
	"io/fs"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/blocknat/blocknat/test/harness"
	"github.com/blocknat/blocknat/test/netns"
)

// nobody is the unprivileged uid the tests read as.
var nobody = &syscall.Credential{Uid: 65534, Gid: 65534}

// asNobody runs argv as uid 65534 and returns what it printed.
func asNobody(t *testing.T, argv ...string) (stdout, stderr []byte, err error) {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: nobody}
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.Bytes(), e.Bytes(), err
}

// TestStateOwnerOnly: started with umask 000, the agent still keeps
// state_dir, the record store and the audit log owner-only, and after
// traffic and lookups an unprivileged uid can read none of it, not even
// the names of the files.
func TestStateOwnerOnly(t *testing.T) {
	e := prepareEnv(t, "bn-e2eperm", "")
	d := e.startDaemon(t, "sh", "-c", "umask 000 && exec "+bins.Blocknatd+" --config "+e.cfgPath)
	httpSrv, err := netns.StartHTTPServer(e.topo.Internet, netip.AddrPortFrom(e.topo.ServerAddrs[0], 8080))
	if err != nil {
		t.Fatal(err)
	}
	defer httpSrv.Close()
	for _, sub := range e.topo.Subscribers {
		if out, err := sub.NS.Exec(t.Context(), "curl", "--noproxy", "*", "-sS", "-m", "5", "http://"+httpSrv.Addr.String()+"/"); err != nil {
			t.Fatalf("curl: %v %s", err, out)
		}
	}
	// A lookup writes the audit log; status reads through the API.
	if out, err := runCmd(t.Context(), bins.Blocknat, "status", "--socket", harness.SocketPath(e.stateDir)); err != nil {
		t.Fatalf("blocknat status: %v\n%s", err, out)
	}
	time.Sleep(300 * time.Millisecond)
	checkUnreadable(t, e.stateDir)
	d.stop(t)
	// Closing the store writes files of its own.
	checkUnreadable(t, e.stateDir)
	if t.Failed() {
		t.Logf("blocknatd log:\n%s", d.Log())
	}
}

// checkUnreadable asserts that every directory under dir is 0700 and
// every file 0600 at most, and that uid 65534 reads zero bytes of each
// file and cannot list dir.
func checkUnreadable(t *testing.T, dir string) {
	t.Helper()
	var files []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if fi.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s is %v: open to group or others", path, fi.Mode().Perm())
		}
		if d.Type().IsRegular() {
			files = append(files, path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 3 {
		t.Fatalf("state_dir holds %d files: the check proves little", len(files))
	}
	for _, f := range files {
		out, errOut, err := asNobody(t, "cat", f)
		if err == nil || len(out) != 0 {
			t.Errorf("uid 65534 read %d bytes of %s (err %v)", len(out), f, err)
		} else if !strings.Contains(string(errOut), "Permission denied") {
			t.Errorf("uid 65534 reading %s: %s, want permission denied", f, errOut)
		}
	}
	out, _, _ := asNobody(t, "find", dir)
	if names := strings.Fields(string(out)); len(names) > 1 {
		t.Errorf("uid 65534 listed %d paths under %s", len(names)-1, dir)
	}
	t.Logf("%d files under state_dir, none readable by uid 65534", len(files))
}

// TestStartRefusedStateReadable: an existing state_dir, or a records
// directory inside it, that others may read refuses the start, naming the
// path and the fix, and nothing is attached.
func TestStartRefusedStateReadable(t *testing.T) {
	e := prepareEnv(t, "bn-e2epref", "")
	records := filepath.Join(e.stateDir, "records")
	if err := os.MkdirAll(records, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ open, private string }{{e.stateDir, ""}, {records, e.stateDir}} {
		if tc.private != "" {
			if err := os.Chmod(tc.private, 0o700); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.Chmod(tc.open, 0o755); err != nil {
			t.Fatal(err)
		}
		out, err := e.topo.Router.Exec(t.Context(), bins.Blocknatd, "--config", e.cfgPath)
		if err == nil {
			t.Fatalf("blocknatd started with %s 0755:\n%s", tc.open, out)
		}
		if !strings.Contains(string(out), tc.open+" is") || !strings.Contains(string(out), "chmod -R go-rwx "+tc.open) {
			t.Errorf("refusal does not name %s and the fix:\n%s", tc.open, out)
		}
		if harness.XDPAttached(t.Context(), e.topo.Router, e.ifaces) {
			t.Errorf("XDP attached although the start was refused")
		}
	}
}
