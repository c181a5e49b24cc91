package agent

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// privateUmask makes everything the agent creates owner-only (directories
// 0700, files 0600), whatever umask it was started with. The records and
// the audit log are read through the audited, role-checked API or not at
// all: a file another uid can open is a lookup nobody audited. The umask,
// rather than a mode at each call, also covers the files Pebble and the
// audit log create later on their own.
const privateUmask = 0o077

// ErrNotPrivate reports a file or directory of the agent's state that
// another uid could read or write.
var ErrNotPrivate = errors.New("readable or writable by group or others")

// keepPrivate sets the agent's umask, refuses a start when any part of the
// state it finds already open to others, and creates state_dir
// owner-only. The API socket's directory is the one thing that must stay
// reachable to other uids (roles decide who may ask), so a missing one is
// made 0755 explicitly, unless it lies inside state_dir.
func (a *Agent) keepPrivate() error {
	syscall.Umask(privateUmask)
	cfg := a.cfg
	if err := checkPrivate(cfg.StateDir, storePath(cfg), auditDir(cfg), cfg.AuditKeyPath()); err != nil {
		return err
	}
	if err := mkdirAllMode(cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("state_dir %s: %w", cfg.StateDir, err)
	}
	if sock := filepath.Dir(cfg.API.Socket); cfg.API.Socket != "" && !within(sock, cfg.StateDir) {
		if err := mkdirAllMode(sock, 0o755); err != nil {
			return fmt.Errorf("api socket directory %s: %w", sock, err)
		}
	}
	return nil
}

// checkPrivate refuses the first existing path that group or others may
// read or write, naming it and the fix. Paths that do not exist yet are
// the agent's to create, under its umask.
func checkPrivate(paths ...string) error {
	for _, p := range paths {
		fi, err := os.Stat(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("check permissions of %s: %w", p, err)
		}
		if mode := fi.Mode().Perm(); mode&0o066 != 0 {
			return fmt.Errorf("%s is %s, %w: the records and the audit log are the agent's alone; run 'chmod -R go-rwx %s'",
				p, mode, ErrNotPrivate, p)
		}
	}
	return nil
}

// mkdirAllMode is os.MkdirAll giving each directory it creates exactly
// mode, whatever the umask.
func mkdirAllMode(dir string, mode fs.FileMode) error {
	if fi, err := os.Stat(dir); err == nil {
		if !fi.IsDir() {
			return fmt.Errorf("%s: not a directory", dir)
		}
		return nil
	}
	if parent := filepath.Dir(dir); parent != dir {
		if err := mkdirAllMode(parent, mode); err != nil {
			return err
		}
	}
	if err := os.Mkdir(dir, mode); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil // made meanwhile by someone else, with their mode
		}
		return err
	}
	return os.Chmod(dir, mode)
}

// within says whether path is dir or lies under it.
func within(path, dir string) bool {
	rel, err := filepath.Rel(filepath.Clean(dir), filepath.Clean(path))
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}
