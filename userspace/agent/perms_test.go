package agent

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheckPrivate(t *testing.T) {
	for _, tc := range []struct {
		name    string
		mode    os.FileMode
		refused bool
	}{
		{"owner only", 0o700, false},
		{"traversable by others", 0o711, false},
		{"readable by others", 0o755, true},
		{"readable by group", 0o740, true},
		{"writable by others", 0o702, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "state")
			if err := os.Mkdir(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(dir, tc.mode); err != nil {
				t.Fatal(err)
			}
			err := checkPrivate(dir, filepath.Join(dir, "records"))
			if !tc.refused {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrNotPrivate) {
				t.Fatalf("err = %v, want ErrNotPrivate", err)
			}
			if !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), "chmod -R go-rwx "+dir) {
				t.Errorf("error does not name the path and the fix: %v", err)
			}
		})
	}
}

func TestCheckPrivateKeyFile(t *testing.T) {
	key := filepath.Join(t.TempDir(), "audit.key")
	if err := os.WriteFile(key, []byte("k"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := checkPrivate(key); err != nil {
		t.Fatalf("0600 key refused: %v", err)
	}
	if err := os.Chmod(key, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := checkPrivate(key); !errors.Is(err, ErrNotPrivate) {
		t.Fatalf("0644 key: err = %v, want ErrNotPrivate", err)
	}
}

func TestMkdirAllModeIgnoresUmask(t *testing.T) {
	base := t.TempDir()
	dir := filepath.Join(base, "a", "b")
	if err := mkdirAllMode(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{filepath.Join(base, "a"), dir} {
		fi, err := os.Stat(d)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o755 {
			t.Errorf("%s is %v, want 0755", d, fi.Mode().Perm())
		}
	}
}

func TestWithin(t *testing.T) {
	for _, tc := range []struct {
		path, dir string
		want      bool
	}{
		{"/var/lib/blocknat", "/var/lib/blocknat", true},
		{"/var/lib/blocknat/run", "/var/lib/blocknat", true},
		{"/run/blocknat", "/var/lib/blocknat", false},
		{"/var/lib/blocknat2", "/var/lib/blocknat", false},
	} {
		if got := within(tc.path, tc.dir); got != tc.want {
			t.Errorf("within(%q, %q) = %v, want %v", tc.path, tc.dir, got, tc.want)
		}
	}
}
