package api

import (
	"errors"
	"log/slog"
	"math"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/blocknat/blocknat/userspace/logattr"
)

// Connection caps. Every open connection holds a file descriptor, and an
// agent out of descriptors can open neither its store nor its audit log,
// so connections are counted at accept: on the unix socket per peer uid
// (SO_PEERCRED) and over both listeners in total. A connection over a cap
// is closed at once, before anything is read from it, so that one uid
// holding all it may leaves the others able to ask.
const (
	// DefaultMaxConnsPerUID caps the open connections of one uid on the
	// unix socket (the CLI uses one at a time).
	DefaultMaxConnsPerUID = 32
	// maxConnsCeiling caps the default total.
	maxConnsCeiling = 1024
	// fdReserve is the part of RLIMIT_NOFILE never given to connections:
	// the store, the audit log, the BPF objects and their maps.
	fdReserve = 512
	// minConns is the least total cap, however low the limit.
	minConns = 16
)

// DefaultMaxConns is the total cap when Deps.MaxConns is 0: half of what
// RLIMIT_NOFILE leaves after fdReserve, at most maxConnsCeiling, so that at
// least fdReserve descriptors and half the rest stay free for everything
// else the agent opens.
func DefaultMaxConns() int {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		return minConns
	}
	return max(minConns, min(maxConnsCeiling, (int(min(rl.Cur, math.MaxInt32))-fdReserve)/2))
}

// uidUnknown keys the connections whose peer credentials could not be read.
const uidUnknown = math.MaxUint32

// connRefusedLogEvery spaces the log lines about connections over a cap.
const connRefusedLogEvery = 10 * time.Second

// connCaps counts open connections; one is shared by every listener of a
// Server, so that the total holds across the unix socket and TLS.
type connCaps struct {
	perUID, total int
	log           *slog.Logger

	mu         sync.Mutex
	open       int
	byUID      map[uint32]int
	refused    uint64 // since the last log line
	lastLogged time.Time

	// overPerUID and overTotal count every connection closed at accept,
	// for /metrics; refused above restarts at each log line.
	overPerUID, overTotal atomic.Uint64
}

func newConnCaps(perUID, total int, log *slog.Logger) *connCaps {
	if perUID <= 0 {
		perUID = DefaultMaxConnsPerUID
	}
	if total <= 0 {
		total = DefaultMaxConns()
	}
	return &connCaps{perUID: perUID, total: total, log: log, byUID: map[uint32]int{}}
}

// take counts a new connection of uid (perUID false: not a unix peer, the
// total only) and reports whether it is within the caps.
func (c *connCaps) take(uid uint32, perUID bool) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	overTotal := c.open >= c.total
	if overTotal || perUID && c.byUID[uid] >= c.perUID {
		// Over both caps counts as over the total: that one would refuse
		// the connection whoever held the others.
		if overTotal {
			c.overTotal.Add(1)
		} else {
			c.overPerUID.Add(1)
		}
		c.refused++
		if now := time.Now(); now.Sub(c.lastLogged) >= connRefusedLogEvery {
			c.log.Warn("api connections over the cap closed at accept", logattr.Count, c.refused,
				"open", c.open, "max_conns", c.total, "max_conns_per_uid", c.perUID)
			c.refused, c.lastLogged = 0, now
		}
		return false
	}
	c.open++
	if perUID {
		c.byUID[uid]++
	}
	return true
}

func (c *connCaps) release(uid uint32, perUID bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.open--
	if perUID {
		if c.byUID[uid]--; c.byUID[uid] <= 0 {
			delete(c.byUID, uid)
		}
	}
}

// overCap is what Counters reports as ConnsOverCap.
func (c *connCaps) overCap() map[string]uint64 {
	return map[string]uint64{OverCapPerUID: c.overPerUID.Load(), OverCapTotal: c.overTotal.Load()}
}

// count is the number of open unix-socket connections of uid.
func (c *connCaps) count(uid uint32) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.byUID[uid]
}

// cappedListener closes connections over the caps as it accepts them, and
// has every connection it returns count the requests net/http rejects on
// it.
type cappedListener struct {
	net.Listener
	caps       *connCaps
	rejections *rejections
}

func (l *cappedListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		cc := &cappedConn{Conn: c, caps: l.caps, rejections: l.rejections}
		if uc, ok := c.(*net.UnixConn); ok {
			cred := readPeerCred(uc)
			cc.cred, cc.unix, cc.uid = &cred, true, cred.uid
			if cred.err != nil {
				cc.uid = uidUnknown
			}
		}
		if !l.caps.take(cc.uid, cc.unix) {
			c.Close()
			continue
		}
		return cc, nil
	}
}

// cappedConn gives its place back once, when closed, carries the peer
// credentials read at accept for connContext, and counts the response
// net/http writes when it rejects a request before any handler runs (see
// preHandlerStatus). Under TLS it sees only records, so there it counts
// just the plain-text answer to plain HTTP.
type cappedConn struct {
	net.Conn
	caps       *connCaps
	rejections *rejections
	cred       *peerCred // nil when not a unix-socket connection
	unix       bool
	uid        uint32
	once       sync.Once
	// rejected: net/http closes the connection after such a response,
	// so at most one is counted on a connection, whatever follows.
	rejected atomic.Bool
}

func (c *cappedConn) Write(b []byte) (int, error) {
	if code, ok := preHandlerStatus(b); ok && !c.rejected.Swap(true) {
		c.rejections.add(reasonOfStatus(code), c.peer())
	}
	return c.Conn.Write(b)
}

// CloseWrite passes the half-close on, which embedding net.Conn hides:
// net/http half-closes before it hangs up on a request it stopped reading
// (headers too large, a body over its limit), so that the peer reads the
// answer and EOF, not a reset for the unread rest.
func (c *cappedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}

// peer names the other end for a log line: the uid on the unix socket
// (what the roles know it by), the address on TCP.
func (c *cappedConn) peer() string {
	switch {
	case !c.unix:
		return c.RemoteAddr().String()
	case c.uid == uidUnknown:
		return "uid:unknown"
	}
	return "uid:" + strconv.FormatUint(uint64(c.uid), 10)
}

func (c *cappedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.caps.release(c.uid, c.unix) })
	return err
}

// capConns wraps ln in the server's connection caps.
func (s *Server) capConns(ln net.Listener) net.Listener {
	return &cappedListener{Listener: ln, caps: s.conns, rejections: s.rejections}
}
