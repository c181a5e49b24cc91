package diskspace_test

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/blocknat/blocknat/test/harness"
	"github.com/blocknat/blocknat/userspace/diskspace"
)

// smallFS mounts a tmpfs of size bytes for one test, or skips without
// root (fails under BLOCKNAT_REQUIRE_PRIVILEGED=1).
func smallFS(t *testing.T, size uint64) string {
	t.Helper()
	if os.Getuid() != 0 {
		if os.Getenv("BLOCKNAT_REQUIRE_PRIVILEGED") == "1" {
			t.Fatal("needs root to mount a small filesystem, and BLOCKNAT_REQUIRE_PRIVILEGED=1 forbids skipping")
		}
		t.Skip("needs root to mount a small filesystem")
	}
	dir := filepath.Join(t.TempDir(), "fs")
	unmount, err := harness.MountSmallFS(dir, size)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := unmount(); err != nil {
			t.Error(err)
		}
	})
	return dir
}

func quiet() *slog.Logger { return slog.New(slog.DiscardHandler) }

// TestGuardOnARealFullFilesystem: on a 40 MiB tmpfs, the guard makes its
// ballast, refuses writes once a filler leaves less than min_free, says so
// in its reason, and allows them again when the filler goes.
func TestGuardOnARealFullFilesystem(t *testing.T) {
	dir := smallFS(t, 40<<20)
	g := diskspace.New(dir, diskspace.Limits{MinFree: 16 << 20, Reserve: 8 << 20}, quiet())
	g.Start()
	g.Maintain()
	st := g.State()
	if st.Held < 8<<20 || st.Held > 9<<20 {
		t.Fatalf("reserve holds %d bytes, want 8 MiB", st.Held)
	}
	if err := g.Writable(); err != nil {
		t.Fatalf("writes refused on an empty filesystem: %v", err)
	}
	if _, err := harness.Fill(dir, "filler", 0); err != nil {
		t.Fatal(err)
	}
	err := g.Writable()
	if !errors.Is(err, diskspace.ErrLow) {
		t.Fatalf("Writable on a full filesystem: %v, want ErrLow", err)
	}
	st = g.State()
	if !st.Low || st.Free >= 16<<20 || !strings.Contains(st.Reason(), "disk.min_free") || !strings.Contains(st.Reason(), diskspace.ReserveFile) {
		t.Fatalf("full filesystem: state %+v, reason %q", st, st.Reason())
	}
	// Making the ballast again must not be what fills the disk.
	g.Maintain()
	if g.State().Held < 8<<20 {
		t.Fatalf("Maintain on a full disk gave up the reserve: %+v", g.State())
	}
	if err := os.Remove(filepath.Join(dir, "filler")); err != nil {
		t.Fatal(err)
	}
	if err := g.Writable(); err != nil {
		t.Fatalf("writes still refused after the filler went: %v", err)
	}
	if st := g.State(); st.Low || st.Reason() != "" {
		t.Fatalf("after the filler went: state %+v, reason %q", st, st.Reason())
	}
}

// TestGuardStartReleasesReserveOnFullDisk: started on a full filesystem,
// the guard deletes its ballast (so the store can open) but stays low, and
// makes the ballast again only once there is min_free plus its size free.
func TestGuardStartReleasesReserveOnFullDisk(t *testing.T) {
	dir := smallFS(t, 40<<20)
	limits := diskspace.Limits{MinFree: 16 << 20, Reserve: 8 << 20}
	first := diskspace.New(dir, limits, quiet())
	first.Start()
	first.Maintain()
	if _, err := harness.Fill(dir, "filler", 0); err != nil {
		t.Fatal(err)
	}

	g := diskspace.New(dir, limits, quiet())
	st := g.Start()
	if st.Held != 0 || st.Released == "" {
		t.Fatalf("start on a full disk kept the reserve: %+v", st)
	}
	if _, err := os.Stat(filepath.Join(dir, diskspace.ReserveFile)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("reserve file still there: %v", err)
	}
	if !st.Low || st.Free < 8<<20 {
		t.Fatalf("after releasing 8 MiB on a full disk: %+v, want low with about 8 MiB free", st)
	}
	// Room for min_free but not for the ballast as well: writes resume,
	// the ballast waits.
	if err := os.Truncate(filepath.Join(dir, "filler"), 20<<20); err != nil {
		t.Fatal(err)
	}
	g.Maintain()
	if st := g.State(); st.Low || st.Held != 0 {
		t.Fatalf("with min_free free but not min_free+reserve: %+v, want writable without a reserve", st)
	}
	if err := os.Remove(filepath.Join(dir, "filler")); err != nil {
		t.Fatal(err)
	}
	g.Maintain()
	if st := g.State(); st.Held < 8<<20 || st.Released != "" {
		t.Fatalf("with room again the reserve was not made: %+v", st)
	}
}
