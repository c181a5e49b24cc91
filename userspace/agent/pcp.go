package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/blocknat/blocknat/loader"
	"github.com/blocknat/blocknat/userspace/logattr"
	"github.com/blocknat/blocknat/userspace/metrics"
	"github.com/blocknat/blocknat/userspace/pcpserver"
)

// pcpPlane is the PCP server's view of the data plane: the kernel tables
// of the plane in force, read under natMu like every other reader, so that
// a reload never closes them under a request.
type pcpPlane struct{ a *Agent }

func (p pcpPlane) nat() (*loader.NAT, func()) {
	p.a.natMu.RLock()
	return p.a.nat, p.a.natMu.RUnlock
}

func flowKeyOf(k pcpserver.Key) loader.FlowKey {
	return loader.FlowKey{Addr: loader.AddrToBE32(k.Inside), Port: loader.PortToBE16(k.Port), Proto: k.Proto}
}

func (p pcpPlane) Map(r pcpserver.MapRequest) (pcpserver.MapResult, error) {
	nat, done := p.nat()
	defer done()
	m, err := nat.PCPMap(r.Inside, r.Port, r.Proto, r.Subscriber, r.Suggested, r.Required, r.Open)
	switch {
	case errors.Is(err, loader.ErrPCPBlockFull):
		return pcpserver.MapResult{}, fmt.Errorf("%w: %w", pcpserver.ErrBlockFull, err)
	case errors.Is(err, loader.ErrPCPTaken):
		return pcpserver.MapResult{}, fmt.Errorf("%w: %w", pcpserver.ErrSuggestedTaken, err)
	case errors.Is(err, loader.ErrPCPNotOwnBlock):
		return pcpserver.MapResult{}, fmt.Errorf("%w: %w", pcpserver.ErrNotOwnBlock, err)
	case err != nil:
		return pcpserver.MapResult{}, err
	}
	return pcpserver.MapResult{Public: m.Public, Port: m.Port, Adopted: m.Adopted}, nil
}

func (p pcpPlane) Unmap(e pcpserver.Entry, drop bool) error {
	nat, done := p.nat()
	defer done()
	return nat.PCPUnmap(flowKeyOf(e.Key), e.Public, e.Port, drop)
}

func (p pcpPlane) Entries() ([]pcpserver.Entry, error) {
	nat, done := p.nat()
	defer done()
	var out []pcpserver.Entry
	err := nat.PCPEntries(func(k loader.FlowKey, v loader.PCPEntry) error {
		out = append(out, pcpserver.Entry{
			Key:        pcpserver.Key{Inside: loader.AddrFromBE32(k.Addr), Port: loader.PortFromBE16(k.Port), Proto: k.Proto},
			Subscriber: v.Subscriber,
			Public:     loader.AddrFromBE32(v.PublicAddr),
			Port:       loader.PortFromBE16(v.PublicPort),
			Nonce:      v.Nonce,
			NATPMP:     v.Flags&loader.PCPEntryNATPMP != 0,
			Open:       v.Flags&loader.PCPEntryOpen != 0,
			Adopted:    v.Flags&loader.PCPEntryAdopted != 0,
			Expires:    v.ExpiresNs,
		})
		return nil
	})
	return out, err
}

func (p pcpPlane) Put(e pcpserver.Entry) error {
	v := loader.PCPEntry{ExpiresNs: e.Expires, Nonce: e.Nonce, PublicAddr: loader.AddrToBE32(e.Public),
		PublicPort: loader.PortToBE16(e.Port), Subscriber: e.Subscriber}
	for flag, on := range map[uint8]bool{loader.PCPEntryNATPMP: e.NATPMP, loader.PCPEntryOpen: e.Open, loader.PCPEntryAdopted: e.Adopted} {
		if on {
			v.Flags |= flag
		}
	}
	nat, done := p.nat()
	defer done()
	err := nat.PutPCPEntry(flowKeyOf(e.Key), v)
	if errors.Is(err, loader.ErrPCPTableFull) {
		return fmt.Errorf("%w: %w", pcpserver.ErrTableFull, err)
	}
	return err
}

func (p pcpPlane) Delete(k pcpserver.Key) error {
	nat, done := p.nat()
	defer done()
	return nat.DeletePCPEntry(flowKeyOf(k))
}

func (p pcpPlane) EpochStart() (uint64, error) {
	nat, done := p.nat()
	defer done()
	return nat.PCPEpochStart(uint64(loader.MonotonicNow()))
}

// pcpComponent runs the PCP server (pcp.enabled) on the inside
// interfaces; nothing when it is off. It starts once its sockets are
// open, so a port another program holds fails the start, naming it.
func (a *Agent) pcpComponent() component {
	var stop context.CancelFunc
	done := make(chan error, 1)
	return component{name: "pcp",
		start: func(ctx context.Context) error {
			set := a.cfg.PCPSettings()
			if !set.Enabled {
				close(done)
				return nil
			}
			a.closePCPOrphans()
			srv, err := pcpserver.New(pcpserver.Config{
				Interfaces: a.cfg.Inside.Interfaces, Mapping: a.mapping, Plane: pcpPlane{a}, Clock: a.clock,
				MaxLifetime: time.Duration(set.MaxLifetime), MinLifetime: time.Duration(set.MinLifetime),
				MaxMappings: set.MaxMappings, Rate: set.Rate, Burst: set.Burst, Logger: a.log,
			})
			if err != nil {
				close(done)
				return err
			}
			a.pcp = srv
			ctx, stop = context.WithCancel(ctx)
			go func() { done <- srv.Run(ctx) }()
			select {
			case <-srv.Listening():
				return nil
			case err := <-done:
				close(done)
				return fmt.Errorf("pcp: %w", err)
			}
		},
		stop: func() error {
			if stop == nil {
				return nil
			}
			stop()
			return <-done
		},
	}
}

// pcpFiguresOf is the server's counters as the metrics and the status
// show them: by protocol name, never by subscriber.
func pcpFiguresOf(s pcpserver.Stats) *metrics.PCPFigures {
	f := &metrics.PCPFigures{Mappings: map[string]int{}, Requests: map[metrics.PCPRequest]uint64{},
		Dropped: map[string]uint64{}, Suspect: s.Suspect, Announcements: s.Announcements}
	for proto, n := range s.Mappings {
		switch proto {
		case pcpserver.ProtoTCP:
			f.Mappings["tcp"] = n
		case pcpserver.ProtoUDP:
			f.Mappings["udp"] = n
		}
	}
	for k, n := range s.Requests {
		f.Requests[metrics.PCPRequest{Version: k.Version, Opcode: k.Opcode, Result: k.Result}] = n
	}
	for reason, n := range s.Dropped {
		f.Dropped[string(reason)] = n
	}
	return f
}

// closePCPOrphans closes the mappings left open with no PCP entry, by an
// agent killed between making a mapping and recording it, before the
// server reads its entries: what is open is then exactly what the entries
// say. A failure is logged, not fatal: the orphans idle out as before.
func (a *Agent) closePCPOrphans() {
	nat, done := pcpPlane{a}.nat()
	closed, err := nat.ClosePCPOrphans()
	done()
	switch {
	case err != nil:
		a.log.Warn("could not look for PCP mappings left open without an entry; they close when idle", logattr.Err, err)
	case closed > 0:
		a.log.Warn("closed PCP mappings left open without an entry (the agent stopped between making one and recording it); they stay mapped under the idle timeouts",
			"mappings", closed)
	}
}
