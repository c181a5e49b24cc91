package pcpserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/blocknat/blocknat/userspace/logattr"
	"github.com/blocknat/blocknat/userspace/mapping"
)

// Defaults of the Config fields left zero.
const (
	DefaultPort         = 5351 // RFC 6887 §19.1, RFC 6886 §3
	DefaultSuspectPort  = 5352
	DefaultAnnouncePort = 5350 // RFC 6887 §14.1.3, RFC 6886 §3.2.1
)

// DefaultAnnounceGroup is the all-hosts group RFC 6887 §14.1.3 announces
// to.
var DefaultAnnounceGroup = netip.AddrFrom4([4]byte{224, 0, 0, 1})

// Refusals of sources that are no subscriber, and of suspect requests,
// share one bucket of this rate and burst. It is not configurable: it only
// bounds what an attacker can reflect, and a genuine client refused once
// has its answer.
const (
	refusalRate  = 10
	refusalBurst = 20
)

// errorAnswerInterval is how often a subscriber beyond its bucket still
// gets a NO_RESOURCES answer; the rest is dropped.
const errorAnswerInterval = time.Second

// Lifetimes of error responses (RFC 6887 §7.4): how long a client waits
// before it retries.
const (
	longErrorLifetime  = 1800
	shortErrorLifetime = 30
)

// Config is the server's configuration. Interfaces, Mapping, Plane,
// Clock, the lifetimes, MaxMappings, Rate and Burst are required.
type Config struct {
	// Interfaces are the inside interfaces the server listens on.
	Interfaces []string
	Mapping    *mapping.Mapping
	Plane      Plane
	Clock      Clock
	// MinLifetime and MaxLifetime bound the lifetime granted to a
	// mapping, in whole seconds.
	MaxLifetime, MinLifetime time.Duration
	// MaxMappings is the most mappings one subscriber may hold.
	MaxMappings int
	// Rate (requests a second) and Burst are each subscriber's bucket.
	Rate  float64
	Burst int
	// Logger defaults to discarding.
	Logger *slog.Logger
	// Port is where requests arrive, DefaultPort if zero.
	Port uint16
	// SuspectPort is where the data plane diverts requests that fail the
	// inside source validation, DefaultSuspectPort if zero.
	SuspectPort uint16
	// AnnouncePort and AnnounceGroup are where ANNOUNCE goes at start,
	// DefaultAnnouncePort and DefaultAnnounceGroup if zero.
	AnnouncePort  uint16
	AnnounceGroup netip.Addr
}

// Server answers PCP and NAT-PMP requests. Build it with New, then Run.
type Server struct {
	cfg              Config
	log              *slog.Logger
	minLife, maxLife uint32 // seconds

	// mu serialises request handling, expiry and Stats: a request's check
	// of the index and its writes to the Plane must not interleave with
	// another's, and PCP's request rate makes one lock cheap.
	mu         sync.Mutex
	running    bool
	epochStart uint64
	entries    map[Key]Entry
	byInside   map[netip.Addr]map[Key]struct{}
	byProto    map[uint8]int
	expiries   expiryHeap
	limiters   map[uint32]*subscriberLimiter
	refusals   *rate.Limiter
	stats      counters

	// expiryTick caps the expiry loop's sleep; tests shorten it.
	expiryTick time.Duration
	// announceFirst is the first interval between announcements.
	announceFirst time.Duration
	// listening is closed once Run's sockets are open (Listening).
	listening chan struct{}
}

