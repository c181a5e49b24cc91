package bench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// ThroughputConfig says what RunThroughput measures.
type ThroughputConfig struct {
	Routers     []string
	FlowCounts  []int
	Subscribers int
	// Destinations spreads the flows over this many remote addresses, so
	// that a NAT choosing ports per destination (masquerade) is not forced
	// to use one port per flow.
	Destinations int
	Reps         int
	// Warmup is sent before each measurement, after one frame per flow,
	// so every router is measured on established flows with warm caches.
	Warmup   time.Duration
	Duration time.Duration
}

// Sample is one measurement of one router.
type Sample struct {
	Router   string
	Flows    int
	Rep      int
	Sent     uint64        // frames the generator built
	Received uint64        // frames the sink counted
	Busy     time.Duration // the kernel's time for them (see Generator.timedRun)
	Wall     time.Duration // the measurement's wall-clock time, for reference
}

// Mpps is the rate the sink received at: frames per second of the one CPU
// that carries them from generator to sink.
func (s Sample) Mpps() float64 { return float64(s.Received) / s.Busy.Seconds() / 1e6 }

// Loss is the fraction of sent frames that did not reach the sink.
func (s Sample) Loss() float64 {
	if s.Sent == 0 {
		return 0
	}
	return 1 - float64(min(s.Received, s.Sent))/float64(s.Sent)
}

// RunThroughput measures every router at every flow count, Reps times,
// interleaved: within a repetition each flow count is measured for each
// router in turn (A B C A B C ...), so that a slow moment of this shared
// machine hits every router alike and the ratios of one repetition compare
// routers measured seconds apart.
func RunThroughput(ctx context.Context, bed *Bed, cfg ThroughputConfig, log *slog.Logger) (_ []Sample, err error) {
	routers := make([]Router, len(cfg.Routers))
	for i, name := range cfg.Routers {
		if routers[i], err = NewRouter(name); err != nil {
			return nil, err
		}
	}
	gens := make(map[int]*Generator)
	defer func() {
		for _, g := range gens {
			err = errors.Join(err, g.Close())
		}
	}()
	for _, flows := range cfg.FlowCounts {
		g, err := NewGenerator(bed, Workload{Flows: flows, Subscribers: cfg.Subscribers, Destinations: cfg.Destinations})
		if err != nil {
			return nil, err
		}
		gens[flows] = g
	}
	sink, err := NewSink(bed, false)
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, sink.Close()) }()

	var samples []Sample
	for rep := range cfg.Reps {
		for _, flows := range cfg.FlowCounts {
			for _, r := range routers {
				if err := ctx.Err(); err != nil {
					return samples, err
				}
				s, err := measure(ctx, bed, r, gens[flows], sink, cfg)
				if err != nil {
					return samples, fmt.Errorf("%s, %d flows, repetition %d: %w", r.Name(), flows, rep+1, err)
				}
				s.Rep = rep + 1
				log.Info("throughput", "router", s.Router, "flows", s.Flows, "rep", s.Rep,
					"mpps", fmt.Sprintf("%.3f", s.Mpps()), "loss", fmt.Sprintf("%.4f", s.Loss()))
				samples = append(samples, s)
			}
		}
	}
	return samples, nil
}

func measure(ctx context.Context, bed *Bed, r Router, g *Generator, sink *Sink, cfg ThroughputConfig) (_ Sample, err error) {
	w := g.Workload()
	if err := r.Start(ctx, bed); err != nil {
		return Sample{}, err
	}
	defer func() {
		if stopErr := r.Stop(context.WithoutCancel(ctx), bed); stopErr != nil {
			err = errors.Join(err, stopErr)
		}
	}()
	// Every flow once, so that state-keeping routers hold them all, then
	// a warm-up at full rate.
	if err := g.Send(uint64(w.Flows)); err != nil {
		return Sample{}, err
	}
	if _, _, err := g.SendFor(cfg.Warmup); err != nil {
		return Sample{}, err
	}
	if err := r.Check(ctx, bed, w); err != nil {
		return Sample{}, err
	}
	var sent, received, untranslated uint64
	var busy time.Duration
	began := time.Now()
	for time.Since(began) < cfg.Duration {
		before, err := sink.Counts()
		if err != nil {
			return Sample{}, err
		}
		seqBefore, err := g.Sent()
		if err != nil {
			return Sample{}, err
		}
		d, err := g.timedRun(runChunk)
		if errors.Is(err, errInterrupted) {
			continue // sent but not timed: left out
		}
		if err != nil {
			return Sample{}, err
		}
		after, err := sink.Counts()
		if err != nil {
			return Sample{}, err
		}
		seqAfter, err := g.Sent()
		if err != nil {
			return Sample{}, err
		}
		busy += d
		sent += seqAfter - seqBefore
		received += after.Frames - before.Frames
		untranslated += after.FromInside - before.FromInside
	}
	switch {
	case received == 0:
		return Sample{}, fmt.Errorf("the sink received nothing of %d frames sent", sent)
	case r.Translates() && untranslated != 0:
		return Sample{}, fmt.Errorf("%d of %d frames reached the sink untranslated", untranslated, received)
	case !r.Translates() && untranslated != received:
		return Sample{}, fmt.Errorf("%d of %d frames reached the sink translated by a router that does not translate", received-untranslated, received)
	}
	return Sample{Router: r.Name(), Flows: w.Flows, Sent: sent, Received: received, Busy: busy, Wall: time.Since(began)}, nil
}
