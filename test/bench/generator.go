package bench

import (
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// Workload is what a Generator sends: Flows distinct (source address,
// source port) pairs, spread round-robin over Subscribers, each subscriber
// talking to several of Destinations, each flow sent once per Flows frames
// (see Flow).
type Workload struct {
	Flows        int
	Subscribers  int
	Destinations int
	// Proto is unix.IPPROTO_UDP (the default) or unix.IPPROTO_TCP (SYNs).
	Proto uint8
	// DestPort is the destination port of every frame; 443 by default.
	DestPort uint16
	// FirstSourcePort is the port of each subscriber's first flow; 10000
	// by default.
	FirstSourcePort uint16
}

// frameLen is the smallest Ethernet frame without its FCS: 14 + 20 + the
// L4 header + zeros. Small frames make the per-packet cost the whole cost.
const frameLen = 60

// runChunk is how many frames one BPF_PROG_RUN call sends: tens of
// milliseconds of work, so the syscall's own cost vanishes and a stop
// request is seen promptly.
const runChunk = 1 << 16

func (w *Workload) fill() error {
	if w.Flows <= 0 {
		return fmt.Errorf("workload: flows %d: must be positive", w.Flows)
	}
	if w.Subscribers <= 0 {
		w.Subscribers = 1
	}
	if w.Subscribers > w.Flows {
		w.Subscribers = w.Flows
	}
	if w.Destinations <= 0 {
		w.Destinations = 1
	}
	if w.Proto == 0 {
		w.Proto = unix.IPPROTO_UDP
	}
	if w.Proto != unix.IPPROTO_UDP && w.Proto != unix.IPPROTO_TCP {
		return fmt.Errorf("workload: protocol %d: want UDP or TCP", w.Proto)
	}
	if w.DestPort == 0 {
		w.DestPort = 443
	}
	if w.FirstSourcePort == 0 {
		w.FirstSourcePort = 10000
	}
	perSubscriber := (w.Flows + w.Subscribers - 1) / w.Subscribers
	if int(w.FirstSourcePort)+perSubscriber > 65536 {
		return fmt.Errorf("workload: %d flows per subscriber from port %d run past port 65535", perSubscriber, w.FirstSourcePort)
	}
	if last := subscriberAddr(w.Subscribers - 1); !InsidePrefix.Contains(last) {
		return fmt.Errorf("workload: %d subscribers do not fit %s from %s", w.Subscribers, InsidePrefix, FirstSubscriber)
	}
	return nil
}

// subscriberAddr is the address of the generator's subscriber i.
func subscriberAddr(i int) netip.Addr {
	return addrAdd(FirstSubscriber, uint32(i))
}

// Flow returns the source and destination of flow i, as the generator
// builds them: subscriber s = i % Subscribers's k-th flow, k = i /
// Subscribers, from port FirstSourcePort + k to destination (s + k) %
// Destinations.
func (w Workload) Flow(i int) (src, dst netip.AddrPort) {
	s, k := i%w.Subscribers, i/w.Subscribers
	src = netip.AddrPortFrom(subscriberAddr(s), w.FirstSourcePort+uint16(k))
	dst = netip.AddrPortFrom(addrAdd(FirstDestination, uint32((s+k)%w.Destinations)), w.DestPort)
	return src, dst
}

func addrAdd(a netip.Addr, n uint32) netip.Addr {
	b := a.As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]) + n
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func hostOrder(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

// Generator sends a Workload into the bed's router with xdp_trafficgen.
type Generator struct {
	bed  *Bed
	w    Workload
	objs trafficgenObjects
}

// NewGenerator loads the generator for w.
func NewGenerator(bed *Bed, w Workload) (*Generator, error) {
	if err := w.fill(); err != nil {
		return nil, err
	}
	spec, err := loadTrafficgen()
	if err != nil {
		return nil, fmt.Errorf("generator: %w", err)
	}
	var src, dst [6]byte
	copy(src[:], bed.GenMAC)
	copy(dst[:], bed.RouterInMAC)
	for name, v := range map[string]any{
		"flows":        uint32(w.Flows),
		"subscribers":  uint32(w.Subscribers),
		"first_saddr":  hostOrder(FirstSubscriber),
		"first_sport":  uint32(w.FirstSourcePort),
		"destinations": uint32(w.Destinations),
		"first_daddr":  hostOrder(FirstDestination),
		"dport":        uint32(w.DestPort),
		"proto":        uint32(w.Proto),
		"ttl":          uint32(64),
		"src_mac":      src,
		"dst_mac":      dst,
	} {
		if err := spec.Variables[name].Set(v); err != nil {
			return nil, fmt.Errorf("generator: set %s: %w", name, err)
		}
	}
	g := &Generator{bed: bed, w: w}
	if err := spec.LoadAndAssign(&g.objs, nil); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("generator: load: %+v", ve)
		}
		return nil, fmt.Errorf("generator: load: %w", err)
	}
	return g, nil
}

