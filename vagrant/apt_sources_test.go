// Package vagrant holds the tests of the Vagrant box's provisioning: the
// shell that finds the box's Debian mirror, run against apt sources of
// both formats, and the provisioning script the Vagrantfile renders.
package vagrant

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/blocknat/blocknat/test/netns"
)

// sourcesIn writes files (name -> content) into a fresh directory and
// returns their paths, plus a pattern that matches nothing, as an
// unmatched glob of the provisioning would be.
func sourcesIn(t *testing.T, files map[string]string) []string {
	t.Helper()
	dir := t.TempDir()
	var paths []string
	for name, text := range files {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	return append(paths, filepath.Join(dir, "sources.list.d", "*.list"))
}

// sh runs a function of apt-sources.sh with files as its arguments.
func sh(t *testing.T, function string, args ...string) (string, bool) {
	t.Helper()
	script := ". ./apt-sources.sh && " + function + ` "$@"`
	out, err := exec.Command("sh", append([]string{"-c", script, "sh"}, args...)...).CombinedOutput()
	if _, exit := err.(*exec.ExitError); err != nil && !exit {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out)), err == nil
}

const deb822Bookworm = `Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.example.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://security.example.org/debian-security
Suites: bookworm-security
Components: main
`

func TestBookwormMirror(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files map[string]string
		want  string
	}{
		{"deb822 only (Debian 12 images)", map[string]string{"debian.sources": deb822Bookworm}, "http://deb.example.org/debian"},
		{"one-line sources.list", map[string]string{"sources.list": "# the mirror\ndeb http://one.example.org/debian bookworm main\ndeb-src http://src.example.org/debian bookworm main\n"},
			"http://one.example.org/debian"},
		{"one-line with options", map[string]string{"sources.list": "deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://opt.example.org/debian bookworm main\n"},
			"http://opt.example.org/debian"},
		{"security first, mirror second", map[string]string{"sources.list": "deb http://security.example.org/debian-security bookworm-security main\ndeb http://two.example.org/debian bookworm main contrib\n"},
			"http://two.example.org/debian"},
		{"deb822 disabled and source-only stanzas skipped", map[string]string{"debian.sources": "Types: deb\nURIs: http://off.example.org/debian\nSuites: bookworm\nEnabled: no\n\nTypes: deb-src\nURIs: http://src.example.org/debian\nSuites: bookworm\n\ntypes: deb deb-src\nuris: http://on.example.org/debian\nsuites: bookworm\n"},
			"http://on.example.org/debian"},
		{"deb822 several URIs", map[string]string{"debian.sources": "Types: deb\nURIs: http://a.example.org/debian http://b.example.org/debian\nSuites: bookworm\n"},
			"http://a.example.org/debian"},
		{"Debian's cloud images: a mirror list", map[string]string{"debian.sources": "Types: deb deb-src\nURIs: mirror+file:///etc/apt/mirrors/debian.list\nSuites: bookworm bookworm-updates bookworm-backports\nComponents: main\n"},
			"mirror+file:///etc/apt/mirrors/debian.list"},
		{"no bookworm at all", map[string]string{"sources.list": "deb http://old.example.org/debian bullseye main\n", "debian.sources": "Types: deb\nURIs: http://sec.example.org/debian-security\nSuites: bookworm-security\n"},
			""},
		{"commented out", map[string]string{"sources.list": "# deb http://x.example.org/debian bookworm main\n"}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, _ := sh(t, "bookworm_mirror", sourcesIn(t, tc.files)...)
			if got != tc.want {
				t.Errorf("bookworm_mirror = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestHasSuite(t *testing.T) {
	files := sourcesIn(t, map[string]string{
		"debian.sources": deb822Bookworm,
		"backports.list": "deb http://deb.example.org/debian bookworm-backports main\n",
	})
	for suite, want := range map[string]bool{"bookworm-backports": true, "bookworm-security": true, "bookworm": true, "trixie": false} {
		if _, got := sh(t, "has_suite", append([]string{suite}, files...)...); got != want {
			t.Errorf("has_suite %s = %v, want %v", suite, got, want)
		}
	}
	if _, got := sh(t, "has_suite", append([]string{"bookworm-backports"}, sourcesIn(t, map[string]string{"debian.sources": deb822Bookworm})...)...); got {
		t.Error("has_suite bookworm-backports succeeded without a backports source")
	}
}

// TestProvisionScript renders the Vagrantfile's provisioning as vagrant
// would and checks that the shell it hands the box parses and uses the
// functions tested above.
func TestProvisionScript(t *testing.T) {
	netns.RequireTools(t, "ruby")
	const render = `module Vagrant; def self.configure(*); end; end; load "Vagrantfile"; print PROVISION_DEPS`
	out, err := exec.Command("ruby", "-e", render).CombinedOutput()
	if err != nil {
		t.Fatalf("render Vagrantfile: %v\n%s", err, out)
	}
	script := string(out)
	for _, want := range []string{"bookworm_mirror() {", "has_suite bookworm-backports $APT_SOURCE_FILES", "*.sources"} {
		if !strings.Contains(script, want) {
			t.Errorf("the provisioning script lacks %q:\n%s", want, script)
		}
	}
	cmd := exec.Command("sh", "-n")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("sh -n: %v\n%s\n%s", err, out, script)
	}
}
