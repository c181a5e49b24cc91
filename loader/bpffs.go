package loader

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

const defaultBPFFS = "/sys/fs/bpf"

// initMountNSInode is the inode of the kernel's initial mount namespace
// (PROC_MNT_INIT_INO), which is the host's whatever else can be read.
const initMountNSInode = 0xEFFFFFF8

// BPFFSSetup says what PrepareBPFFS did to make bpffs_dir usable, so the
// agent can log it. The zero value means bpffs_dir was already on a bpffs.
type BPFFSSetup struct {
	// MountedAt is where a new bpffs was mounted in the agent's own mount
	// namespace, which here is the host's.
	MountedAt string
	// HostMountedAt is where a new bpffs was mounted in the host's mount
	// namespace, on the agent's behalf.
	HostMountedAt string
	// SharedAt is where the host's bpffs was attached into the agent's
	// private mount namespace.
	SharedAt string
	// HostPID is the process whose mount namespace was taken for the
	// host's (PID 1 when it can be read) when SharedAt is set.
	HostPID int
}

// BPFFSVanishError refuses a bpffs_dir whose bpffs would die with the
// agent. Pins live as long as their bpffs superblock, and a bpffs mounted
// in a mount namespace that only the agent holds (`ip netns exec` gives
// it one, with a fresh /sys) is unmounted when the agent exits: the links
// go, and with them the XDP programs, so a crash would let subscriber
// traffic leave untranslated.
type BPFFSVanishError struct {
	Dir   string
	Cause string
	Fix   string
}

func (e *BPFFSVanishError) Error() string {
	return fmt.Sprintf("bpffs_dir %s: %s; a bpffs mounted there would vanish when blocknatd exits and detach the XDP programs with it; %s",
		e.Dir, e.Cause, e.Fix)
}

// EnsureBPFFS makes dir usable for pinning; see PrepareBPFFS.
func EnsureBPFFS(dir string) error {
	_, err := PrepareBPFFS(dir)
	return err
}

