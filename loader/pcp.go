package loader

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// PCPEntry is a PCP mapping's state in the pinned pcp_entries table
// (struct pcp_entry): written by the agent's PCP server only.
type PCPEntry = natPcpEntry

// Flags of a PCPEntry (enum pcp_entry_flags).
const (
	PCPEntryNATPMP  = uint8(natPcpEntryFlagsPCP_ENTRY_NATPMP)
	PCPEntryOpen    = uint8(natPcpEntryFlagsPCP_ENTRY_OPEN)
	PCPEntryAdopted = uint8(natPcpEntryFlagsPCP_ENTRY_ADOPTED)
)

// The PCP server's port (RFC 6887 §19.1), and the port the inside
// program sends a request to it that fails the source validation to.
const (
	PCPServerPort  = uint16(natPcpPortsPCP_SERVER_PORT)
	PCPSuspectPort = uint16(natPcpPortsPCP_SUSPECT_PORT)
)

// FlowRevOpen is FlowRev.Flags' bit for a mapping a PCP MAP holds open.
const FlowRevOpen = uint8(natFlowRevFlagsFLOW_REV_OPEN)

// Why PCPMap made no mapping.
var (
	ErrPCPBlockFull = errors.New("no free port in the subscriber's block")
	ErrPCPTaken     = errors.New("the suggested port is not free")
	// ErrPCPNotOwnBlock: traffic already mapped the endpoint, in an
	// overflow block, which the subscriber holds only while it is busy.
	ErrPCPNotOwnBlock = errors.New("the endpoint is mapped outside the subscriber's own block")
	ErrPCPBadRequest  = errors.New("the inside address is not the subscriber's, or the protocol is not TCP or UDP")
	// ErrPCPTableFull: pcp_entries holds PCPEntryLimit entries.
	ErrPCPTableFull = errors.New("the PCP table is full")
)

// PCPEntryLimit is the size of pcp_entries (bpf/maps.h).
const PCPEntryLimit = 1 << 20

// PCPMapping is what PCPMap made or took over.
type PCPMapping struct {
	Public netip.Addr
	Port   uint16
	// Adopted: traffic had made the mapping already.
	Adopted bool
}

// pcpRaceRetries bounds how often PCPMap asks again when another CPU
// maps or expires the same endpoint while it runs: each retry sees the
// other's result, so a second one is already rare.
const pcpRaceRetries = 4

// PCPMap makes the mapping of the internal endpoint (inside, port, proto)
// for subscriber sub in its own block, trying the suggested port first
// (0: none; with required, that port or nothing), or takes over the one
// traffic made. It runs the data plane's own code (pcp_map in
// bpf/nat.c), so the port search and the block's activation, and with
// it the record, are exactly a packet's. With open, inbound from any
// remote reaches the mapping whatever the filtering mode.
func (n *NAT) PCPMap(inside netip.Addr, port uint16, proto uint8, sub uint32, suggested uint16, required, open bool) (PCPMapping, error) {
	if !inside.Is4() {
		return PCPMapping{}, fmt.Errorf("pcp map %s: %w", inside, ErrPCPBadRequest)
	}
	op := natPcpOp{
		Key:        FlowKey{Addr: be32(inside), Port: PortToBE16(port), Proto: proto},
		Subscriber: sub,
		Suggested:  PortToBE16(suggested),
	}
	if required {
		op.Flags |= uint8(natPcpOpFlagsPCP_OP_REQUIRED)
	}
	if open {
		op.Flags |= uint8(natPcpOpFlagsPCP_OP_OPEN)
	}
	for try := 0; ; try++ {
		out, err := n.runPCPOp(op)
		if err != nil {
			return PCPMapping{}, err
		}
		switch natPcpOpResult(out.Result) {
		case natPcpOpResultPCP_OP_OK:
			return PCPMapping{Public: AddrFromBE32(out.NatAddr), Port: PortFromBE16(out.NatPort), Adopted: out.Adopted != 0}, nil
		case natPcpOpResultPCP_OP_BLOCK_FULL:
			return PCPMapping{}, ErrPCPBlockFull
		case natPcpOpResultPCP_OP_TAKEN:
			return PCPMapping{}, ErrPCPTaken
		case natPcpOpResultPCP_OP_NOT_OWN_BLOCK:
			return PCPMapping{}, ErrPCPNotOwnBlock
		case natPcpOpResultPCP_OP_BAD_REQUEST:
			return PCPMapping{}, ErrPCPBadRequest
		case natPcpOpResultPCP_OP_RACE:
			if try < pcpRaceRetries {
				continue
			}
			return PCPMapping{}, fmt.Errorf("pcp map: the endpoint changed under %d tries", try+1)
		default:
			return PCPMapping{}, fmt.Errorf("pcp map: a flow table update failed (result %d)", out.Result)
		}
	}
}

