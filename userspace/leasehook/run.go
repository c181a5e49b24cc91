package leasehook

import (
	"errors"
	"fmt"
)

// QueuedError means the agent did not take the events but they are safe in
// the spool: the hook should exit 0, so that the DHCP server neither logs a
// failure nor retries, and the next hook call or the agent's start delivers
// them. Any other error from Run means events may be lost.
type QueuedError struct {
	Events int    // new events queued by this call
	Dir    string // the spool
	Err    error  // why delivery failed
}

func (e *QueuedError) Error() string {
	if e.Events == 0 {
		return fmt.Sprintf("lease events stay queued in %s for later delivery: %v", e.Dir, e.Err)
	}
	return fmt.Sprintf("%d lease events queued in %s for later delivery: %v", e.Events, e.Dir, e.Err)
}

func (e *QueuedError) Unwrap() error { return e.Err }

// Run delivers what is queued in spool and then events, so the agent sees
// lease changes in the order they happened. If either send fails, events go
// into the spool behind the older ones and Run returns a *QueuedError.
//
// Run holds the spool lock throughout, so two hook processes cannot overtake
// each other between the queue and the new events. If the lock is not free
// within spool.LockWait, the events are queued without it.
func Run(events []Event, spool *Spool, send func([]Event) error) error {
	for i, ev := range events {
		if err := ev.Validate(); err != nil {
			return fmt.Errorf("lease event %d: %w", i, err)
		}
	}
	unlock, err := spool.lock()
	if err != nil {
		return spool.queue(events, err)
	}
	defer unlock()

	_, err = spool.deliverLocked(send)
	var corrupt *CorruptError
	if err != nil && !errors.As(err, &corrupt) {
		// Sending the new events now would put them ahead of older ones.
		return spool.queue(events, err)
	}
	if len(events) > 0 {
		if err := send(events); err != nil {
			return spool.queue(events, fmt.Errorf("send %d lease events: %w", len(events), err))
		}
	}
	if corrupt != nil {
		return corrupt
	}
	return nil
}

func (s *Spool) queue(events []Event, cause error) error {
	if err := s.putAll(events); err != nil {
		return fmt.Errorf("%d lease events lost: delivery failed (%v) and queueing failed: %w", len(events), cause, err)
	}
	return &QueuedError{Events: len(events), Dir: s.dir, Err: cause}
}
