package agent

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestShutdownOrderIsDocumented: the components stop in the reverse of
// the order they start, and that is the order docs/ARCHITECTURE.md's
// Shutdown section lists.
func TestShutdownOrderIsDocumented(t *testing.T) {
	doc, err := os.ReadFile("../../docs/ARCHITECTURE.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(doc), "\n## Shutdown\n")
	if !ok {
		t.Fatal("docs/ARCHITECTURE.md has no Shutdown section")
	}
	section, _, _ = strings.Cut(section, "\n## ")
	var documented []string
	for _, m := range regexp.MustCompile("(?m)^[0-9]+\\. `([^`]+)`").FindAllStringSubmatch(section, -1) {
		documented = append(documented, m[1])
	}
	var stops []string
	for _, c := range (&Agent{}).components(Options{}) {
		stops = append(stops, c.name)
	}
	slices.Reverse(stops)
	if !slices.Equal(stops, documented) {
		t.Errorf("components stop in the order\n  %v\nARCHITECTURE.md says\n  %v", stops, documented)
	}
}
