package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"golang.org/x/sys/unix"
)

// NewFlowsConfig says what RunNewFlows measures: the connection
// establishment rate of RFC 9693 §7.1, new TCP connections per second
// through the router, each frame a SYN of a connection the router has not
// seen, so that every frame costs the router a new mapping (blocknat) or a
// new conntrack entry (nftables).
type NewFlowsConfig struct {
	Routers      []string
	Flows        int // connections opened in one measurement
	Subscribers  int
	Destinations int
	Reps         int
}

// NewFlowSample is one measurement: Flows SYNs sent back to back into a
// router started afresh.
type NewFlowSample struct {
	Router         string
	Rep            int
	Sent, Received uint64
	Busy           time.Duration // the kernel's time for the frames, as in Sample
}

// Rate is the connections per second the sink received.
func (s NewFlowSample) Rate() float64 { return float64(s.Received) / s.Busy.Seconds() }

// Loss is the fraction of the connections' first frames the sink did not
// receive: a connection the router could not set up.
func (s NewFlowSample) Loss() float64 {
	if s.Sent == 0 {
		return 0
	}
	return 1 - float64(min(s.Received, s.Sent))/float64(s.Sent)
}

// RunNewFlows measures each router Reps times, interleaved as
// RunThroughput does. Each measurement starts the router with no state (a
// fresh data plane; nftables' conntrack flushed by the previous Stop) and a
// fresh generator, whose frames are then every flow once, in order.
func RunNewFlows(ctx context.Context, bed *Bed, cfg NewFlowsConfig, log *slog.Logger) (_ []NewFlowSample, err error) {
	routers := make([]Router, len(cfg.Routers))
	for i, name := range cfg.Routers {
		if routers[i], err = NewRouter(name); err != nil {
			return nil, err
		}
	}
	sink, err := NewSink(bed, false)
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, sink.Close()) }()
	w := Workload{Flows: cfg.Flows, Subscribers: cfg.Subscribers, Destinations: cfg.Destinations, Proto: unix.IPPROTO_TCP}
	var samples []NewFlowSample
	for rep := 1; rep <= cfg.Reps; rep++ {
		for _, r := range routers {
			if err := ctx.Err(); err != nil {
				return samples, err
			}
			s, err := measureNewFlows(ctx, bed, r, w, sink)
			if err != nil {
				return samples, fmt.Errorf("%s, repetition %d: %w", r.Name(), rep, err)
			}
			s.Rep = rep
			log.Info("new flows", "router", s.Router, "rep", rep, "per_second", fmt.Sprintf("%.0f", s.Rate()),
				"loss", fmt.Sprintf("%.4f", s.Loss()))
			samples = append(samples, s)
		}
	}
	return samples, nil
}

func measureNewFlows(ctx context.Context, bed *Bed, r Router, w Workload, sink *Sink) (_ NewFlowSample, err error) {
	g, err := NewGenerator(bed, w)
	if err != nil {
		return NewFlowSample{}, err
	}
	defer func() { err = errors.Join(err, g.Close()) }()
	if err := r.Start(ctx, bed); err != nil {
		return NewFlowSample{}, err
	}
	defer func() {
		if stopErr := r.Stop(context.WithoutCancel(ctx), bed); stopErr != nil {
			err = errors.Join(err, stopErr)
		}
	}()
	before, err := sink.Counts()
	if err != nil {
		return NewFlowSample{}, err
	}
	var busy time.Duration
	for {
		d, err := g.timedRun(uint32(w.Flows))
		if errors.Is(err, errInterrupted) {
			// Some of the flows were sent untimed: the router holds them
			// now, so the measurement starts again from no state.
			return measureNewFlows(ctx, bed, r, w, sink)
		}
		if err != nil {
			return NewFlowSample{}, err
		}
		busy = d
		break
	}
	after, err := sink.Counts()
	if err != nil {
		return NewFlowSample{}, err
	}
	sent, err := g.Sent()
	if err != nil {
		return NewFlowSample{}, err
	}
	received := after.Frames - before.Frames
	if untranslated := after.FromInside - before.FromInside; r.Translates() && untranslated != 0 {
		return NewFlowSample{}, fmt.Errorf("%d of %d frames reached the sink untranslated", untranslated, received)
	}
	if received == 0 {
		return NewFlowSample{}, fmt.Errorf("the sink received nothing of %d connections opened", sent)
	}
	// Every flow once: the router must now hold one mapping or conntrack
	// entry per connection, or some were not set up.
	if err := r.Check(ctx, bed, w); err != nil {
		return NewFlowSample{}, err
	}
	return NewFlowSample{Router: r.Name(), Sent: sent, Received: received, Busy: busy}, nil
}

// WriteNewFlows renders the samples and returns the target: blocknat's
// connection establishment rate against nftables masquerade's, per
// repetition.
func WriteNewFlows(w io.Writer, cfg NewFlowsConfig, samples []NewFlowSample) []Target {
	fmt.Fprintf(w, "%d new TCP connections (SYNs) per measurement from %d subscribers to %d destinations, each router started with no state; "+
		"median (min–max) over %d repetitions, routers measured in turn within a repetition.\n\n",
		cfg.Flows, min(cfg.Flows, cfg.Subscribers), cfg.Destinations, cfg.Reps)
	byRep := map[string]map[int]NewFlowSample{}
	for _, s := range samples {
		if byRep[s.Router] == nil {
			byRep[s.Router] = map[int]NewFlowSample{}
		}
		byRep[s.Router][s.Rep] = s
	}
	fmt.Fprintln(w, "| router | new connections per second (thousands) | ns per new connection through the bed | loss |")
	fmt.Fprintln(w, "|---|---|---|---|")
	for _, r := range cfg.Routers {
		var rate, ns, loss []float64
		for rep := 1; rep <= cfg.Reps; rep++ {
			if s, ok := byRep[r][rep]; ok && s.Received > 0 {
				rate = append(rate, s.Rate()/1e3)
				ns = append(ns, 1e9/s.Rate())
				loss = append(loss, s.Loss()*100)
			}
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s %% |\n", r, SpreadOf(rate).Format("%.0f"), SpreadOf(ns).Format("%.0f"), SpreadOf(loss).Format("%.2f"))
	}
	fmt.Fprintln(w)
	var targets []Target
	for _, other := range []string{RouterNftMasquerade, RouterNftPortBlock} {
		var ratios []float64
		for rep := 1; rep <= cfg.Reps; rep++ {
			a, okA := byRep[RouterBlocknat][rep]
			b, okB := byRep[other][rep]
			if okA && okB && a.Received > 0 && b.Received > 0 {
				ratios = append(ratios, a.Rate()/b.Rate())
			}
		}
		if len(ratios) == 0 {
			continue
		}
		sp := SpreadOf(ratios)
		fmt.Fprintf(w, "blocknat / %s, connection establishment rate, per repetition: %s\n\n", other, sp.Format("%.2f"))
		if other == RouterNftMasquerade {
			targets = append(targets, Target{Name: "connection establishment rate: blocknat / nft-masquerade", Got: sp, AtLeast: true, Limit: 5, Unit: "×"})
		}
	}
	return targets
}
