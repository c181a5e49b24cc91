package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/bits"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
)

// MapMemory is one of the data plane's maps: the bytes the kernel charges
// for it, predicted from its definition and as bpftool reports them.
type MapMemory struct {
	Name               string
	Type               string
	KeySize, ValueSize uint32
	MaxEntries         uint32
	Predicted          uint64 // 0 for types the formula does not cover
	Bpftool            uint64 // bytes_memlock of `bpftool map show`
	PerFlow            bool   // sized by max_flows
}

// Memory is the data plane's kernel memory and the agent's.
type Memory struct {
	Maps        []MapMemory
	MaxFlows    uint32
	Subscribers uint32
	// The agent's resident set: idle after start, and after its sweeper
	// has walked AgentFlows live mappings.
	AgentFlows                       int
	AgentRSSIdle, AgentRSS, AgentHWM uint64
}

// kernelSizes are the sizes of the kernel structures a map's memory is made
// of, read from the running kernel's BTF so the prediction follows it.
type kernelSizes struct {
	htabElem, bucket, htab, array, ncpu uint64
}

func readKernelSizes() (kernelSizes, error) {
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		return kernelSizes{}, fmt.Errorf("kernel BTF: %w", err)
	}
	var ks kernelSizes
	for name, dst := range map[string]*uint64{"htab_elem": &ks.htabElem, "bucket": &ks.bucket, "bpf_htab": &ks.htab, "bpf_array": &ks.array} {
		typ, err := spec.AnyTypeByName(name)
		if err != nil {
			return ks, fmt.Errorf("kernel BTF: struct %s: %w", name, err)
		}
		n, err := btf.Sizeof(typ)
		if err != nil {
			return ks, fmt.Errorf("kernel BTF: sizeof %s: %w", name, err)
		}
		*dst = uint64(n)
	}
	n, err := ebpf.PossibleCPU()
	if err != nil {
		return ks, err
	}
	ks.ncpu = uint64(n)
	return ks, nil
}

func roundUp8(n uint32) uint64 { return (uint64(n) + 7) &^ 7 }

// predict mirrors the kernel's map_mem_usage for the map types whose size
// grows with the configuration (kernel/bpf/hashtab.c, arraymap.c):
//
//	hash, preallocated: sizeof(bpf_htab) + n_buckets·sizeof(bucket)
//	    + (max_entries + ncpu)·elem + ncpu·sizeof(pointer)     (extra elements)
//	lru hash: the same without the extra elements
//	elem = sizeof(htab_elem) + round8(key) + round8(value)
//	n_buckets = max_entries rounded up to a power of two
//	array: sizeof(bpf_array) + max_entries·round8(value)
//	percpu array: sizeof(bpf_array) + max_entries·(pointer + ncpu·round8(value))
func (ks kernelSizes) predict(info *ebpf.MapInfo) uint64 {
	maxEntries := uint64(info.MaxEntries)
	elem := ks.htabElem + roundUp8(info.KeySize) + roundUp8(info.ValueSize)
	buckets := uint64(1) << bits.Len64(maxEntries-1)
	prealloc := info.Flags&1 == 0 // BPF_F_NO_PREALLOC
	switch info.Type {
	case ebpf.Hash:
		if !prealloc {
			return 0
		}
		return ks.htab + buckets*ks.bucket + (maxEntries+ks.ncpu)*elem + ks.ncpu*8
	case ebpf.LRUHash:
		return ks.htab + buckets*ks.bucket + maxEntries*elem
	case ebpf.Array:
		return ks.array + maxEntries*roundUp8(info.ValueSize)
	case ebpf.PerCPUArray:
		return ks.array + maxEntries*(8+ks.ncpu*roundUp8(info.ValueSize))
	}
	return 0
}

// bpftoolMemlock returns bytes_memlock by map id, from `bpftool map show`.
func bpftoolMemlock(ctx context.Context) (map[uint32]uint64, error) {
	out, err := runCmd(ctx, "bpftool", "-j", "map", "show")
	if err != nil {
		return nil, err
	}
	var maps []struct {
		ID           uint32 `json:"id"`
		BytesMemlock uint64 `json:"bytes_memlock"`
	}
	if err := json.Unmarshal(out, &maps); err != nil {
		return nil, fmt.Errorf("bpftool map show: %w", err)
	}
	byID := make(map[uint32]uint64, len(maps))
	for _, m := range maps {
		byID[m.ID] = m.BytesMemlock
	}
	return byID, nil
}

