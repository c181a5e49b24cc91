package agent

import (
	"context"
	"errors"
	"fmt"
)

// component is one part of the running agent. The agent starts its
// components in order and stops them in reverse, so the order of the list
// (components, in wiring.go) is the start order and its reverse the
// shutdown order that docs/ARCHITECTURE.md gives.
type component struct {
	name  string
	start func(ctx context.Context) error
	// stop ends what start began and waits for it; nil when what start
	// did stays after the agent (the guard, the pinned data plane's
	// links) or needs no end.
	stop func() error
}

// run starts the components in order and, once ctx ends or a start fails,
// stops the ones started, in reverse. A failed start's error is returned
// as it is, joined with what stopping the others reported.
func run(ctx context.Context, components []component) (err error) {
	var started []component
	defer func() {
		for i := len(started) - 1; i >= 0; i-- {
			c := started[i]
			if c.stop == nil {
				continue
			}
			if serr := c.stop(); serr != nil {
				err = errors.Join(err, fmt.Errorf("stop %s: %w", c.name, serr))
			}
		}
	}()
	for _, c := range components {
		if err := c.start(ctx); err != nil {
			return err
		}
		started = append(started, c)
	}
	<-ctx.Done()
	return nil
}