// PrepareBPFFS makes dir usable for pinning, on a bpffs that outlives the
// agent:
//
//   - dir already on a bpffs: nothing to do.
//   - the agent runs in the host's mount namespace: it mounts a bpffs at
//     /sys/fs/bpf when dir lies beneath it, else at dir (minimal systems
//     never mount one).
//   - the agent runs in a mount namespace of its own (`ip netns exec`
//     remounts /sys, so the host's /sys/fs/bpf is not visible there): it
//     enters the host's mount namespace on a thread of its own, mounts a
//     bpffs at /sys/fs/bpf there if the host has none, and attaches a
//     clone of the host's mount over its own, so the pins live in the
//     host's superblock. When that cannot be done it refuses with a
//     *BPFFSVanishError naming the cause and the fix.
func PrepareBPFFS(dir string) (BPFFSSetup, error) {
	if !filepath.IsAbs(dir) {
		return BPFFSSetup{}, fmt.Errorf("bpffs_dir %q: not an absolute path", dir)
	}
	dir = filepath.Clean(dir)
	onBPFFS, err := ancestorIsBPFFS(dir)
	if err != nil {
		return BPFFSSetup{}, err
	}
	var setup BPFFSSetup
	if !onBPFFS {
		if setup, err = mountBPFFS(dir); err != nil {
			return setup, err
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return setup, fmt.Errorf("bpffs_dir %s: %w", dir, err)
	}
	return setup, nil
}

func underDefault(dir string) bool {
	return dir == defaultBPFFS || strings.HasPrefix(dir, defaultBPFFS+"/")
}

func mountBPFFS(dir string) (BPFFSSetup, error) {
	mountPoint := dir
	if underDefault(dir) {
		mountPoint = defaultBPFFS
	}
	host, err := findHostMountNS()
	if err != nil {
		return BPFFSSetup{}, &BPFFSVanishError{Dir: dir, Cause: err.Error(), Fix: fixStartOnHost()}
	}
	if host.same {
		if err := os.MkdirAll(mountPoint, 0o700); err != nil {
			return BPFFSSetup{}, fmt.Errorf("bpffs_dir %s: create mount point: %w", dir, err)
		}
		if err := unix.Mount("bpf", mountPoint, "bpf", 0, "mode=0700"); err != nil {
			return BPFFSSetup{}, fmt.Errorf("bpffs_dir %s: mount bpffs on %s: %w", dir, mountPoint, err)
		}
		return BPFFSSetup{MountedAt: mountPoint}, nil
	}
	return shareHostBPFFS(dir, host)
}

// shareHostBPFFS attaches the host's bpffs that holds dir into this mount
// namespace, mounting one on the host at /sys/fs/bpf first if need be.
func shareHostBPFFS(dir string, host hostMountNS) (BPFFSSetup, error) {
	setup := BPFFSSetup{HostPID: host.pid}
	var tree int
	var refusal error
	err := inMountNS(host.path, func() error {
		onBPFFS, err := ancestorIsBPFFS(dir)
		if err != nil {
			return err
		}
		root := ""
		switch {
		case onBPFFS:
			if root, err = bpffsMountRoot(dir); err != nil {
				return err
			}
		case underDefault(dir):
			if _, err := os.Stat(defaultBPFFS); err != nil {
				refusal = &BPFFSVanishError{Dir: dir,
					Cause: fmt.Sprintf("blocknatd runs in a mount namespace of its own with no bpffs at %s, and the host (the mount namespace of pid %d) has no %s to mount one on (%v)", defaultBPFFS, host.pid, defaultBPFFS, err),
					Fix:   fixStartOnHost()}
				return nil
			}
			if err := unix.Mount("bpf", defaultBPFFS, "bpf", 0, "mode=0700"); err != nil {
				refusal = &BPFFSVanishError{Dir: dir,
					Cause: fmt.Sprintf("blocknatd runs in a mount namespace of its own with no bpffs at %s, and mounting one in the host's (the mount namespace of pid %d) failed: %v", defaultBPFFS, host.pid, err),
					Fix:   "mount one on the host first (mount -t bpf bpf " + defaultBPFFS + "), or " + fixStartOnHost()}
				return nil
			}
			root, setup.HostMountedAt = defaultBPFFS, defaultBPFFS
		default:
			refusal = &BPFFSVanishError{Dir: dir,
				Cause: "it lies outside " + defaultBPFFS + " and is on no bpffs, here or on the host, and blocknatd runs in a mount namespace of its own (as under ip netns exec)",
				Fix:   "mount a bpffs there on the host before starting (mount -t bpf bpf " + dir + "), or use a bpffs_dir under " + defaultBPFFS}
			return nil
		}
		// Only a thread inside the host's mount namespace may clone one of
		// its mounts; the clone is a detached tree this one can attach.
		if tree, err = unix.OpenTree(unix.AT_FDCWD, root, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC); err != nil {
			return fmt.Errorf("clone the host's bpffs at %s: %w", root, err)
		}
		setup.SharedAt = root
		return nil
	})
	if refusal != nil {
		return BPFFSSetup{}, refusal
	}
	if err != nil {
		return BPFFSSetup{}, &BPFFSVanishError{Dir: dir,
			Cause: fmt.Sprintf("blocknatd runs in a mount namespace of its own with no bpffs there, and cannot use the host's (the mount namespace of pid %d): %v", host.pid, err),
			Fix:   fixStartOnHost()}
	}
	defer unix.Close(tree)
	if err := os.MkdirAll(setup.SharedAt, 0o700); err != nil {
		return BPFFSSetup{}, fmt.Errorf("bpffs_dir %s: create mount point: %w", dir, err)
	}
	if err := unix.MoveMount(tree, "", unix.AT_FDCWD, setup.SharedAt, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return BPFFSSetup{}, &BPFFSVanishError{Dir: dir,
			Cause: fmt.Sprintf("attaching the host's bpffs at %s into blocknatd's own mount namespace failed: %v", setup.SharedAt, err),
			Fix:   fixStartOnHost()}
	}
	return setup, nil
}

func fixStartOnHost() string {
	return "start blocknatd in the host's mount namespace and enter only the network namespace " +
		"(nsenter --net=/run/netns/NAME blocknatd ..., not ip netns exec), or mount a bpffs on the host outside /sys " +
		"(mount -t bpf bpf /run/blocknat/bpf) and set bpffs_dir beneath it"
}

// hostMountNS is the mount namespace pins must live in to outlive the agent.
type hostMountNS struct {
	pid  int    // whose namespace it is
	path string // /proc/<pid>/ns/mnt
	same bool   // the agent runs in it
}

// findHostMountNS picks PID 1's mount namespace, or, when that cannot be
// read (a process without CAP_SYS_PTRACE over it), the one of the oldest
// ancestor that can: the namespace `ip netns exec` was started from.
func findHostMountNS() (hostMountNS, error) {
	var own unix.Stat_t
	if err := unix.Stat("/proc/self/ns/mnt", &own); err != nil {
		return hostMountNS{}, fmt.Errorf("read own mount namespace: %w", err)
	}
	candidates := append([]int{1}, reversed(ancestors(os.Getpid()))...)
	var firstErr error
	for _, pid := range candidates {
		if pid == os.Getpid() {
			return hostMountNS{pid: pid, path: "/proc/self/ns/mnt", same: true}, nil
		}
		path := "/proc/" + strconv.Itoa(pid) + "/ns/mnt"
		var st unix.Stat_t
		if err := unix.Stat(path, &st); err != nil {
			if firstErr == nil {
				firstErr = fmt.Errorf("read the mount namespace of pid %d: %w", pid, err)
			}
			continue
		}
		return hostMountNS{pid: pid, path: path, same: st.Dev == own.Dev && st.Ino == own.Ino}, nil
	}
	if own.Ino == initMountNSInode {
		return hostMountNS{pid: os.Getpid(), path: "/proc/self/ns/mnt", same: true}, nil
	}
	return hostMountNS{}, fmt.Errorf("cannot tell whether blocknatd runs in the host's mount namespace: %w", firstErr)
}

// ancestors lists pid's parent, its parent and so on, up to but without
// PID 1.
func ancestors(pid int) []int {
	var out []int
	for range 64 {
		ppid, err := parentPID(pid)
		if err != nil || ppid <= 1 {
			break
		}
		out = append(out, ppid)
		pid = ppid
	}
	return out
}

func parentPID(pid int) (int, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	// The command name in parentheses may hold anything; the fields after
	// its closing parenthesis are state, then ppid.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 2 {
		return 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	return strconv.Atoi(f[1])
}

func reversed(s []int) []int {
	out := make([]int, len(s))
	for i, v := range s {
		out[len(s)-1-i] = v
	}
	return out
}

// inMountNS runs fn on an OS thread of its own inside the mount namespace
// at nsPath. A multi-threaded process cannot enter another mount
// namespace, but a thread that stops sharing its file system attributes
// (CLONE_FS) can. The thread is never given back: it ends with its
// goroutine, so no other goroutine ever runs in the host's namespace.
func inMountNS(nsPath string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		errc <- func() error {
			ns, err := unix.Open(nsPath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				return fmt.Errorf("open %s: %w", nsPath, err)
			}
			defer unix.Close(ns)
			if err := unix.Unshare(unix.CLONE_FS); err != nil {
				return fmt.Errorf("unshare file system attributes: %w", err)
			}
			if err := unix.Setns(ns, unix.CLONE_NEWNS); err != nil {
				return fmt.Errorf("enter mount namespace %s: %w", nsPath, err)
			}
			return fn()
		}()
	}()
	return <-errc
}