// RunMemory starts blocknatd with the default timeouts and table sizes,
// accounts for every map it pinned, then drives `flows` flows through it
// and reads its resident set once the sweeper has walked them.
func RunMemory(ctx context.Context, bed *Bed, flows, subscribers int, bin, dir string, log *slog.Logger) (mem Memory, err error) {
	m, err := Mapping()
	if err != nil {
		return mem, err
	}
	mem.MaxFlows, mem.Subscribers = BenchMaxFlows, m.Subscribers
	agent, err := StartAgent(ctx, bed, bin, filepath.Join(dir, "memory-agent"), "intervals: {sweep: 1s}\n")
	if err != nil {
		return mem, err
	}
	defer func() { err = errors.Join(err, agent.Stop()) }()
	if mem.Maps, err = accountMaps(ctx, agent.PinDir); err != nil {
		return mem, err
	}
	pid, err := agent.Pid(ctx, bed)
	if err != nil {
		return mem, err
	}
	// Let the start-up work (epoch, reconcile, first sweep) finish.
	time.Sleep(2 * time.Second)
	if mem.AgentRSSIdle, _, err = MemoryOf(pid); err != nil {
		return mem, err
	}
	g, err := NewGenerator(bed, Workload{Flows: flows, Subscribers: subscribers, Destinations: 200})
	if err != nil {
		return mem, err
	}
	defer func() { err = errors.Join(err, g.Close()) }()
	sink, err := NewSink(bed, false)
	if err != nil {
		return mem, err
	}
	defer func() { err = errors.Join(err, sink.Close()) }()
	if err := g.Send(uint64(2 * flows)); err != nil {
		return mem, err
	}
	pinned, err := agent.Pinned()
	if err != nil {
		return mem, err
	}
	defer pinned.Close()
	live, err := pinned.Flows()
	if err != nil {
		return mem, err
	}
	mem.AgentFlows = len(live)
	if mem.AgentFlows != flows {
		return mem, fmt.Errorf("%d mappings in the kernel after sending %d flows", mem.AgentFlows, flows)
	}
	// Two sweep intervals: the sweeper has read every mapping at least
	// once, which is the agent's work that grows with the flows.
	time.Sleep(2500 * time.Millisecond)
	if mem.AgentRSS, mem.AgentHWM, err = MemoryOf(pid); err != nil {
		return mem, err
	}
	log.Info("memory", "agent_rss_idle", mem.AgentRSSIdle, "agent_rss", mem.AgentRSS, "flows", mem.AgentFlows)
	return mem, nil
}

func accountMaps(ctx context.Context, pinDir string) ([]MapMemory, error) {
	ks, err := readKernelSizes()
	if err != nil {
		return nil, err
	}
	memlock, err := bpftoolMemlock(ctx)
	if err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(filepath.Join(pinDir, "maps"))
	if err != nil {
		return nil, fmt.Errorf("pinned maps: %w", err)
	}
	var out []MapMemory
	for _, e := range entries {
		m, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, "maps", e.Name()), &ebpf.LoadPinOptions{ReadOnly: true})
		if err != nil {
			return nil, fmt.Errorf("pinned map %s: %w", e.Name(), err)
		}
		info, err := m.Info()
		m.Close()
		if err != nil {
			return nil, fmt.Errorf("pinned map %s: info: %w", e.Name(), err)
		}
		id, ok := info.ID()
		if !ok {
			return nil, fmt.Errorf("pinned map %s: no id", e.Name())
		}
		mm := MapMemory{
			Name: e.Name(), Type: info.Type.String(), KeySize: info.KeySize, ValueSize: info.ValueSize,
			MaxEntries: info.MaxEntries, Predicted: ks.predict(info), Bpftool: memlock[uint32(id)],
		}
		// A ring buffer's max_entries is its size in bytes.
		mm.PerFlow = info.MaxEntries == BenchMaxFlows && info.Type != ebpf.RingBuf
		out = append(out, mm)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Bpftool > out[j].Bpftool })
	return out, nil
}

func formatBytes(n float64) string {
	switch {
	case n >= 1<<30:
		return strconv.FormatFloat(n/(1<<30), 'f', 2, 64) + " GiB"
	case n >= 1<<20:
		return strconv.FormatFloat(n/(1<<20), 'f', 1, 64) + " MiB"
	case n >= 1<<10:
		return strconv.FormatFloat(n/(1<<10), 'f', 1, 64) + " KiB"
	}
	return strconv.FormatFloat(n, 'f', 0, 64) + " B"
}
