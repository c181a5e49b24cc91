package api

import (
	"bytes"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/blocknat/blocknat/userspace/logattr"
)

// Reasons net/http turns a request away before any handler runs, the keys
// of Counters.Rejected and label values for /metrics. Such a request is
// answered by net/http itself and never audited: it asked nothing the
// server could read.
const (
	// RejectBadRequest: a garbage request line, a malformed header line, a
	// bad Host header and the like (400); also plain HTTP sent to the TLS
	// listener, which net/http answers 400 in plain text.
	RejectBadRequest = "bad_request"
	// RejectHeadersTooLarge: a header block over MaxHeaderBytes (431).
	RejectHeadersTooLarge = "headers_too_large"
	// RejectBadVersion: an HTTP version other than 1.0 and 1.1 (505).
	RejectBadVersion = "bad_version"
	// RejectTLSHandshake: a failed TLS handshake on the TLS listener: no
	// client certificate, one from another CA, not TLS at all, or a peer
	// that hung up first.
	RejectTLSHandshake = "tls_handshake"
	// RejectOther: any other status net/http answers with by itself (501
	// for an unknown Transfer-Encoding).
	RejectOther = "other"
)

type rejectReason int

const (
	reasonBadRequest rejectReason = iota
	reasonHeadersTooLarge
	reasonBadVersion
	reasonTLSHandshake
	reasonOther
	numRejectReasons
)

var rejectReasonNames = [numRejectReasons]string{
	reasonBadRequest:      RejectBadRequest,
	reasonHeadersTooLarge: RejectHeadersTooLarge,
	reasonBadVersion:      RejectBadVersion,
	reasonTLSHandshake:    RejectTLSHandshake,
	reasonOther:           RejectOther,
}

func reasonOfStatus(code int) rejectReason {
	switch code {
	case 400:
		return reasonBadRequest
	case 431:
		return reasonHeadersTooLarge
	case 505:
		return reasonBadVersion
	}
	return reasonOther
}

// rejectLogEvery spaces the log lines about rejected requests: a peer
// sending garbage in a loop must not be able to fill the log.
const rejectLogEvery = 10 * time.Second

// Log attribute keys of the rejection line (logattr has no such keys).
const (
	logKeyReason = "reason"
	logKeyPeer   = "peer"
)

// rejections counts the requests net/http turns away before any handler
// runs, and logs them at most every rejectLogEvery.
type rejections struct {
	log   *slog.Logger
	total [numRejectReasons]atomic.Uint64

	mu         sync.Mutex
	sinceLog   [numRejectReasons]uint64
	lastLogged time.Time
}

// add counts one rejection. peer is "uid:N" on the unix socket and the
// address on the TLS listener; nothing the peer sent is logged, so that a
// request line cannot put text of its choosing in the log.
func (r *rejections) add(reason rejectReason, peer string) {
	r.total[reason].Add(1)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sinceLog[reason]++
	now := time.Now()
	if now.Sub(r.lastLogged) < rejectLogEvery {
		return
	}
	var n uint64
	var byReason []any
	for i, c := range r.sinceLog {
		if c > 0 {
			n += c
			byReason = append(byReason, slog.Uint64(rejectReasonNames[i], c))
		}
	}
	r.log.Warn("api requests rejected before any handler", logattr.Count, n,
		slog.Group("by_reason", byReason...), logKeyReason, rejectReasonNames[reason], logKeyPeer, peer)
	r.sinceLog, r.lastLogged = [numRejectReasons]uint64{}, now
}

func (r *rejections) counts() map[string]uint64 {
	out := make(map[string]uint64, numRejectReasons)
	for i := range r.total {
		out[rejectReasonNames[i]] = r.total[i].Load()
	}
	return out
}

var (
	httpVersionPrefix = []byte("HTTP/1.")
	crlf              = []byte("\r\n")
	headerEnd         = []byte("\r\n\r\n")
)

// preHandlerStatus recognises a response net/http wrote to the connection
// itself, and returns its status. net/http offers no hook for the requests
// it rejects before any handler runs (conn.serve in net/http/server.go):
// it writes the whole response straight to the net.Conn in one Write
// ("HTTP/1.1 400 Bad Request\r\nContent-Type: ...\r\nConnection: close\r\n
// \r\n400 Bad Request"), and such a response has no Date header, whereas
// every response that goes through a ResponseWriter gets one (none of our
// handlers removes it). A 1xx interim response ("100 Continue") has no Date
// either, but comes from a handler reading a body, so it is not counted.
// The whole header block must be in b: net/http's own responses are short
// and written at once, and a piece of a body, which a Write may also start
// with, holds no CRLF CRLF after "HTTP/1." in anything our handlers send.
func preHandlerStatus(b []byte) (int, bool) {
	if !bytes.HasPrefix(b, httpVersionPrefix) {
		return 0, false
	}
	end := bytes.Index(b, headerEnd)
	if end < 0 {
		return 0, false
	}
	status, headers, _ := bytes.Cut(b[:end+len(crlf)], crlf)
	// "HTTP/1.x NNN ..."
	if len(status) < len("HTTP/1.x NNN") || status[len("HTTP/1.x")] != ' ' {
		return 0, false
	}
	code, err := strconv.Atoi(string(status[len("HTTP/1.x ") : len("HTTP/1.x ")+3]))
	if err != nil || code < 200 || code > 599 {
		return 0, false
	}
	for line := range bytes.SplitSeq(headers, crlf) {
		if name, _, ok := bytes.Cut(line, []byte(":")); ok && strings.EqualFold(string(name), "Date") {
			return 0, false
		}
	}
	return code, true
}

// The line net/http's conn.serve logs, through ErrorLog, for a failed TLS
// handshake: "http: TLS handshake error from ADDR: REASON". It is the only
// trace of one that net/http leaves.
const (
	tlsHandshakeErrorPrefix = "http: TLS handshake error from "
	// plainHTTPOnTLS is the reason when the peer spoke plain HTTP, which
	// net/http has answered 400 on the raw connection, where the
	// connection wrapper counted it as bad_request already.
	plainHTTPOnTLS = "client sent an HTTP request to an HTTPS server"
)

// errorLog is http.Server.ErrorLog's writer: it counts TLS handshake
// failures instead of passing on one line for each, which a peer could
// otherwise repeat as fast as it can connect, and passes every other line
// on to the server's logger.
type errorLog struct {
	rejections *rejections
	next       io.Writer
}

func (w *errorLog) Write(p []byte) (int, error) {
	line := strings.TrimSuffix(string(p), "\n")
	if rest, ok := strings.CutPrefix(line, tlsHandshakeErrorPrefix); ok {
		// The address has no ": " in it, even in IPv6 ("[::1]:8443").
		// The handshake error itself is left out: it can quote the
		// names in the certificate the peer sent.
		peer, reason, _ := strings.Cut(rest, ": ")
		if reason != plainHTTPOnTLS {
			w.rejections.add(reasonTLSHandshake, peer)
		}
		return len(p), nil
	}
	return w.next.Write(p)
}
