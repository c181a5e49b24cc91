package harness

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// MountSmallFS mounts a tmpfs of size bytes on dir (created if missing), a
// real filesystem that fills up: the tests of a full disk write until the
// kernel answers ENOSPC rather than injecting an error. The returned
// function unmounts it.
func MountSmallFS(dir string, size uint64) (func() error, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, fmt.Sprintf("size=%d,mode=0700", size)); err != nil {
		return nil, fmt.Errorf("mount a %d-byte tmpfs on %s: %w", size, dir, err)
	}
	return func() error {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			return fmt.Errorf("unmount %s: %w", dir, err)
		}
		return nil
	}, nil
}

// Fill writes the file name under dir until the filesystem is full,
// leaving leave bytes free (0: none at all), and returns how much it wrote.
// Deleting the file frees the space again.
func Fill(dir, name string, leave uint64) (uint64, error) {
	f, err := os.OpenFile(filepath.Join(dir, name), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var written uint64
	chunk := make([]byte, 64<<10)
	for {
		free, err := FreeBytes(dir)
		if err != nil {
			return written, err
		}
		if free <= leave {
			return written, f.Sync()
		}
		n := min(uint64(len(chunk)), free-leave)
		m, err := f.Write(chunk[:n])
		written += uint64(m)
		if errors.Is(err, unix.ENOSPC) {
			return written, nil
		}
		if err != nil {
			return written, err
		}
	}
}

// FreeBytes is what statfs says an unprivileged writer may still use on
// dir's filesystem, as the agent reads it.
func FreeBytes(dir string) (uint64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return st.Bavail * uint64(st.Bsize), nil
}
