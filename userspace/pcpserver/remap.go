package pcpserver

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/blocknat/blocknat/userspace/logattr"
	"github.com/blocknat/blocknat/userspace/mapping"
)

// Remap moves the server onto a reloaded mapping: subscriber numbers and
// blocks are the new mapping's from now on, and the index is rebuilt from
// the pinned table, which the reload has already cut to the mappings it
// kept (their subscriber numbers rewritten). Until Remap returns, a
// request judged by the old mapping cannot make a wrong mapping: the data
// plane refuses an address that is not the subscriber's it is asked for.
func (s *Server) Remap(m *mapping.Mapping) error {
	if m == nil {
		return errors.New("pcp: remap: no mapping")
	}
	list, err := s.cfg.Plane.Entries()
	if err != nil {
		return fmt.Errorf("pcp: remap: read the pinned mappings: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cfg.Mapping = m
	s.entries = map[Key]Entry{}
	s.byInside = map[netip.Addr]map[Key]struct{}{}
	s.byProto = map[uint8]int{}
	s.expiries = nil
	// The buckets are kept by subscriber number, which the new mapping
	// may give to someone else.
	s.limiters = map[uint32]*subscriberLimiter{}
	for _, e := range list {
		s.remember(e)
	}
	s.log.Info("pcp mappings carried onto the new mapping", logattr.Count, len(list))
	return nil
}
