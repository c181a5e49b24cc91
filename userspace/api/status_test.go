package api

import (
	"context"
	"sync/atomic"
	"testing"

	"github.com/blocknat/blocknat/userspace/store"
	"github.com/blocknat/blocknat/userspace/wire"
)

// statsCounter counts the reads of the store's figures.
type statsCounter struct {
	Store
	reads atomic.Int32
}

func (s *statsCounter) Stats() (store.Stats, error) {
	s.reads.Add(1)
	return s.Store.Stats()
}

// TestStatusReadsStoreOnce: with an agent status, one status request reads
// the store's figures once, in the agent, and the answer's store part is
// what the agent read; without one, the server reads them itself, once.
func TestStatusReadsStoreOnce(t *testing.T) {
	counted := &statsCounter{Store: openFixtureStore(t)}
	h := newHarness(t, harnessOptions{roles: rootRoles(RoleAdmin), store: counted,
		status: func(context.Context) (wire.Status, store.Stats, error) {
			st, err := counted.Stats()
			return wire.Status{Subscribers: 512, Records: wire.RecordStatus{OpenRecords: st.OpenRecords}}, st, err
		}})
	ans, err := h.client.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if n := counted.reads.Load(); n != 1 {
		t.Errorf("one status request read the store's figures %d times", n)
	}
	if ans.Agent == nil || ans.Agent.Subscribers != 512 || ans.Store.OpenRecords != 1 || ans.Agent.Records.OpenRecords != 1 || ans.Store.Epochs != 2 {
		t.Errorf("status %+v, agent %+v", ans, ans.Agent)
	}

	alone := &statsCounter{Store: openFixtureStore(t)}
	h = newHarness(t, harnessOptions{roles: rootRoles(RoleAdmin), store: alone})
	if ans, err = h.client.Status(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := alone.reads.Load(); n != 1 || ans.Agent != nil || ans.Store.Epochs != 2 {
		t.Errorf("without an agent: %d reads, status %+v", n, ans)
	}
}
