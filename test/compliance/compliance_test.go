package compliance

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// rfcTables are the RFCs docs/rfc-compliance.md must cover, each with its
// own requirement table.
var rfcTables = []string{"RFC 4787", "RFC 5382", "RFC 5508", "RFC 6888", "RFC 6887 (PCP) and RFC 6886 (NAT-PMP)"}

func repoRoot(t *testing.T) string {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	root, err := ModuleRoot(wd)
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// TestComplianceDoc: every row of docs/rfc-compliance.md that claims a
// requirement is met (or partly met) names a test, every test it names
// exists, no REQ is listed twice in a table, the summary's counts match
// the tables, and each RFC of rfcTables has a table.
func TestComplianceDoc(t *testing.T) {
	root := repoRoot(t)
	md, err := os.ReadFile(filepath.Join(root, "docs", "rfc-compliance.md"))
	if err != nil {
		t.Fatal(err)
	}
	doc, err := ParseDoc(md)
	if err != nil {
		t.Fatalf("docs/rfc-compliance.md: %v", err)
	}
	tests, err := TestFuncs(root)
	if err != nil {
		t.Fatal(err)
	}
	for _, err := range Check(doc, tests) {
		t.Errorf("docs/rfc-compliance.md: %v", err)
	}

	for _, rfc := range rfcTables {
		n := 0
		for _, tb := range doc.Tables {
			if strings.HasPrefix(tb.Heading, rfc+":") {
				n++
			}
		}
		if n != 1 {
			t.Errorf("docs/rfc-compliance.md has %d requirement tables for %s, want 1", n, rfc)
		}
	}
	if len(doc.Summaries) != len(rfcTables) {
		t.Errorf("summary has %d rows, want one per RFC (%d)", len(doc.Summaries), len(rfcTables))
	}
	for _, tb := range doc.Tables {
		counts := map[string]int{}
		for _, r := range tb.Rows {
			counts[r.Status]++
		}
		t.Logf("%s: %d met, %d partly, %d not met, %d n/a", tb.Heading, counts[StatusMet], counts[StatusPartly], counts[StatusNotMet], counts[StatusNotAppl])
	}
}

// TestTestFuncsFindsRealTests: the scan finds this package's own tests
// and tests of other packages, and nothing that is not a test function.
func TestTestFuncsFindsRealTests(t *testing.T) {
	tests, err := TestFuncs(repoRoot(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"TestComplianceDoc", "TestTestFuncsFindsRealTests", "TestNATTable", "FuzzNAT"} {
		if !tests[name] {
			t.Errorf("%s not found", name)
		}
	}
	for _, name := range []string{"repoRoot", "TestDoesNotExistAnywhere"} {
		if tests[name] {
			t.Errorf("%s reported as a test", name)
		}
	}
}

const goodTable = `# Doc

## RFC 1: a thing

| REQ | requirement (short) | level | blocknat | status | proving tests |
|---|---|---|---|---|---|
| REQ-1 | "A NAT MUST" | MUST | done; see ` + "`TestA`" + ` | met | ` + "`TestA`, `FuzzB`" + ` |
| REQ-2 | a pipe \| in text | SHOULD | ` + "`config.key`" + ` set | partly | ` + "`TestA`" + ` |
| REQ-3 | not done | MUST | why | not met | |

Not in the table: REQ-4, see ` + "`TestA`" + `.

## Summary

| RFC | met | partly | not met |
|---|---|---|---|
| RFC 1 | 1 | 1 | 1 |
`

var goodTests = map[string]bool{"TestA": true, "FuzzB": true}

func checkDoc(t *testing.T, md string) []error {
	t.Helper()
	doc, err := ParseDoc([]byte(md))
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	return Check(doc, goodTests)
}

// TestCheckAcceptsGoodTable: a table that keeps every rule passes, so the
// failures below are the rules' doing.
func TestCheckAcceptsGoodTable(t *testing.T) {
	doc, err := ParseDoc([]byte(goodTable))
	if err != nil {
		t.Fatal(err)
	}
	if len(doc.Tables) != 1 || len(doc.Tables[0].Rows) != 3 || doc.Tables[0].Heading != "RFC 1: a thing" {
		t.Fatalf("parsed %+v", doc.Tables)
	}
	r := doc.Tables[0].Rows[0]
	if r.REQ != "REQ-1" || r.Status != StatusMet || strings.Join(r.Tests, ",") != "TestA,FuzzB" || r.Line != 7 {
		t.Errorf("row 1: %+v", r)
	}
	if got := doc.Tables[0].Rows[1].Cells[1]; got != "a pipe | in text" {
		t.Errorf("escaped pipe: cell %q", got)
	}
	if errs := Check(doc, goodTests); len(errs) != 0 {
		t.Errorf("good table: %v", errs)
	}
}

// TestCheckFindsEachMistake: each broken variant of the good table fails
// with an error that names its mistake.
func TestCheckFindsEachMistake(t *testing.T) {
	for _, c := range []struct {
		name, from, to, want string
	}{
		{"bogus test in the tests column", "`TestA`, `FuzzB`", "`TestA`, `TestBogusName`", "TestBogusName does not exist"},
		{"bogus test in the prose", "done; see `TestA`", "done; see `TestGone`", "TestGone does not exist"},
		{"bogus test outside the tables", "see `TestA`.", "see `TestNowhere`.", "TestNowhere does not exist"},
		{"met without a test", "met | `TestA`, `FuzzB` |", "met | |", `status "met" names no proving test`},
		{"partly without a test", "partly | `TestA` |", "partly | none yet |", `status "partly" names no proving test`},
		{"not a test name", "`TestA`, `FuzzB`", "`TestA`, `helper`", `"helper" in the tests column is not a test name`},
		{"REQ twice", "| REQ-2 |", "| REQ-1 |", "REQ-1 appears twice"},
		{"unknown status", "| not met |", "| mostly |", `status "mostly"`},
		{"summary disagrees", "| RFC 1 | 1 | 1 | 1 |", "| RFC 1 | 2 | 1 | 0 |", "summary says RFC 1 has 2 rows met"},
		{"summary lacks a status", "| REQ-3 | not done | MUST | why | not met | |", "| REQ-3 | not done | MUST | why | n/a | |", `summary has no "n/a" column`},
		{"summary names no table", "| RFC 1 | 1 |", "| RFC 9 | 1 |", `summary row "RFC 9" matches 0`},
	} {
		t.Run(c.name, func(t *testing.T) {
			md := strings.Replace(goodTable, c.from, c.to, 1)
			if md == goodTable {
				t.Fatalf("the variant changed nothing: %q not in the table", c.from)
			}
			errs := checkDoc(t, md)
			found := false
			for _, err := range errs {
				found = found || strings.Contains(err.Error(), c.want)
			}
			if !found {
				t.Errorf("errors %v, want one containing %q", errs, c.want)
			}
		})
	}
}

// TestParseDocRejectsBrokenTables: a requirement table without a status
// or tests column, or with a short row, is refused rather than skipped.
func TestParseDocRejectsBrokenTables(t *testing.T) {
	for name, md := range map[string]string{
		"no status column": "| REQ | level | tests |\n|---|---|---|\n| REQ-1 | MUST | `TestA` |\n",
		"short row":        strings.Replace(goodTable, "| REQ-3 | not done | MUST | why | not met | |", "| REQ-3 | not done |", 1),
	} {
		if _, err := ParseDoc([]byte(md)); err == nil {
			t.Errorf("%s: parsed without error", name)
		}
	}
}
