// Package compliance keeps docs/rfc-compliance.md honest. The document claims,
// row by row, how blocknat meets each RFC requirement and which tests prove it;
// this package parses those tables and checks the claims against the tests
// that really exist in the repository, so a renamed or deleted test, a row
// that claims compliance without proof, or a requirement listed twice fails
// `go test` instead of going stale.
package compliance

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// Statuses a requirement row may have. Met and partly claim behaviour, so
// they must name the tests that prove it.
const (
	StatusMet     = "met"
	StatusPartly  = "partly"
	StatusNotMet  = "not met"
	StatusNotAppl = "n/a"
)

// testName is what a named test must look like; anything else in
// backticks is a code span such as a config key.
var testName = regexp.MustCompile(`^(Test|Fuzz)\w+$`)

// codeSpan finds backtick-quoted text in a cell.
var codeSpan = regexp.MustCompile("`([^`]+)`")

// Row is one requirement of a table.
type Row struct {
	Line   int    // 1-based line in the document
	REQ    string // e.g. "REQ-3a"
	Level  string
	Status string
	Tests  []string // backticked names in the tests column, in order
	Cells  []string // every cell, trimmed
}

// Table is one requirement table and the heading it sits under.
type Table struct {
	Heading string // text of the nearest "## " heading above the table
	Line    int
	Rows    []Row
}

// Summary is one line of the document's summary table: how many rows of
// an RFC's table have each status.
type Summary struct {
	Line   int
	RFC    string
	Counts map[string]int // by status
}

// Mention is a test named in backticks outside the tables.
type Mention struct {
	Line int
	Name string
}

// Doc is what ParseDoc found.
type Doc struct {
	Tables    []Table
	Summaries []Summary
	Mentions  []Mention
}

// column indexes of a requirement table, found from its header row.
type columns struct{ req, level, status, tests int }

// ParseDoc reads every Markdown table of md. A table whose header has a
// "REQ" column is a requirement table; one whose first header is "RFC" is
// the summary. Other tables are ignored.
func ParseDoc(md []byte) (Doc, error) {
	var doc Doc
	var heading string
	var block [][]string // rows of the table being read, cells split
	var blockLine int
	flush := func() error {
		defer func() { block = nil }()
		if len(block) < 2 {
			return nil
		}
		return doc.addTable(heading, blockLine, block)
	}

	sc := bufio.NewScanner(bytes.NewReader(md))
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "|") {
			if block == nil {
				blockLine = n
			}
			block = append(block, splitRow(line))
			continue
		}
		if err := flush(); err != nil {
			return doc, err
		}
		if h, ok := strings.CutPrefix(line, "## "); ok {
			heading = strings.TrimSpace(h)
		}
		for _, m := range codeSpan.FindAllStringSubmatch(line, -1) {
			if testName.MatchString(m[1]) {
				doc.Mentions = append(doc.Mentions, Mention{Line: n, Name: m[1]})
			}
		}
	}
	if err := sc.Err(); err != nil {
		return doc, fmt.Errorf("read document: %w", err)
	}
	return doc, flush()
}

// addTable classifies a table (header, delimiter, rows) starting at line.
func (d *Doc) addTable(heading string, line int, block [][]string) error {
	header := block[0]
	if len(header) > 0 && strings.EqualFold(header[0], "RFC") {
		return d.addSummary(line, header, block[2:])
	}
	cols := columns{-1, -1, -1, -1}
	for i, h := range header {
		switch h := strings.ToLower(h); {
		case h == "req":
			cols.req = i
		case h == "level":
			cols.level = i
		case h == "status":
			cols.status = i
		case strings.Contains(h, "test"):
			cols.tests = i
		}
	}
	if cols.req < 0 {
		return nil
	}
	if cols.status < 0 || cols.tests < 0 || cols.level < 0 {
		return fmt.Errorf("line %d: requirement table under %q needs columns REQ, level, status and tests; header is %q", line, heading, header)
	}
	t := Table{Heading: heading, Line: line}
	for k, cells := range block[2:] {
		rowLine := line + 2 + k
		if len(cells) != len(header) {
			return fmt.Errorf("line %d: %d cells, the header has %d", rowLine, len(cells), len(header))
		}
		r := Row{Line: rowLine, REQ: cells[cols.req], Level: cells[cols.level], Status: strings.ToLower(cells[cols.status]), Cells: cells}
		for _, m := range codeSpan.FindAllStringSubmatch(cells[cols.tests], -1) {
			r.Tests = append(r.Tests, m[1])
		}
		t.Rows = append(t.Rows, r)
	}
	d.Tables = append(d.Tables, t)
	return nil
}

// addSummary reads the summary table: RFC, then one column per status.
func (d *Doc) addSummary(line int, header []string, rows [][]string) error {
	for k, cells := range rows {
		rowLine := line + 2 + k
		if len(cells) != len(header) {
			return fmt.Errorf("line %d: %d cells, the header has %d", rowLine, len(cells), len(header))
		}
		s := Summary{Line: rowLine, RFC: cells[0], Counts: map[string]int{}}
		for i := 1; i < len(header); i++ {
			n, err := strconv.Atoi(cells[i])
			if err != nil {
				return fmt.Errorf("line %d: summary count %q under %q: %w", rowLine, cells[i], header[i], err)
			}
			s.Counts[strings.ToLower(header[i])] = n
		}
		d.Summaries = append(d.Summaries, s)
	}
	return nil
}

