package store

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/blocknat/blocknat/test/testutil"
)

// newClock is a settable clock at t, for Options.Now.
func newClock(t time.Time) *testutil.Clock { return testutil.NewClock(t, 0) }

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// openMem opens a store on a fresh in-memory file system.
func openMem(t testing.TB, c *testutil.Clock) (*Store, vfs.FS) {
	t.Helper()
	fs := vfs.NewMem()
	s, err := Open("db", Options{FS: fs, Now: c.Now, Logger: quietLogger()})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s, fs
}

func mustApply(t testing.TB, s *Store, ops ...Op) {
	t.Helper()
	if err := s.Apply(ops); err != nil {
		t.Fatalf("Apply: %v", err)
	}
}

func activate(sub uint32, inside, public string, lo, hi uint16, start time.Time, epoch uint32) Op {
	return Op{Kind: OpActivate, Record: Record{
		Subscriber: sub, Inside: netip.MustParseAddr(inside), Public: netip.MustParseAddr(public),
		PortLo: lo, PortHi: hi, Start: start, Epoch: epoch,
	}}
}

func release(sub uint32, public string, lo uint16, end time.Time) Op {
	return Op{Kind: OpRelease, Record: Record{Subscriber: sub, Public: netip.MustParseAddr(public), PortLo: lo, End: end}}
}

// recString is a canonical form of a record for comparisons and messages.
func recString(r Record) string {
	end := "open"
	if !r.End.IsZero() {
		end = r.End.UTC().Format(time.RFC3339Nano)
	}
	return fmt.Sprintf("sub=%d in=%s pub=%s ports=%d-%d [%s, %s] epoch=%d flags=%d",
		r.Subscriber, r.Inside, r.Public, r.PortLo, r.PortHi, r.Start.UTC().Format(time.RFC3339Nano), end, r.Epoch, r.Flags)
}

func recStrings(rs []Record) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = recString(r)
	}
	return out
}

func sortedStrings(rs []Record) []string {
	out := recStrings(rs)
	sort.Strings(out)
	return out
}

func diffLists(got, want []string) string {
	if strings.Join(got, "\n") == strings.Join(want, "\n") {
		return ""
	}
	return fmt.Sprintf("got %d:\n  %s\nwant %d:\n  %s", len(got), strings.Join(got, "\n  "), len(want), strings.Join(want, "\n  "))
}

func exportAll(t testing.TB, s *Store) []Record {
	t.Helper()
	var out []Record
	err := s.Export(time.Unix(0, 0), time.Date(2200, 1, 1, 0, 0, 0, 0, time.UTC), func(r Record) error {
		out = append(out, r)
		return nil
	})
	if err != nil {
		t.Fatalf("Export: %v", err)
	}
	return out
}

// dayOps returns, for each of subs subscribers, perSub activations and
// releases inside the UTC day starting at dayBegin, with nanosecond starts,
// laid out like a deterministic NAT with 64 subscribers per public address
// and 1008-port blocks.
func dayOps(rng interface{ Int64N(int64) int64 }, subs, perSub int, dayBegin time.Time) []Op {
	ops := make([]Op, 0, 2*subs*perSub)
	slot := 24 * time.Hour / time.Duration(perSub)
	for i := range subs {
		in := netip.AddrFrom4([4]byte{100, 64 + byte(i>>16), byte(i >> 8), byte(i)})
		pub := netip.AddrFrom4([4]byte{198, 51, byte(100 + i/64/256), byte(i / 64 % 256)})
		lo := uint16(1024 + (i%64)*1008)
		for k := range perSub {
			slotBegin := dayBegin.Add(time.Duration(k) * slot)
			start := slotBegin.Add(time.Duration(rng.Int64N(int64(slot / 2))))
			end := start.Add(time.Minute + time.Duration(rng.Int64N(int64(slot/2-time.Minute))))
			ops = append(ops,
				Op{Kind: OpActivate, Record: Record{Subscriber: uint32(i), Inside: in, Public: pub, PortLo: lo, PortHi: lo + 1007, Start: start, Epoch: 3}},
				Op{Kind: OpRelease, Record: Record{Subscriber: uint32(i), Public: pub, PortLo: lo, End: end}})
		}
	}
	return ops
}

// applyChunks applies ops in batches of n.
func applyChunks(t testing.TB, s *Store, ops []Op, n int) {
	t.Helper()
	for len(ops) > 0 {
		k := min(n, len(ops))
		mustApply(t, s, ops[:k]...)
		ops = ops[k:]
	}
}

// dayLeases returns, for each of addrs inside addresses (those dayOps gives
// its subscribers), perDay DHCP leases inside the UTC day starting at
// dayBegin: each a grant to a new device, most with a hostname and a
// client id as dnsmasq reports them, released before the next slot.
func dayLeases(rng interface{ Int64N(int64) int64 }, addrs, perDay int, dayBegin time.Time) []LeaseEvent {
	evs := make([]LeaseEvent, 0, 2*addrs*perDay)
	slot := 24 * time.Hour / time.Duration(perDay)
	for i := range addrs {
		in := netip.AddrFrom4([4]byte{100, 64 + byte(i>>16), byte(i >> 8), byte(i)})
		for k := range perDay {
			start := dayBegin.Add(time.Duration(k)*slot + time.Duration(rng.Int64N(int64(5*time.Minute))))
			end := start.Add(slot - 10*time.Minute - time.Duration(rng.Int64N(int64(slot/4))))
			r := uint64(rng.Int64N(1 << 40))
			hw := net.HardwareAddr{0x02 | byte(r>>40)&0xfc, byte(r >> 32), byte(r >> 24), byte(r >> 16), byte(r >> 8), byte(r)}
			add := LeaseEvent{Kind: LeaseAdd, Time: start, Inside: in, MAC: hw, ClientID: append([]byte{1}, hw...),
				Expires: start.Add(slot), Source: "dnsmasq"}
			if r%3 != 0 {
				add.Hostname = fmt.Sprintf("phone-%04x", r&0xffff)
			}
			evs = append(evs, add, LeaseEvent{Kind: LeaseRelease, Time: end, Inside: in, MAC: hw, Source: "dnsmasq"})
		}
	}
	return evs
}

// applyLeaseChunks applies lease events in batches of n.
func applyLeaseChunks(t testing.TB, s *Store, evs []LeaseEvent, n int) {
	t.Helper()
	for len(evs) > 0 {
		k := min(n, len(evs))
		mustApplyLeases(t, s, evs[:k]...)
		evs = evs[k:]
	}
}