// Workload is what the generator sends.
func (g *Generator) Workload() Workload { return g.w }

// Close unloads the generator.
func (g *Generator) Close() error { return g.objs.Close() }

// Sent is the number of frames built since load.
func (g *Generator) Sent() (uint64, error) {
	var n uint64
	if err := g.objs.Seq.Get(&n); err != nil {
		return 0, fmt.Errorf("generator: read seq: %w", err)
	}
	return n, nil
}

// xdpMD mirrors struct xdp_md, BPF_PROG_RUN's context for XDP.
type xdpMD struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

// run sends about n frames in one BPF_PROG_RUN call. The call runs in the
// generator's namespace because the kernel resolves the ingress ifindex
// there; the frames are processed by the router and the sink in softirq
// on the same CPU before the call returns.
func (g *Generator) run(n uint32) error {
	frame := make([]byte, frameLen)
	return g.bed.Gen.Do(func() error {
		_, err := g.objs.XdpTrafficgen.Run(&ebpf.RunOptions{
			Data:    frame,
			Repeat:  n,
			Flags:   unix.BPF_F_TEST_XDP_LIVE_FRAMES,
			Context: xdpMD{DataEnd: frameLen, IngressIfindex: uint32(g.bed.GenIndex)},
		})
		if err != nil {
			return fmt.Errorf("generator: BPF_PROG_RUN live frames on %s: %w", GenIface, err)
		}
		return nil
	})
}

// testRunAttr is the BPF_PROG_TEST_RUN part of union bpf_attr.
type testRunAttr struct {
	ProgFD, Retval, DataSizeIn, DataSizeOut uint32
	DataIn, DataOut                         uint64
	Repeat, Duration                        uint32
	CtxSizeIn, CtxSizeOut                   uint32
	CtxIn, CtxOut                           uint64
	Flags, CPU, BatchSize                   uint32
	_                                       uint32
}

// errInterrupted: a signal cut a timed run short; its frames were sent but
// not timed.
var errInterrupted = errors.New("interrupted")

// timedRun sends n frames in one BPF_PROG_RUN call and returns the time
// the kernel measured for them. cilium/ebpf offers the duration only
// without flags, hence the raw call.
//
// The kernel times its batches of 64 frames from the first to the last,
// and every batch ends by running the softirq work it caused: the router's
// and the sink's processing, on this CPU. So the time covers generator,
// veths, router and sink, and leaves out the set-up of each call (the XDP
// dispatcher update costs ~20 ms per call on this kernel, which would
// distort a wall-clock rate) and the moments between batches when another
// task had the CPU.
func (g *Generator) timedRun(n uint32) (time.Duration, error) {
	frame := make([]byte, frameLen)
	ctx := xdpMD{DataEnd: frameLen, IngressIfindex: uint32(g.bed.GenIndex)}
	attr := testRunAttr{
		ProgFD:     uint32(g.objs.XdpTrafficgen.FD()),
		DataSizeIn: frameLen,
		DataIn:     uint64(uintptr(unsafe.Pointer(&frame[0]))),
		Repeat:     n,
		CtxSizeIn:  uint32(unsafe.Sizeof(ctx)),
		CtxIn:      uint64(uintptr(unsafe.Pointer(&ctx))),
		Flags:      unix.BPF_F_TEST_XDP_LIVE_FRAMES,
	}
	var d time.Duration
	err := g.bed.Gen.Do(func() error {
		_, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_PROG_TEST_RUN, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
		runtime.KeepAlive(frame)
		runtime.KeepAlive(&ctx)
		switch errno {
		case 0:
		case unix.EINTR:
			return errInterrupted
		default:
			return fmt.Errorf("generator: BPF_PROG_RUN live frames on %s: %w", GenIface, errno)
		}
		// Duration is the kernel's time per frame, in ns.
		d = time.Duration(attr.Duration) * time.Duration(n)
		return nil
	})
	return d, err
}

// Send sends at least n frames.
func (g *Generator) Send(n uint64) error {
	start, err := g.Sent()
	if err != nil {
		return err
	}
	for {
		sent, err := g.Sent()
		if err != nil {
			return err
		}
		if sent-start >= n {
			return nil
		}
		if err := g.run(uint32(min(n-(sent-start), runChunk))); err != nil {
			return err
		}
	}
}

// SendFor sends for about d and returns the frames sent and the time it
// took.
func (g *Generator) SendFor(d time.Duration) (sent uint64, elapsed time.Duration, err error) {
	before, err := g.Sent()
	if err != nil {
		return 0, 0, err
	}
	began := time.Now()
	for time.Since(began) < d {
		if err := g.run(runChunk); err != nil {
			return 0, 0, err
		}
	}
	elapsed = time.Since(began)
	after, err := g.Sent()
	if err != nil {
		return 0, 0, err
	}
	return after - before, elapsed, nil
}