// splitRow splits "| a | b |" into trimmed cells. A pipe escaped as \| or
// inside a code span stays in its cell.
func splitRow(line string) []string {
	line = strings.TrimPrefix(line, "|")
	if strings.HasSuffix(line, "|") && !strings.HasSuffix(line, `\|`) {
		line = line[:len(line)-1]
	}
	var cells []string
	var cur strings.Builder
	inCode := false
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case c == '\\' && i+1 < len(line) && line[i+1] == '|':
			cur.WriteByte('|')
			i++
		case c == '`':
			inCode = !inCode
			cur.WriteByte(c)
		case c == '|' && !inCode:
			cells = append(cells, strings.TrimSpace(cur.String()))
			cur.Reset()
		default:
			cur.WriteByte(c)
		}
	}
	return append(cells, strings.TrimSpace(cur.String()))
}

// Check returns every way doc's claims disagree with tests, the set of
// test and fuzz function names that exist.
func Check(doc Doc, tests map[string]bool) []error {
	var errs []error
	statuses := map[string]bool{StatusMet: true, StatusPartly: true, StatusNotMet: true, StatusNotAppl: true}
	counts := map[string]map[string]int{} // heading -> status -> rows
	for _, t := range doc.Tables {
		if len(t.Rows) == 0 {
			errs = append(errs, fmt.Errorf("line %d: table under %q has no rows", t.Line, t.Heading))
		}
		seen := map[string]int{}
		counts[t.Heading] = map[string]int{}
		for _, r := range t.Rows {
			where := fmt.Sprintf("line %d (%s, %s)", r.Line, t.Heading, r.REQ)
			if r.REQ == "" {
				errs = append(errs, fmt.Errorf("line %d (%s): empty REQ cell", r.Line, t.Heading))
			} else if first, dup := seen[r.REQ]; dup {
				errs = append(errs, fmt.Errorf("%s: %s appears twice in one table (first on line %d)", where, r.REQ, first))
			} else {
				seen[r.REQ] = r.Line
			}
			if r.Level == "" {
				errs = append(errs, fmt.Errorf("%s: empty level", where))
			}
			if !statuses[r.Status] {
				errs = append(errs, fmt.Errorf("%s: status %q is not met, partly, not met or n/a", where, r.Status))
			}
			counts[t.Heading][r.Status]++
			if (r.Status == StatusMet || r.Status == StatusPartly) && len(r.Tests) == 0 {
				errs = append(errs, fmt.Errorf("%s: status %q names no proving test", where, r.Status))
			}
			for _, name := range r.Tests {
				if !testName.MatchString(name) {
					errs = append(errs, fmt.Errorf("%s: %q in the tests column is not a test name", where, name))
				}
			}
			// A test named anywhere in the row must exist, not only in
			// the tests column: the prose cites tests too.
			for _, cell := range r.Cells {
				for _, m := range codeSpan.FindAllStringSubmatch(cell, -1) {
					if testName.MatchString(m[1]) && !tests[m[1]] {
						errs = append(errs, fmt.Errorf("%s: test %s does not exist in any _test.go file", where, m[1]))
					}
				}
			}
		}
	}
	for _, m := range doc.Mentions {
		if !tests[m.Name] {
			errs = append(errs, fmt.Errorf("line %d: test %s does not exist in any _test.go file", m.Line, m.Name))
		}
	}
	for _, s := range doc.Summaries {
		var match []string
		for heading := range counts {
			if strings.HasPrefix(heading, s.RFC+":") || heading == s.RFC {
				match = append(match, heading)
			}
		}
		if len(match) != 1 {
			errs = append(errs, fmt.Errorf("line %d: summary row %q matches %d requirement tables, want 1", s.Line, s.RFC, len(match)))
			continue
		}
		for status, want := range s.Counts {
			if got := counts[match[0]][status]; got != want {
				errs = append(errs, fmt.Errorf("line %d: summary says %s has %d rows %s, the table has %d", s.Line, s.RFC, want, status, got))
			}
		}
		for status, got := range counts[match[0]] {
			if _, ok := s.Counts[status]; !ok && got > 0 {
				errs = append(errs, fmt.Errorf("line %d: summary has no %q column, but %s has %d such rows", s.Line, status, s.RFC, got))
			}
		}
	}
	return errs
}

// TestFuncs returns the names of the top-level Test and Fuzz functions of
// every _test.go file under root. Hidden directories, testdata and vendor
// are skipped: what they hold never runs as the module's tests.
func TestFuncs(root string) (map[string]bool, error) {
	names := map[string]bool{}
	fset := token.NewFileSet()
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			name := d.Name()
			if path != root && (strings.HasPrefix(name, ".") || name == "testdata" || name == "vendor") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return fmt.Errorf("parse %s: %w", path, err)
		}
		for _, decl := range f.Decls {
			// Methods cannot be tests; only package-level functions count.
			if fn, ok := decl.(*ast.FuncDecl); ok && fn.Recv == nil && testName.MatchString(fn.Name.Name) {
				names[fn.Name.Name] = true
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("find tests under %s: %w", root, err)
	}
	return names, nil
}

// ModuleRoot walks up from dir to the directory holding go.mod.
func ModuleRoot(dir string) (string, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("module root: %w", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		} else if !errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("module root: %w", err)
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("module root: no go.mod above the working directory")
		}
		dir = parent
	}
}
