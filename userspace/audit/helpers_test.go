package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/blocknat/blocknat/test/testutil"
)

var day0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// testLog opens a log in dir whose key lives in its own temporary directory,
// as in production the key lives outside the log directory.
type testLog struct {
	*Log
	dir, keyPath string
	clock        *testutil.Clock
	opts         Options
}

func openTest(t *testing.T, opts Options) *testLog {
	t.Helper()
	tl := &testLog{dir: t.TempDir(), keyPath: filepath.Join(t.TempDir(), "audit.key"), clock: testutil.NewClock(day0, 0)}
	if opts.Now == nil {
		opts.Now = tl.clock.Now
	}
	opts.KeyPath = tl.keyPath
	tl.opts = opts
	tl.reopen(t)
	return tl
}

func (tl *testLog) reopen(t *testing.T) {
	t.Helper()
	l, err := Open(tl.dir, tl.opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	tl.Log = l
	t.Cleanup(func() { l.Close() })
}

// entryFor gives even entries subjects and an answer hash and odd ones
// neither, so that every log the tests write mixes both encodings.
func entryFor(i int) Entry {
	e := Entry{
		Operator: "uid:1001(alice)",
		Role:     "investigator",
		Action:   "lookup",
		Criteria: map[string]string{"ip": "198.51.100.7", "port": fmt.Sprint(15000 + i), "time": "2026-11-20T12:00:01Z"},
		Purpose:  fmt.Sprintf("case-%04d", i),
		Outcome:  OutcomeAnswered,
		Detail:   "1 record",
	}
	if i%2 == 0 {
		e.Subjects = []string{fmt.Sprintf("mac:02:00:00:00:%02x:%02x", i/256%256, i%256), fmt.Sprintf("inside:100.64.%d.%d", i/256%256, i%256)}
		sum := sha256.Sum256([]byte(fmt.Sprintf("answer %d", i)))
		e.AnswerSHA256 = hex.EncodeToString(sum[:])
	}
	return e
}

func (tl *testLog) appendN(t *testing.T, n int) []Entry {
	t.Helper()
	var out []Entry
	for range n {
		e, err := tl.Append(entryFor(int(tl.Len()) + 1))
		if err != nil {
			t.Fatalf("Append: %v", err)
		}
		out = append(out, e)
	}
	return out
}

func segments(t *testing.T, dir string) []string {
	t.Helper()
	des, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, de := range des {
		if segmentRe.MatchString(de.Name()) {
			names = append(names, de.Name())
		}
	}
	sort.Strings(names)
	return names
}

func readLines(t *testing.T, path string) [][]byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines, torn := splitLines(data)
	if torn {
		t.Fatalf("%s: torn before the test touched it", path)
	}
	return lines
}

func writeLines(t *testing.T, path string, lines [][]byte) {
	t.Helper()
	var buf bytes.Buffer
	for _, l := range lines {
		buf.Write(l)
		buf.WriteByte('\n')
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
}

// copyDir copies the log directory the way an auditor takes it off the box.
func copyDir(t *testing.T, src string) string {
	t.Helper()
	dst := t.TempDir()
	des, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, de := range des {
		data, err := os.ReadFile(filepath.Join(src, de.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, de.Name()), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

func mustVerifyOK(t *testing.T, dir string, tl *testLog) Report {
	t.Helper()
	r, err := Verify(dir, tl.PublicKey())
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if !r.OK() {
		t.Fatalf("Verify found problems in an untouched log:\n%s", problems(r))
	}
	return r
}

func problems(r Report) string {
	var b strings.Builder
	for _, p := range r.Problems {
		fmt.Fprintf(&b, "  %s\n", p)
	}
	return b.String()
}
