// Package client talks to blocknat's query API (userspace/api) over its unix
// socket or over TLS. It speaks only the wire package's types, so that the
// CLI that links it links nothing of the agent's.
package client

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"

	"github.com/blocknat/blocknat/userspace/wire"
)

// Client talks to the API. Its methods are safe for concurrent use.
type Client struct {
	hc    *http.Client
	base  string // scheme and host the requests are sent to
	where string // names the server in errors
}

// Error is an answer of the server that is not data: a refusal, a
// malformed request, a failure, or a 503 because the request could not be
// audited.
type Error struct {
	Status  int    // HTTP status
	Outcome string // as audited; empty on 503, when nothing was audited
	Message string // the server's explanation
	// AuditSeq is the audit entry the request caused; 0 when none was
	// written.
	AuditSeq uint64
}

func (e *Error) Error() string {
	var b strings.Builder
	if e.Outcome != "" {
		b.WriteString(e.Outcome + ": ")
	}
	b.WriteString(e.Message)
	if e.AuditSeq != 0 {
		fmt.Fprintf(&b, " (audit entry %d)", e.AuditSeq)
	} else {
		fmt.Fprintf(&b, " (HTTP %d)", e.Status)
	}
	return b.String()
}

// Dial returns a client for the API's unix socket. It checks that the
// socket exists; the connection itself is made by the first request.
func Dial(socketPath string) (*Client, error) {
	fi, err := os.Stat(socketPath)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("api socket %s: does not exist (is blocknatd running?): %w", socketPath, err)
		}
		return nil, fmt.Errorf("api socket %s: %w", socketPath, err)
	}
	if fi.Mode().Type() != os.ModeSocket {
		return nil, fmt.Errorf("api socket %s: not a socket", socketPath)
	}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socketPath)
		},
		DisableCompression: true,
	}
	return &Client{hc: &http.Client{Transport: tr}, base: "http://blocknat", where: "unix " + socketPath}, nil
}

// DialTLS returns a client for the API over TLS at addr (host:port). cfg
// must hold the operator's client certificate and the CA that signed the
// server's.
func DialTLS(addr string, cfg *tls.Config) (*Client, error) {
	if cfg == nil || (len(cfg.Certificates) == 0 && cfg.GetClientCertificate == nil) {
		return nil, fmt.Errorf("api tls %s: config holds no client certificate, which is the operator's identity", addr)
	}
	cfg = cfg.Clone()
	cfg.NextProtos = []string{"http/1.1"}
	tr := &http.Transport{
		TLSClientConfig:    cfg,
		ForceAttemptHTTP2:  false,
		DisableCompression: true,
	}
	return &Client{hc: &http.Client{Transport: tr}, base: "https://" + addr, where: "tls " + addr}, nil
}

// Close releases idle connections.
func (c *Client) Close() error {
	c.hc.CloseIdleConnections()
	return nil
}

// Lookup asks which subscriber held req.IP:req.Port at req.Time. The
// answer carries its Evidence: the bytes as audited and their proof.
func (c *Client) Lookup(ctx context.Context, req wire.LookupRequest) (*wire.LookupResponse, error) {
	var out wire.LookupResponse
	ev, err := c.callAnswered(ctx, wire.PathLookup, req, &out)
	if err != nil {
		return nil, err
	}
	out.AuditSeq, out.Evidence = ev.Proof.Entry.Seq, ev
	return &out, nil
}

// History lists the records of one subscriber or one device.
func (c *Client) History(ctx context.Context, req wire.HistoryRequest) (*wire.HistoryResponse, error) {
	var out wire.HistoryResponse
	ev, err := c.callAnswered(ctx, wire.PathHistory, req, &out)
	if err != nil {
		return nil, err
	}
	out.AuditSeq, out.Evidence = ev.Proof.Entry.Seq, ev
	return &out, nil
}

// callAnswered posts body and decodes a wire.Answered envelope: the answer
// into out, after checking that its bytes are the ones the audit entry
// names.
func (c *Client) callAnswered(ctx context.Context, path string, body, out any) (*wire.Evidence, error) {
	var env wire.Answered
	if err := c.call(ctx, http.MethodPost, path, body, &env); err != nil {
		return nil, err
	}
	if err := env.Evidence.CheckAnswer(); err != nil {
		return nil, fmt.Errorf("POST %s from %s: %w", path, c.where, err)
	}
	if err := json.Unmarshal(env.Answer, out); err != nil {
		return nil, fmt.Errorf("POST %s from %s: decode answer: %w", path, c.where, err)
	}
	return &env.Evidence, nil
}

