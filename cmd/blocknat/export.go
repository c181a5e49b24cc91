package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/term"

	"github.com/blocknat/blocknat/userspace/api/client"
	"github.com/blocknat/blocknat/userspace/wire"
)

func init() {
	commands["export"] = command{
		summary: "export every block record of an interval to a file (audited)",
		run:     runExport,
	}
}

const exportSynopsis = `export --from RFC3339 --to RFC3339 [--subscriber INSIDE-ADDRESS|--mac MAC] [--format csv|jsonl] --purpose TEXT --out FILE [--json] [--config FILE | --socket PATH]

Writes every block record whose interval meets [--from, --to] to FILE, each
with the DHCP leases that held its inside address. --subscriber or --mac
narrow it to one subscriber or one device: answer a request with the
narrowest export that answers it. The
records go to FILE.tmp first, which is renamed to FILE only when the agent
has sent every record it announced, so FILE never holds a partial export.
FILE must not exist yet; it is created with mode 0600, as it holds personal
data. The request, who made it and the purpose are written to the audit log.
From a fleet service (blocknatd fleet) every record names the router that
recorded it: a "router" field in JSONL, a trailing router column in CSV.`

func runExport(args []string, stdout, stderr io.Writer) int {
	const name = "export"
	fs := newFlagSet(name, exportSynopsis, stderr)
	from := fs.String("from", "", "start of the interval, RFC 3339 with a zone")
	to := fs.String("to", "", "end of the interval, RFC 3339 with a zone")
	format := fs.String("format", wire.FormatCSV, "output `format`: csv or jsonl")
	purpose := fs.String("purpose", "", "purpose or case `reference` (required; audited)")
	out := fs.String("out", "", "output `file`")
	subscriber := fs.String("subscriber", "", "only this subscriber's inside IPv4 `address`")
	mac := fs.String("mac", "", "only this device's hardware `address`, through its leases")
	af := addAPIFlags(fs)
	if ok, code := parseAPIFlags(fs, args); !ok {
		return code
	}
	if err := required(map[string]*string{"from": from, "to": to, "purpose": purpose, "out": out}); err != nil {
		return report(stderr, name, err)
	}
	if *format != wire.FormatCSV && *format != wire.FormatJSONL {
		return report(stderr, name, usagef("--format: %q is not csv or jsonl", *format))
	}
	// Checked before asking, so that a name clash costs no audited request.
	if _, err := os.Lstat(*out); err == nil {
		return report(stderr, name, fmt.Errorf("--out: %s exists; remove it or choose another name", *out))
	}
	if *subscriber != "" && *mac != "" {
		return report(stderr, name, usagef("give at most one of --subscriber and --mac"))
	}
	req := wire.ExportRequest{From: *from, To: *to, Format: *format, Subscriber: *subscriber, MAC: *mac, Purpose: *purpose}
	var res *client.ExportResult
	err := withClient(af, func(ctx context.Context, c *client.Client) error {
		var err error
		res, err = exportToFile(ctx, c, req, *out, stderr)
		return err
	})
	if err != nil {
		return report(stderr, name, err)
	}
	if *af.asJSON {
		err = printJSON(stdout, map[string]any{
			"file": *out, "format": *format, "records": res.Records, "bytes": res.Bytes, "audit_seq": res.AuditSeq,
		})
	} else {
		_, err = fmt.Fprintf(stdout, "wrote %s to %s (%s, %d bytes)\naudit entry %d\n",
			plural(int(res.Records), "record", "records"), *out, *format, res.Bytes, res.AuditSeq)
	}
	if err != nil {
		return report(stderr, name, fmt.Errorf("write output: %w", err))
	}
	return exitOK
}

// exportToFile streams the export into path+".tmp" and renames it to path
// once complete and on disk. On any failure the temporary file is removed.
func exportToFile(ctx context.Context, c *client.Client, req wire.ExportRequest, path string, stderr io.Writer) (res *client.ExportResult, err error) {
	tmp := path + ".tmp"
	// O_EXCL: a FILE.tmp that exists belongs to an export still running,
	// or left by one that was killed; either way it is not ours to reuse.
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("--out: %s exists (another export running, or left by one that was killed); remove it first", tmp)
		}
		return nil, fmt.Errorf("--out: create %s: %w", tmp, err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	var progress func(done, total int64)
	if isTerminal(stderr) {
		bar := &progressBar{w: stderr}
		progress = bar.update
		defer bar.finish()
	}
	res, err = c.Export(ctx, req, f, progress)
	if err != nil {
		return nil, err
	}
	if err = f.Sync(); err != nil {
		return nil, fmt.Errorf("--out: sync %s: %w", tmp, err)
	}
	if err = f.Close(); err != nil {
		return nil, fmt.Errorf("--out: close %s: %w", tmp, err)
	}
	if err = os.Rename(tmp, path); err != nil {
		return nil, fmt.Errorf("--out: rename %s to %s: %w", tmp, path, err)
	}
	// The rename is durable once the directory is; a failure here leaves a
	// complete file, so it is not worth failing the export for.
	if d, derr := os.Open(filepath.Dir(path)); derr == nil {
		d.Sync()
		d.Close()
	}
	return res, nil
}

// isTerminal reports whether w is a terminal, which is the only place a
// progress bar of carriage returns belongs.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// progressBar draws "export [#####     ] 45%  4500/10000 records" in place.
type progressBar struct {
	w     io.Writer
	last  time.Time
	drawn bool
}

const progressWidth = 30

func (p *progressBar) update(done, total int64) {
	now := time.Now()
	if p.drawn && done < total && now.Sub(p.last) < 100*time.Millisecond {
		return
	}
	p.last, p.drawn = now, true
	frac := 1.0
	if total > 0 {
		frac = float64(done) / float64(total)
	}
	frac = min(max(frac, 0), 1)
	filled := int(frac * progressWidth)
	fmt.Fprintf(p.w, "\rexport [%s%s] %3d%%  %d/%d records", strings.Repeat("#", filled), strings.Repeat(" ", progressWidth-filled),
		int(frac*100), done, total)
}

func (p *progressBar) finish() {
	if p.drawn {
		fmt.Fprintln(p.w)
	}
}