func (n *NAT) runPCPOp(op natPcpOp) (natPcpOp, error) {
	in, err := binary.Append(nil, binary.NativeEndian, op)
	if err != nil {
		return op, err
	}
	out := make([]byte, len(in))
	ret, err := n.objs.PcpMap.Run(&ebpf.RunOptions{Data: in, DataOut: out})
	if err != nil {
		return op, fmt.Errorf("run pcp_map: %w", err)
	}
	if ret != pcpAnswered {
		return op, fmt.Errorf("run pcp_map: returned %d", ret)
	}
	var res natPcpOp
	if _, err := binary.Decode(out, binary.NativeEndian, &res); err != nil {
		return op, fmt.Errorf("read pcp_map's answer: %w", err)
	}
	return res, nil
}

// pcpAnswered is XDP_PASS, which pcp_map returns once it has answered.
const pcpAnswered = 2

// PCPUnmap ends PCP's hold on the mapping of key whose public side was
// public:port. With drop, the mapping goes (both entries, and only while
// the forward one still maps to public:port: the sweeper may have ended it
// and traffic made another). Without, it stays, no longer open, under the
// idle timeouts like any mapping traffic made.
func (n *NAT) PCPUnmap(key FlowKey, public netip.Addr, port uint16, drop bool) error {
	nat, natPort := be32(public), PortToBE16(port)
	if drop {
		_, _, err := n.ExpireFlow(key, func(v FlowFwd) bool { return v.NatAddr == nat && v.NatPort == natPort })
		return err
	}
	rkey := FlowKey{Addr: nat, Port: natPort, Proto: key.Proto}
	var rev FlowRev
	if err := n.objs.FlowsRev.Lookup(&rkey, &rev); errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil
	} else if err != nil {
		return fmt.Errorf("read flows_rev: %w", err)
	}
	if rev.Addr != key.Addr || rev.Port != key.Port || rev.Flags&FlowRevOpen == 0 {
		return nil
	}
	// A read and a write: the data plane may flip the entry's closing
	// copy in between, which only costs that copy one packet's lag, as
	// the next FIN or ACK writes it again.
	rev.Flags &^= FlowRevOpen
	if err := n.objs.FlowsRev.Update(&rkey, &rev, ebpf.UpdateExist); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("write flows_rev: %w", err)
	}
	return nil
}

// PCPEntries calls fn for every PCP entry.
func (n *NAT) PCPEntries(fn func(FlowKey, PCPEntry) error) error {
	return eachEntry(n.objs.PcpEntries, "pcp_entries", fn)
}

// PutPCPEntry writes the entry of key, new or not.
func (n *NAT) PutPCPEntry(key FlowKey, e PCPEntry) error {
	if err := n.objs.PcpEntries.Update(&key, &e, ebpf.UpdateAny); err != nil {
		if errors.Is(err, unix.E2BIG) {
			return fmt.Errorf("write pcp_entries: %w (%d entries)", ErrPCPTableFull, PCPEntryLimit)
		}
		return fmt.Errorf("write pcp_entries: %w", err)
	}
	return nil
}

// DeletePCPEntry removes the entry of key; none is no error.
func (n *NAT) DeletePCPEntry(key FlowKey) error {
	if err := n.objs.PcpEntries.Delete(&key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete from pcp_entries: %w", err)
	}
	return nil
}

// PCPHeld is the end of every PCP lifetime (CLOCK_MONOTONIC ns) by the
// mapping's internal endpoint: until then the sweeper keeps the mapping
// however idle.
func (n *NAT) PCPHeld() (map[FlowKey]uint64, error) {
	held := map[FlowKey]uint64{}
	err := n.PCPEntries(func(k FlowKey, e PCPEntry) error {
		held[k] = e.ExpiresNs
		return nil
	})
	return held, err
}

