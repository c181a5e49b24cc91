package bench

import (
	"math"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/blocknat/blocknat/test/netns"
)

func TestSpreadOf(t *testing.T) {
	for _, c := range []struct {
		in   []float64
		want Spread
	}{
		{nil, Spread{}},
		{[]float64{3}, Spread{N: 1, Median: 3, Min: 3, Max: 3}},
		{[]float64{5, 1, 3}, Spread{N: 3, Median: 3, Min: 1, Max: 5}},
		{[]float64{4, 1, 3, 2}, Spread{N: 4, Median: 2.5, Min: 1, Max: 4}},
	} {
		if got := SpreadOf(c.in); got != c.want {
			t.Errorf("SpreadOf(%v) = %+v, want %+v", c.in, got, c.want)
		}
	}
}

func TestTargetMet(t *testing.T) {
	atLeast := Target{Got: Spread{N: 3, Median: 4.5}, AtLeast: true, Limit: 4.5}
	atMost := Target{Got: Spread{N: 3, Median: 1.01}, Limit: 1}
	none := Target{AtLeast: true, Limit: 0}
	if !atLeast.Met() || atMost.Met() || none.Met() {
		t.Errorf("Met: %v (want true), %v (want false), %v for no measurement (want false)", atLeast.Met(), atMost.Met(), none.Met())
	}
}

// TestParseGoBench: results are grouped by name without the GOMAXPROCS
// suffix, every metric of a line is kept, and a fixture line logged by a
// benchmark is found behind go test's file:line prefix.
func TestParseGoBench(t *testing.T) {
	out := `goos: linux
BenchmarkXDP/pass-2         	     200	  20047590 ns/op	        40.15 ns/pkt
BenchmarkXDP/pass-2         	     200	  20047590 ns/op	        44.00 ns/pkt
BenchmarkYear/lookup-2         	       3	     35062 ns/op	     28845 lookups/s	     21202 p50-ns	     63184 p99-ns
--- BENCH: BenchmarkYear/lookup-2
    store_bench_test.go:337: year fixture: days=3 subscribers=10000 records=150000 ingest=765ms records/s=196121 bytes/subscriber-day=115.1 (right after the compaction bytes/subscriber-day=125.9)
PASS
`
	var r GoBenchResults
	if err := ParseGoBench(strings.NewReader(out), &r); err != nil {
		t.Fatal(err)
	}
	if got := r.Get("BenchmarkXDP/pass", "ns/pkt"); got.N != 2 || got.Median != (40.15+44)/2 {
		t.Errorf("pass ns/pkt = %+v, want 2 values", got)
	}
	if got := r.Get("BenchmarkYear/lookup", "p99-ns"); got.N != 1 || got.Median != 63184 {
		t.Errorf("lookup p99 = %+v", got)
	}
	if v, ok := r.Fixture("year fixture", "records/s"); !ok || v != 196121 {
		t.Errorf("fixture records/s = %v, %v", v, ok)
	}
	// A key repeated later on the line (a note in parentheses) does not
	// replace the first: the year's settled figure is the one judged.
	if v, ok := r.Fixture("year fixture", "bytes/subscriber-day"); !ok || v != 115.1 {
		t.Errorf("fixture bytes/subscriber-day = %v, %v; want the first, 115.1", v, ok)
	}
	if _, ok := r.Fixture("year fixture", "bytes/record"); ok {
		t.Error("a key the line lacks was found")
	}
	if r.Fixtures["year fixture"]["ingest"] != "765ms" {
		t.Errorf("fixture ingest = %q", r.Fixtures["year fixture"]["ingest"])
	}
	if got := r.Matching("BenchmarkXDP/"); len(got) != 2 {
		t.Errorf("Matching(BenchmarkXDP/) = %d metrics, want ns/op and ns/pkt", len(got))
	}
}

// TestPredictMatchesKernel: the memory formula gives what the kernel
// charges (fdinfo memlock, which bpftool shows) for maps of every type it
// covers, at sizes around powers of two.
func TestPredictMatchesKernel(t *testing.T) {
	netns.RequirePrivileged(t)
	ks, err := readKernelSizes()
	if err != nil {
		t.Fatal(err)
	}
	for _, spec := range []*ebpf.MapSpec{
		{Type: ebpf.Hash, KeySize: 8, ValueSize: 24, MaxEntries: 1000},
		{Type: ebpf.Hash, KeySize: 8, ValueSize: 12, MaxEntries: 4096},
		{Type: ebpf.Hash, KeySize: 5, ValueSize: 3, MaxEntries: 4097},
		{Type: ebpf.LRUHash, KeySize: 16, ValueSize: 8, MaxEntries: 3000},
		{Type: ebpf.Array, KeySize: 4, ValueSize: 40, MaxEntries: 1024},
		{Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 8, MaxEntries: 27},
	} {
		m, err := ebpf.NewMap(spec)
		if err != nil {
			t.Fatalf("%v: %v", spec.Type, err)
		}
		info, err := m.Info()
		m.Close()
		if err != nil {
			t.Fatal(err)
		}
		memlock, ok := info.Memlock()
		if !ok {
			t.Fatalf("%v: no memlock in fdinfo", spec.Type)
		}
		pred := ks.predict(info)
		if diff := math.Abs(float64(memlock)-float64(pred)) / float64(memlock); diff > 0.01 {
			t.Errorf("%v %d/%d ×%d: predicted %d B, kernel %d B", spec.Type, spec.KeySize, spec.ValueSize, spec.MaxEntries, pred, memlock)
		}
	}
}
