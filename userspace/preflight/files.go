package preflight

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/blocknat/blocknat/loader"
	"github.com/blocknat/blocknat/userspace/config"
)

// existingAncestor is path itself or its nearest ancestor that exists,
// and whether that is path.
func existingAncestor(path string) (string, bool, error) {
	for p := filepath.Clean(path); ; p = filepath.Dir(p) {
		_, err := os.Stat(p)
		if err == nil {
			return p, p == filepath.Clean(path), nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return p, false, err
		}
		if p == "/" {
			return p, false, err
		}
	}
}

// onBPFFS says whether dir, or its nearest existing ancestor, is on a
// bpffs in this mount namespace.
func onBPFFS(dir string) bool {
	at, _, err := existingAncestor(dir)
	if err != nil {
		return false
	}
	var st unix.Statfs_t
	return unix.Statfs(at, &st) == nil && st.Type == unix.BPF_FS_MAGIC
}

// checkBPFFS: pins need a bpffs that is there, or one the agent may
// mount, and no other agent may hold the data plane under bpffs_dir.
func checkBPFFS(name, dir string) []Finding {
	at, _, err := existingAncestor(dir)
	if err != nil {
		return []Finding{refuse(name, "cannot be read (%v): run blocknatd as root", err)}
	}
	var st unix.Statfs_t
	if err := unix.Statfs(at, &st); err != nil {
		return []Finding{refuse(name, "cannot be read: statfs %s: %v; run blocknatd as root", at, err)}
	}
	if st.Type != unix.BPF_FS_MAGIC {
		set, err := effectiveCaps()
		if err == nil && hasCap(set, unix.CAP_SYS_ADMIN) {
			return []Finding{pass(name, "no bpffs mounted there yet; the agent mounts one at start (CAP_SYS_ADMIN)")}
		}
		return []Finding{refuse(name, "has no bpffs mounted, and without CAP_SYS_ADMIN the agent cannot mount one: "+
			"mount -t bpf bpf /sys/fs/bpf (systemd does at boot), or set bpffs_dir under a bpffs that is mounted")}
	}
	if pid, ok := procLocksHolder(dir); ok {
		who := process(pid)
		if owner, err := loader.ReadOwner(dir); err == nil && owner.PID == pid {
			who = "another blocknatd (" + owner.String() + ")"
		}
		return []Finding{refuse(name, "is held by %s: one data plane has one agent; "+
			"stop that agent, or give this one its own bpffs_dir and interfaces", who)}
	}
	return []Finding{pass(name, "on a bpffs")}
}

// checkStateDir: state_dir exists or can be created, is writable, and no
// other agent has its record store open.
func checkStateDir(name string, cfg *config.Config) []Finding {
	dir := cfg.StateDir
	at, exists, err := existingAncestor(dir)
	if err != nil {
		return []Finding{refuse(name, "cannot be read (%v): run blocknatd as root", err)}
	}
	if fi, err := os.Stat(at); err == nil && !fi.IsDir() {
		return []Finding{refuse(name, "is not a directory (%s): remove it, or set state_dir elsewhere", at)}
	}
	if err := unix.Faccessat(unix.AT_FDCWD, at, unix.W_OK|unix.X_OK, unix.AT_EACCESS); err != nil {
		what := "is not writable"
		if !exists {
			what = "cannot be created: " + at + " is not writable"
		}
		switch {
		case errors.Is(err, unix.EROFS):
			return []Finding{refuse(name, "%s (read-only file system): under the unit's ProtectSystem=strict a state_dir "+
				"other than /var/lib/blocknat needs a drop-in with ReadWritePaths=%s (see the operator guide, The systemd unit)", what, dir)}
		default:
			return []Finding{refuse(name, "%s by uid %d (%v): run blocknatd as root, or set state_dir to a directory it may write",
				what, os.Geteuid(), err)}
		}
	}
	if !exists {
		return []Finding{pass(name, "does not exist yet; the agent creates it, owner-only")}
	}
	if holder, ok := StoreHolder(dir); ok {
		return []Finding{refuse(name, "is in use by %s: stop that agent (systemctl stop blocknatd, or kill its pid), "+
			"or give this agent a state_dir of its own", holder)}
	}
	return []Finding{pass(name, "writable, not in use")}
}

// checkSocket: nobody else serves on api.socket, and every uid the roles
// name can reach it: search permission on each directory above it.
func checkSocket(name string, cfg *config.Config) []Finding {
	path := cfg.API.Socket
	if fi, err := os.Lstat(path); err == nil && fi.Mode().Type() == fs.ModeSocket {
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return []Finding{refuse(name, "is served by another process already (another blocknatd?): stop it, or give this agent its own api.socket")}
		}
	}
	dir := filepath.Dir(path)
	if within(dir, cfg.StateDir) {
		return []Finding{warn(name, "lies inside state_dir %s, which is owner-only, so no role's uid can reach it: "+
			"put api.socket outside state_dir", cfg.StateDir)}
	}
	var out []Finding
	for _, uid := range roleUIDs(cfg) {
		if blocked := unsearchable(dir, uid); blocked != "" {
			out = append(out, warn(name, "is out of reach of uid %d, which a role names: %s lacks search permission for it; "+
				"chmod o+x %s (or give the uid's group g+x); under systemd, RuntimeDirectoryMode=0755 for the default /run/blocknat",
				uid, blocked, blocked))
		}
	}
	if len(out) > 0 {
		return out
	}
	if _, exists, _ := existingAncestor(dir); !exists {
		return []Finding{pass(name, "its directory does not exist yet; the agent creates it 0755 so that the roles' uids reach it")}
	}
	return []Finding{pass(name, "its directory is reachable by every role's uid")}
}