// PCPEpochStart is when the PCP state began (CLOCK_MONOTONIC ns), set to
// now the first time it is asked: it lives in a pinned table, so it lasts
// as long as the mappings do (RFC 6887 §8.5).
func (n *NAT) PCPEpochStart(now uint64) (uint64, error) {
	var start uint64
	if err := n.objs.PcpEpoch.Lookup(uint32(0), &start); err != nil {
		return 0, fmt.Errorf("read pcp_epoch: %w", err)
	}
	if start != 0 {
		return start, nil
	}
	if err := n.objs.PcpEpoch.Update(uint32(0), now, ebpf.UpdateAny); err != nil {
		return 0, fmt.Errorf("write pcp_epoch: %w", err)
	}
	return now, nil
}

// PortToBE16 turns a host-order port into the network order a map holds.
func PortToBE16(v uint16) uint16 { return PortFromBE16(v) }

// copyPCP carries the PCP state of every mapping a reload kept into the
// new tables, open again where a MAP held it open, with the subscriber
// number the new mapping gives; that of a dropped mapping goes with it.
func copyPCP(from, to *NAT) (kept, dropped int, err error) {
	err = from.PCPEntries(func(key FlowKey, e PCPEntry) error {
		fwd, ok, err := to.LookupFlow(key)
		if err != nil {
			return err
		}
		if !ok || fwd.NatAddr != e.PublicAddr || fwd.NatPort != e.PublicPort {
			dropped++
			return nil
		}
		e.Subscriber = fwd.Subscriber
		if err := to.PutPCPEntry(key, e); err != nil {
			return err
		}
		if e.Flags&PCPEntryOpen != 0 {
			rkey := reverseKey(key, fwd)
			var rev FlowRev
			if err := to.objs.FlowsRev.Lookup(&rkey, &rev); err != nil {
				return fmt.Errorf("read flows_rev: %w", err)
			}
			rev.Flags |= FlowRevOpen
			if err := to.objs.FlowsRev.Update(&rkey, &rev, ebpf.UpdateExist); err != nil {
				return fmt.Errorf("write flows_rev: %w", err)
			}
		}
		kept++
		return nil
	})
	if err != nil {
		return kept, dropped, fmt.Errorf("reload: copy PCP mappings: %w", err)
	}
	return kept, dropped, nil
}

// AddrToBE32 turns an IPv4 address into the network order a map holds.
func AddrToBE32(a netip.Addr) uint32 { return be32(a) }

// ClosePCPOrphans clears the open flag of every mapping no PCP entry
// holds open, and returns how many it closed. An agent killed between
// PCPMap and PutPCPEntry leaves such a mapping: open to every remote with
// nothing that will ever expire or delete it but the idle timeouts. The
// agent runs this at the PCP server's start, before the server reads its
// entries, so the entries alone decide what is open.
func (n *NAT) ClosePCPOrphans() (int, error) {
	held := map[FlowKey]PCPEntry{}
	if err := n.PCPEntries(func(k FlowKey, e PCPEntry) error {
		held[k] = e
		return nil
	}); err != nil {
		return 0, err
	}
	var orphans []FlowKey
	err := eachEntry(n.objs.FlowsRev, "flows_rev", func(rkey FlowKey, rev FlowRev) error {
		if rev.Flags&FlowRevOpen == 0 {
			return nil
		}
		e, ok := held[FlowKey{Addr: rev.Addr, Port: rev.Port, Proto: rkey.Proto}]
		if !ok || e.Flags&PCPEntryOpen == 0 || e.PublicAddr != rkey.Addr || e.PublicPort != rkey.Port {
			orphans = append(orphans, rkey)
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	closed := 0
	for _, rkey := range orphans {
		var rev FlowRev
		if err := n.objs.FlowsRev.Lookup(&rkey, &rev); errors.Is(err, ebpf.ErrKeyNotExist) {
			continue
		} else if err != nil {
			return closed, fmt.Errorf("read flows_rev: %w", err)
		}
		if rev.Flags&FlowRevOpen == 0 {
			continue
		}
		rev.Flags &^= FlowRevOpen
		if err := n.objs.FlowsRev.Update(&rkey, &rev, ebpf.UpdateExist); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return closed, fmt.Errorf("write flows_rev: %w", err)
		}
		closed++
	}
	return closed, nil
}