// New checks cfg and builds a server without starting it. Errors name
// the configuration field at fault.
func New(cfg Config) (*Server, error) {
	switch {
	case cfg.Mapping == nil:
		return nil, errors.New("pcpserver: Config.Mapping is nil")
	case cfg.Plane == nil:
		return nil, errors.New("pcpserver: Config.Plane is nil")
	case cfg.Clock == nil:
		return nil, errors.New("pcpserver: Config.Clock is nil")
	}
	if len(cfg.Interfaces) == 0 {
		return nil, errors.New("pcp.interfaces: at least one inside interface is required")
	}
	seen := map[string]int{}
	for i, name := range cfg.Interfaces {
		switch prev, dup := seen[name]; {
		case name == "":
			return nil, fmt.Errorf("pcp.interfaces[%d]: empty interface name", i)
		case len(name) > 15:
			// IFNAMSIZ is 16 with the terminating NUL.
			return nil, fmt.Errorf("pcp.interfaces[%d]: %q is longer than the 15 characters of an interface name", i, name)
		case dup:
			return nil, fmt.Errorf("pcp.interfaces[%d]: %s is pcp.interfaces[%d] again", i, name, prev)
		}
		seen[name] = i
	}
	maxLife, err := lifetimeSeconds("pcp.max_lifetime", cfg.MaxLifetime)
	if err != nil {
		return nil, err
	}
	minLife, err := lifetimeSeconds("pcp.min_lifetime", cfg.MinLifetime)
	if err != nil {
		return nil, err
	}
	if minLife > maxLife {
		return nil, fmt.Errorf("pcp.min_lifetime: %v is above pcp.max_lifetime %v", cfg.MinLifetime, cfg.MaxLifetime)
	}
	if cfg.MaxMappings < 1 {
		return nil, fmt.Errorf("pcp.max_mappings: %d, want at least 1", cfg.MaxMappings)
	}
	if math.IsNaN(cfg.Rate) || math.IsInf(cfg.Rate, 0) || cfg.Rate <= 0 {
		return nil, fmt.Errorf("pcp.rate: %v requests a second, want a positive number", cfg.Rate)
	}
	if cfg.Burst < 1 {
		return nil, fmt.Errorf("pcp.burst: %d, want at least 1", cfg.Burst)
	}
	if cfg.Port == 0 {
		cfg.Port = DefaultPort
	}
	if cfg.SuspectPort == 0 {
		cfg.SuspectPort = DefaultSuspectPort
	}
	if cfg.AnnouncePort == 0 {
		cfg.AnnouncePort = DefaultAnnouncePort
	}
	if cfg.SuspectPort == cfg.Port {
		return nil, fmt.Errorf("pcp.suspect_port: %d is pcp.port too; the data plane diverts suspect requests away from it", cfg.SuspectPort)
	}
	if !cfg.AnnounceGroup.IsValid() {
		cfg.AnnounceGroup = DefaultAnnounceGroup
	}
	if g := cfg.AnnounceGroup; !g.Is4() || !g.IsMulticast() {
		return nil, fmt.Errorf("pcp.announce_group: %s is not an IPv4 multicast group", g)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{
		cfg:           cfg,
		log:           log,
		minLife:       minLife,
		maxLife:       maxLife,
		refusals:      rate.NewLimiter(refusalRate, refusalBurst),
		entries:       map[Key]Entry{},
		byInside:      map[netip.Addr]map[Key]struct{}{},
		byProto:       map[uint8]int{},
		limiters:      map[uint32]*subscriberLimiter{},
		stats:         newCounters(),
		expiryTick:    time.Second,
		announceFirst: 250 * time.Millisecond,
		listening:     make(chan struct{}),
	}, nil
}

func lifetimeSeconds(field string, d time.Duration) (uint32, error) {
	switch {
	case d < time.Second:
		return 0, fmt.Errorf("%s: %v, want at least 1s", field, d)
	case d%time.Second != 0:
		return 0, fmt.Errorf("%s: %v is not a whole number of seconds, which is all PCP's lifetime field holds", field, d)
	case d/time.Second > math.MaxUint32:
		return 0, fmt.Errorf("%s: %v does not fit PCP's 32-bit lifetime in seconds", field, d)
	}
	return uint32(d / time.Second), nil
}

// Run loads the pinned table, opens the sockets, announces the restart
// in the background and serves until ctx ends, which is a clean exit
// (nil). It can be called once.
func (s *Server) Run(ctx context.Context) error {
	if err := s.load(); err != nil {
		return err
	}
	ifaces, err := s.listen(ctx)
	if err != nil {
		return err
	}
	close(s.listening)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 2*len(ifaces))
	for _, in := range ifaces {
		wg.Add(2)
		go func() { defer wg.Done(); errs <- s.serve(in, in.main, false) }()
		go func() { defer wg.Done(); errs <- s.serve(in, in.suspect, true) }()
	}
	wg.Add(2)
	go func() { defer wg.Done(); s.expireLoop(ctx) }()
	go func() { defer wg.Done(); s.announce(ctx, ifaces) }()

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errs:
	}
	cancel()
	for _, in := range ifaces {
		in.close()
	}
	wg.Wait()
	return runErr
}

// Listening is closed once Run has its sockets open, so that a caller can
// tell a start that failed (Run returns, naming the port or interface)
// from one that serves.
func (s *Server) Listening() <-chan struct{} { return s.listening }

// load rebuilds the index from the pinned table, so that quotas, renewals
// and expiry carry on across an agent restart.
func (s *Server) load() error {
	start, err := s.cfg.Plane.EpochStart()
	if err != nil {
		return fmt.Errorf("pcp: read the epoch start: %w", err)
	}
	list, err := s.cfg.Plane.Entries()
	if err != nil {
		return fmt.Errorf("pcp: read the pinned mappings: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.running {
		return errors.New("pcp: Run called twice")
	}
	s.running = true
	s.epochStart = start
	for _, e := range list {
		s.remember(e)
	}
	s.log.Info("pcp mappings loaded", logattr.Count, len(list), logattr.Epoch, s.epochLocked())
	return nil
}

// remember puts e in the index and schedules its expiry.
func (s *Server) remember(e Entry) {
	if old, ok := s.entries[e.Key]; ok {
		s.byProto[old.Proto]--
	}
	s.entries[e.Key] = e
	keys := s.byInside[e.Inside]
	if keys == nil {
		keys = map[Key]struct{}{}
		s.byInside[e.Inside] = keys
	}
	keys[e.Key] = struct{}{}
	s.byProto[e.Proto]++
	s.expiries.push(e.Expires, e.Key)
}

// forget takes e out of the index; its heap item goes stale and is
// skipped when it comes up.
func (s *Server) forget(k Key) {
	e, ok := s.entries[k]
	if !ok {
		return
	}
	delete(s.entries, k)
	s.byProto[e.Proto]--
	if keys := s.byInside[k.Inside]; keys != nil {
		delete(keys, k)
		if len(keys) == 0 {
			delete(s.byInside, k.Inside)
		}
	}
}

// epochLocked is the seconds since the PCP state began (RFC 6887 §8.5,
// RFC 6886 §3.6).
func (s *Server) epochLocked() uint32 {
	now := s.cfg.Clock.MonoNow()
	if now < s.epochStart {
		return 0
	}
	return uint32(min((now-s.epochStart)/uint64(time.Second), math.MaxUint32))
}
