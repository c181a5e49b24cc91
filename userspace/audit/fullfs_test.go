package audit

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/blocknat/blocknat/test/harness"

	"github.com/blocknat/blocknat/test/testutil"
)

// TestRecoversFromAFullFilesystem: on a real 4 MiB tmpfs filled to the
// last byte, appends fail and Health says why; once room is made the log
// goes on by itself (Run's retry, without a request or a reopen), every
// entry acknowledged before and after verifies, and none is lost.
func TestRecoversFromAFullFilesystem(t *testing.T) {
	if os.Getuid() != 0 {
		if os.Getenv("BLOCKNAT_REQUIRE_PRIVILEGED") == "1" {
			t.Fatal("needs root to mount a small filesystem, and BLOCKNAT_REQUIRE_PRIVILEGED=1 forbids skipping")
		}
		t.Skip("needs root to mount a small filesystem")
	}
	fs := filepath.Join(t.TempDir(), "fs")
	unmount, err := harness.MountSmallFS(fs, 4<<20)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := unmount(); err != nil {
			t.Error(err)
		}
	})
	clock := testutil.NewClock(day0, 0)
	l, err := Open(filepath.Join(fs, "audit"), Options{Now: clock.Now, KeyPath: filepath.Join(t.TempDir(), "audit.key")})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	acked := 0
	for i := range 3 {
		if _, err := l.Append(entryFor(i)); err != nil {
			t.Fatal(err)
		}
		acked++
	}
	if _, err := harness.Fill(fs, "filler", 0); err != nil {
		t.Fatal(err)
	}
	// Until the page the segment ends in is full, lines may still fit;
	// the signed head needs a page of its own. Either way some append
	// fails within a few.
	var failure error
	for i := 3; i < 200 && failure == nil; i++ {
		if _, failure = l.Append(entryFor(i)); failure == nil {
			acked++
		}
	}
	if failure == nil {
		t.Fatal("every append succeeded on a full filesystem")
	}
	h := l.Health()
	if !h.Failing || !strings.Contains(h.LastError, "no space left on device") {
		t.Fatalf("health on a full filesystem: %+v, want failing with ENOSPC", h)
	}
	if err := os.Remove(filepath.Join(fs, "filler")); err != nil {
		t.Fatal(err)
	}
	clock.Advance(RetryInterval)
	l.retry() // what Run does every RetryInterval
	if h := l.Health(); h.Failing {
		t.Fatalf("health after room was made and a retry: %+v", h)
	}
	for i := range 3 {
		if _, err := l.Append(entryFor(1000 + i)); err != nil {
			t.Fatalf("append after room was made: %v", err)
		}
		acked++
	}
	rep, err := l.Verify()
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Problems) > 0 {
		t.Fatalf("log after recovery does not verify: %v", rep.Problems)
	}
	entries, err := l.Entries(1, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) < acked {
		t.Fatalf("%d entries on disk, %d were acknowledged", len(entries), acked)
	}
}