// Leases delivers lease events (role dhcp).
func (c *Client) Leases(ctx context.Context, req wire.LeasesRequest) (*wire.LeasesResponse, error) {
	var out wire.LeasesResponse
	if err := c.call(ctx, http.MethodPost, wire.PathLeases, req, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// AuditSubject lists the requests that named a subscriber or device.
func (c *Client) AuditSubject(ctx context.Context, req wire.AuditSubjectRequest) (*wire.AuditSubjectResponse, error) {
	var out wire.AuditSubjectResponse
	if err := c.call(ctx, http.MethodPost, wire.PathAuditSubject, req, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Status returns the agent's status.
func (c *Client) Status(ctx context.Context) (*wire.StatusResponse, error) {
	var out wire.StatusResponse
	if err := c.call(ctx, http.MethodGet, wire.PathStatus, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// AuditShow returns up to limit audit entries from seq from on (seqs start
// at 1). from 0 asks for the newest limit entries; limit 0 means the
// server's default.
func (c *Client) AuditShow(ctx context.Context, from uint64, limit int) (*wire.AuditShowResponse, error) {
	q := url.Values{}
	if from > 0 {
		q.Set("from", strconv.FormatUint(from, 10))
	}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	path := wire.PathAudit
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	var out wire.AuditShowResponse
	if err := c.call(ctx, http.MethodGet, path, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// AuditVerify has the agent verify its audit log.
func (c *Client) AuditVerify(ctx context.Context) (*wire.AuditVerifyResponse, error) {
	var out wire.AuditVerifyResponse
	if err := c.call(ctx, http.MethodPost, wire.PathAuditVerify, struct{}{}, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// ExportResult describes a complete export.
type ExportResult struct {
	AuditSeq uint64
	Records  int64
	Bytes    int64
}

// Export streams the records of [req.From, req.To] into w and calls
// progress (when not nil) with the records received so far and the total
// the server announced. It returns an error unless the stream ended with
// exactly the announced records; w may then hold a partial export, which
// the caller must discard.
func (c *Client) Export(ctx context.Context, req wire.ExportRequest, w io.Writer, progress func(done, total int64)) (*ExportResult, error) {
	resp, err := c.send(ctx, http.MethodPost, wire.PathExport, req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, c.errorOf(resp)
	}
	res := &ExportResult{}
	res.AuditSeq, _ = strconv.ParseUint(resp.Header.Get(wire.HeaderAuditSeq), 10, 64)
	total, err := strconv.ParseInt(resp.Header.Get(wire.HeaderRecords), 10, 64)
	if err != nil || total < 0 {
		return nil, fmt.Errorf("export from %s: header %s: %q is not a count", c.where, wire.HeaderRecords, resp.Header.Get(wire.HeaderRecords))
	}
	// Records are lines: no field of either format holds a newline. A CSV
	// export starts with its header line.
	lines := int64(0)
	if req.Format == wire.FormatCSV {
		lines = -1
	}
	if progress != nil {
		progress(0, total)
	}
	buf := make([]byte, 64<<10)
	for {
		n, rerr := resp.Body.Read(buf)
		if n > 0 {
			lines += int64(bytes.Count(buf[:n], []byte{'\n'}))
			if _, err := w.Write(buf[:n]); err != nil {
				return nil, fmt.Errorf("export: write: %w", err)
			}
			res.Bytes += int64(n)
			if progress != nil {
				progress(max(lines, 0), total)
			}
		}
		if errors.Is(rerr, io.EOF) {
			break
		}
		if rerr != nil {
			return nil, fmt.Errorf("export from %s: stream broke off after %d of %d records: %w", c.where, max(lines, 0), total, rerr)
		}
	}
	written := resp.Trailer.Get(wire.TrailerRecordsWritten)
	if written != strconv.FormatInt(total, 10) {
		return nil, fmt.Errorf("export from %s: incomplete: %d records announced, server confirmed %q", c.where, total, written)
	}
	if lines != total {
		return nil, fmt.Errorf("export from %s: incomplete: %d records announced, %d received", c.where, total, lines)
	}
	res.Records = lines
	return res, nil
}

func (c *Client) call(ctx context.Context, method, path string, body, out any) error {
	resp, err := c.send(ctx, method, path, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return c.errorOf(resp)
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%s %s from %s: decode answer: %w", method, path, c.where, err)
	}
	return nil
}

func (c *Client) send(ctx context.Context, method, path string, body any) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		data, err := json.Marshal(body)
		if err != nil {
			return nil, fmt.Errorf("%s %s: encode request: %w", method, path, err)
		}
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s to %s: %w", method, path, c.where, err)
	}
	return resp, nil
}

// errorOf reads the wire.ErrorResponse of a non-200 answer.
func (c *Client) errorOf(resp *http.Response) error {
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	e := &Error{Status: resp.StatusCode}
	var er wire.ErrorResponse
	if err := json.Unmarshal(data, &er); err == nil && er.Error != "" {
		e.Message, e.Outcome, e.AuditSeq = er.Error, er.Outcome, er.AuditSeq
	} else {
		e.Message = strings.TrimSpace(string(data))
		if e.Message == "" {
			e.Message = http.StatusText(resp.StatusCode)
		}
	}
	return e
}