// ancestorIsBPFFS reports whether the nearest existing ancestor of dir (or
// dir itself) is on a bpf filesystem.
func ancestorIsBPFFS(dir string) (bool, error) {
	for p := dir; ; p = filepath.Dir(p) {
		var st unix.Statfs_t
		err := unix.Statfs(p, &st)
		if err == nil {
			return st.Type == unix.BPF_FS_MAGIC, nil
		}
		if !errors.Is(err, unix.ENOENT) {
			return false, fmt.Errorf("bpffs_dir %s: statfs %s: %w", dir, p, err)
		}
		if p == "/" {
			return false, nil
		}
	}
}

// bpffsMountRoot is the root of the bpffs mount that holds dir's nearest
// existing ancestor: the highest ancestor on the same bpffs.
func bpffsMountRoot(dir string) (string, error) {
	p := dir
	var st unix.Stat_t
	for {
		if err := unix.Stat(p, &st); err == nil {
			break
		} else if !errors.Is(err, unix.ENOENT) || p == "/" {
			return "", fmt.Errorf("bpffs_dir %s: stat %s: %w", dir, p, err)
		}
		p = filepath.Dir(p)
	}
	for p != "/" {
		parent := filepath.Dir(p)
		var pst unix.Stat_t
		var fs unix.Statfs_t
		if unix.Stat(parent, &pst) != nil || pst.Dev != st.Dev || unix.Statfs(parent, &fs) != nil || fs.Type != unix.BPF_FS_MAGIC {
			return p, nil
		}
		p = parent
	}
	return p, nil
}

// AttachHostBPFFS makes the host's bpffs visible at dir when the caller
// runs in a mount namespace of its own where dir is on no bpffs (a
// command started under `ip netns exec`), and the host has one there. It
// never mounts a new bpffs: commands that only read or remove pins use it.
func AttachHostBPFFS(dir string) error {
	dir = filepath.Clean(dir)
	if on, err := ancestorIsBPFFS(dir); err != nil || on {
		return err
	}
	host, err := findHostMountNS()
	if err != nil || host.same {
		return nil // nothing else to look in
	}
	tree, root := -1, ""
	err = inMountNS(host.path, func() error {
		if on, err := ancestorIsBPFFS(dir); err != nil || !on {
			return err
		}
		if root, err = bpffsMountRoot(dir); err != nil {
			return err
		}
		if tree, err = unix.OpenTree(unix.AT_FDCWD, root, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC); err != nil {
			return fmt.Errorf("clone the host's bpffs at %s: %w", root, err)
		}
		return nil
	})
	if err != nil || tree < 0 {
		return err
	}
	defer unix.Close(tree)
	if err := os.MkdirAll(root, 0o700); err != nil {
		return fmt.Errorf("create mount point %s: %w", root, err)
	}
	if err := unix.MoveMount(tree, "", unix.AT_FDCWD, root, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("attach the host's bpffs at %s: %w", root, err)
	}
	return nil
}
