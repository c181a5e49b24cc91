package store

import "fmt"

// CurrentLeases returns every lease held now (by the store's clock): the
// current lease of each address whose expiry has not passed, ordered by
// address. The agent binds these addresses to their MACs in the data
// plane, so that a device cannot send with a neighbour's leased address.
func (s *Store) CurrentLeases() ([]Lease, error) {
	var out []Lease
	err := s.read("current leases", func(v *view) error {
		return v.scan([]byte{prefixLeaseHeld}, []byte{prefixLeaseHeld + 1}, func(k, val []byte) error {
			in, err := parseHeldKey(k)
			if err != nil {
				return err
			}
			h, err := decodeHeld(val)
			if err != nil {
				return err
			}
			if l := h.lease(in, v.now); !l.Ended {
				out = append(out, l)
			}
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("current leases: %w", err)
	}
	return out, nil
}
