package bench

import (
	"bufio"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
)

// GoBench holds every value `go test -bench` printed for one metric of one
// benchmark, over all its -count runs.
type GoBench struct {
	Name   string // without the -GOMAXPROCS suffix
	Unit   string
	Values []float64
}

// GoBenchResults are the parsed results of one or more `go test -bench`
// outputs, in order of first appearance.
type GoBenchResults struct {
	order []string
	byKey map[string]*GoBench
	// Fixtures are the key=value lines a benchmark logged about a fixture
	// it built ("year fixture: days=365 ..."), by the text before the
	// colon.
	Fixtures map[string]map[string]string
}

var (
	procsSuffix = regexp.MustCompile(`-\d+$`)
	fixtureLine = regexp.MustCompile(`([a-z][a-z ]*fixture): (.*)$`)
)

// ParseGoBench reads benchmark result lines ("BenchmarkX/y-2  N  v unit
// v unit ...") and fixture lines; everything else is ignored.
func ParseGoBench(r io.Reader, into *GoBenchResults) error {
	if into.byKey == nil {
		into.byKey = map[string]*GoBench{}
		into.Fixtures = map[string]map[string]string{}
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if m := fixtureLine.FindStringSubmatch(line); m != nil {
			kv := map[string]string{}
			for _, f := range strings.Fields(m[2]) {
				// The first key=value counts: a line may repeat a key
				// in a note that follows (the year fixture gives the
				// disk right after its compaction in parentheses).
				if k, v, ok := strings.Cut(f, "="); ok {
					if _, seen := kv[k]; !seen {
						kv[k] = v
					}
				}
			}
			into.Fixtures[m[1]] = kv
			continue
		}
		if !strings.HasPrefix(line, "Benchmark") {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) < 4 || len(fields)%2 != 0 {
			continue
		}
		if _, err := strconv.Atoi(fields[1]); err != nil {
			continue
		}
		name := procsSuffix.ReplaceAllString(fields[0], "")
		for i := 2; i+1 < len(fields); i += 2 {
			v, err := strconv.ParseFloat(fields[i], 64)
			if err != nil {
				return fmt.Errorf("benchmark line %q: value %q: %w", line, fields[i], err)
			}
			into.add(name, fields[i+1], v)
		}
	}
	return sc.Err()
}

func (g *GoBenchResults) add(name, unit string, v float64) {
	key := name + "\x00" + unit
	b, ok := g.byKey[key]
	if !ok {
		b = &GoBench{Name: name, Unit: unit}
		g.byKey[key] = b
		g.order = append(g.order, key)
	}
	b.Values = append(b.Values, v)
}

// Get returns the spread of one metric; N is 0 when it was not measured.
func (g *GoBenchResults) Get(name, unit string) Spread {
	if g.byKey == nil {
		return Spread{}
	}
	b, ok := g.byKey[name+"\x00"+unit]
	if !ok {
		return Spread{}
	}
	return SpreadOf(b.Values)
}

// Matching returns the benchmarks whose name starts with prefix, in order.
func (g *GoBenchResults) Matching(prefix string) []*GoBench {
	var out []*GoBench
	for _, k := range g.order {
		if b := g.byKey[k]; strings.HasPrefix(b.Name, prefix) {
			out = append(out, b)
		}
	}
	return out
}

// Fixture returns a number a fixture line reported, and whether it did.
func (g *GoBenchResults) Fixture(fixture, key string) (float64, bool) {
	v, ok := g.Fixtures[fixture][key]
	if !ok {
		return 0, false
	}
	f, err := strconv.ParseFloat(v, 64)
	return f, err == nil
}
