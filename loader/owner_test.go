package loader

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestOwnerRefusesSecondClaimNamingTheFirst: while one agent holds a pin
// directory, a claim by another is refused with the holder's pid,
// state_dir and configuration; once released, the other gets it.
func TestOwnerRefusesSecondClaimNamingTheFirst(t *testing.T) {
	requirePrivileged(t)
	dir := mountTestBPFFS(t) + "/blocknat"
	a := OwnerInfo{PID: os.Getpid(), Started: time.Now(), StateDir: "/var/lib/blocknat-a", Config: "/etc/blocknat/a.yaml"}
	held, err := ClaimDataPlane(dir, a)
	if err != nil {
		t.Fatal(err)
	}
	_, err = ClaimDataPlane(dir, OwnerInfo{PID: os.Getpid(), StateDir: "/var/lib/blocknat-b"})
	var he *HeldError
	if !errors.As(err, &he) {
		t.Fatalf("second claim: %v, want a *HeldError", err)
	}
	if he.Holder.PID != a.PID || he.Holder.StateDir != a.StateDir || he.Holder.Config != a.Config {
		t.Errorf("holder %+v, want %+v", he.Holder, a)
	}
	for _, want := range []string{fmt.Sprintf("pid %d", a.PID), "state_dir /var/lib/blocknat-a", "config /etc/blocknat/a.yaml", "one data plane has one agent"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q does not say %q", err, want)
		}
	}

	if err := held.Release(); err != nil {
		t.Fatal(err)
	}
	b, err := ClaimDataPlane(dir, OwnerInfo{PID: os.Getpid(), StateDir: "/var/lib/blocknat-b"})
	if err != nil {
		t.Fatalf("claim after release: %v", err)
	}
	defer b.Release()
	if got, err := ReadOwner(dir); err != nil || got.StateDir != "/var/lib/blocknat-b" {
		t.Errorf("owner after the second claim: %+v, %v", got, err)
	}
}

// TestOwnerLockDiesWithHolder: a holder killed with SIGKILL leaves no
// claim behind, so a restarted agent is not refused by its dead self.
func TestOwnerLockDiesWithHolder(t *testing.T) {
	requirePrivileged(t)
	if _, err := exec.LookPath("flock"); err != nil {
		t.Fatalf("needs flock (util-linux): %v", err)
	}
	dir := mountTestBPFFS(t) + "/blocknat"
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	holder := exec.Command("flock", "--exclusive", "--no-fork", dir, "sleep", "60")
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	defer holder.Process.Kill()
	deadline := time.Now().Add(5 * time.Second)
	for {
		o, err := ClaimDataPlane(dir, OwnerInfo{PID: os.Getpid()})
		if err == nil {
			// flock(1) has not taken the lock yet: give it back, wait.
			o.Release()
			if time.Now().After(deadline) {
				t.Fatal("flock did not take the lock within 5s")
			}
			time.Sleep(20 * time.Millisecond)
			continue
		}
		var he *HeldError
		if !errors.As(err, &he) {
			t.Fatal(err)
		}
		break
	}
	holder.Process.Kill()
	holder.Wait()
	o, err := ClaimDataPlane(dir, OwnerInfo{PID: os.Getpid()})
	if err != nil {
		t.Fatalf("claim after the holder was killed: %v", err)
	}
	o.Release()
}