// roleUIDs are the uids the roles name, but root, which needs no search
// permission.
func roleUIDs(cfg *config.Config) []uint32 {
	var out []uint32
	for _, m := range []config.Members{cfg.Roles.Investigator, cfg.Roles.Auditor, cfg.Roles.Admin, cfg.Roles.DHCP} {
		for _, uid := range m.UIDs {
			if uid != 0 && !slices.Contains(out, uid) {
				out = append(out, uid)
			}
		}
	}
	slices.Sort(out)
	return out
}

// unsearchable is the first existing directory from / down to dir that
// uid may not search, or "". A directory that does not exist yet is the
// agent's to create, 0755.
func unsearchable(dir string, uid uint32) string {
	groups := userGroups(uid)
	var parts []string
	for p := filepath.Clean(dir); ; p = filepath.Dir(p) {
		parts = append(parts, p)
		if p == "/" {
			break
		}
	}
	slices.Reverse(parts)
	for _, p := range parts {
		var st unix.Stat_t
		if err := unix.Stat(p, &st); err != nil {
			return ""
		}
		mode := st.Mode
		var bit uint32
		switch {
		case st.Uid == uid:
			bit = unix.S_IXUSR
		case slices.Contains(groups, st.Gid):
			bit = unix.S_IXGRP
		default:
			bit = unix.S_IXOTH
		}
		if mode&bit == 0 {
			return p
		}
	}
	return ""
}

// userGroups are uid's primary and supplementary groups, as the user
// database names them; none for a uid it does not know.
func userGroups(uid uint32) []uint32 {
	u, err := user.LookupId(strconv.FormatUint(uint64(uid), 10))
	if err != nil {
		return nil
	}
	ids, err := u.GroupIds()
	if err != nil {
		ids = []string{u.Gid}
	}
	var out []uint32
	for _, id := range ids {
		if n, err := strconv.ParseUint(id, 10, 32); err == nil {
			out = append(out, uint32(n))
		}
	}
	return out
}

// within says whether path is dir or lies under it.
func within(path, dir string) bool {
	rel, err := filepath.Rel(filepath.Clean(dir), filepath.Clean(path))
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}

// StoreHolder names the process that has the record store under
// stateDir open: Pebble holds a POSIX lock on its LOCK file while it does.
func StoreHolder(stateDir string) (string, bool) {
	return posixLockHolder(filepath.Join(stateDir, "records", "LOCK"))
}

// posixLockHolder names the process holding a POSIX write lock on path,
// as Pebble takes on its LOCK file, without taking it: F_GETLK only asks.
func posixLockHolder(path string) (string, bool) {
	f, err := os.Open(path)
	if err != nil {
		return "", false
	}
	defer f.Close()
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0}
	if err := unix.FcntlFlock(f.Fd(), unix.F_GETLK, &lk); err != nil || lk.Type == unix.F_UNLCK {
		return "", false
	}
	if lk.Pid > 0 {
		return process(int(lk.Pid)), true
	}
	// An open-file-description lock has no pid; /proc/locks has it.
	if pid, ok := procLocksHolder(path); ok {
		return process(pid), true
	}
	return "another process", true
}

// procLocksHolder is the pid holding a lock on path's inode, from
// /proc/locks: a flock (an agent's on bpffs_dir) has no query of its own,
// and trying the lock could refuse an agent starting at that moment. A
// pid of 0 means the holder is not in this pid namespace.
func procLocksHolder(path string) (int, bool) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, false
	}
	f, err := os.Open("/proc/locks")
	if err != nil {
		return 0, false
	}
	defer f.Close()
	want := fmt.Sprintf("%02x:%02x:%d", unix.Major(st.Dev), unix.Minor(st.Dev), st.Ino)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// "1: FLOCK  ADVISORY  WRITE 1234 00:1f:5678 0 EOF"; a waiter's
		// line has "->" after the number.
		fields := strings.Fields(sc.Text())
		if len(fields) < 6 || fields[1] == "->" || !sameInode(fields[5], want) {
			continue
		}
		pid, err := strconv.Atoi(fields[4])
		if err != nil || pid < 0 {
			pid = 0
		}
		return pid, true
	}
	return 0, false
}

// sameInode compares /proc/locks's "maj:min:ino", whose hex digits are
// not always zero-padded alike.
func sameInode(a, b string) bool {
	pa, pb := strings.Split(a, ":"), strings.Split(b, ":")
	if len(pa) != 3 || len(pb) != 3 {
		return false
	}
	for i := range 3 {
		base := 16
		if i == 2 {
			base = 10
		}
		x, err1 := strconv.ParseUint(pa[i], base, 64)
		y, err2 := strconv.ParseUint(pb[i], base, 64)
		if err1 != nil || err2 != nil || x != y {
			return false
		}
	}
	return true
}

// process names pid with its command, when /proc shows it.
func process(pid int) string {
	if pid <= 0 {
		return "a process in another pid namespace"
	}
	comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if err != nil {
		return fmt.Sprintf("a process (pid %d)", pid)
	}
	return fmt.Sprintf("%s (pid %d)", strings.TrimSpace(string(comm)), pid)
}
