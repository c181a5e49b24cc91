package loader

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

const defaultBPFFS = "/sys/fs/bpf"

// EnsureBPFFS makes dir usable for pinning. `ip netns exec` remounts /sys
// without bpffs, and minimal systems never mount it, so the agent mounts
// one itself: at /sys/fs/bpf when dir lies beneath it, else at dir.
func EnsureBPFFS(dir string) error {
	if !filepath.IsAbs(dir) {
		return fmt.Errorf("bpffs_dir %q: not an absolute path", dir)
	}
	dir = filepath.Clean(dir)
	onBPFFS, err := ancestorIsBPFFS(dir)
	if err != nil {
		return err
	}
	if !onBPFFS {
		mountPoint := dir
		if dir == defaultBPFFS || strings.HasPrefix(dir, defaultBPFFS+"/") {
			mountPoint = defaultBPFFS
		}
		if err := os.MkdirAll(mountPoint, 0o700); err != nil {
			return fmt.Errorf("bpffs_dir %s: create mount point: %w", dir, err)
		}
		if err := unix.Mount("bpf", mountPoint, "bpf", 0, "mode=0700"); err != nil {
			return fmt.Errorf("bpffs_dir %s: mount bpffs on %s: %w", dir, mountPoint, err)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("bpffs_dir %s: %w", dir, err)
	}
	return nil
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
