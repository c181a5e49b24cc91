package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/blocknat/blocknat/userspace/api/client"
	"github.com/blocknat/blocknat/userspace/audit"
	"github.com/blocknat/blocknat/userspace/auditwire"
	"github.com/blocknat/blocknat/userspace/wire"
)

func init() {
	commands["audit"] = command{
		summary: "show or verify the audit log (through the agent, or offline on a copy)",
		run:     runAudit,
	}
}

var auditVerbs = []string{"show", "verify", "subject"}

const auditSynopsis = `audit show [--from SEQ] [--limit N] [--json] [--socket PATH]
       blocknat audit verify [--json] [--socket PATH]
       blocknat audit verify --dir DIR --pubkey FILE [--json]
       blocknat audit subject --subscriber INSIDE-ADDRESS|--mac MAC --from RFC3339 --to RFC3339 [--json] [--config FILE | --socket PATH]

show prints audit entries; without --from, the newest ones. verify has the
agent check its log's hash chain and signatures. With --dir and --pubkey it
checks a copy of the log directory offline, without the agent; take the
public key from a copy kept off the router, not from the directory checked.
verify exits 1 when the log fails, and names each problem's seq, file and line.
subject lists every request whose criteria or answer named the subscriber or
device in the period: when, the kind of use, the role, the purpose and the
outcome, which is what a subscriber's access request (GDPR art. 15) is owed.
The search is audited like any other request.`

func runAudit(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintf(stderr, "blocknat audit: missing verb (%s)\nusage: blocknat %s\n", oneOf(auditVerbs), auditSynopsis)
		return exitUsage
	}
	verb, args := args[0], args[1:]
	switch verb {
	case "show":
		return runAuditShow(args, stdout, stderr)
	case "verify":
		return runAuditVerify(args, stdout, stderr)
	case "subject":
		return runAuditSubject(args, stdout, stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprintf(stdout, "usage: blocknat %s\n", auditSynopsis)
		return exitOK
	default:
		fmt.Fprintf(stderr, "blocknat audit: unknown verb %q (want %s)\n", verb, oneOf(auditVerbs))
		return exitUsage
	}
}

func runAuditShow(args []string, stdout, stderr io.Writer) int {
	const name = "audit show"
	fs := newFlagSet(name, auditSynopsis, stderr)
	from := fs.Uint64("from", 0, "first entry `seq` (default: the newest entries)")
	limit := fs.Int("limit", wire.DefaultAuditLimit, fmt.Sprintf("at most `N` entries (1-%d)", wire.MaxAuditLimit))
	af := addAPIFlags(fs)
	if ok, code := parseAPIFlags(fs, args); !ok {
		return code
	}
	if *limit < 1 || *limit > wire.MaxAuditLimit {
		return report(stderr, name, usagef("--limit: %d is not between 1 and %d", *limit, wire.MaxAuditLimit))
	}
	err := withClient(af, func(ctx context.Context, c *client.Client) error {
		ans, err := c.AuditShow(ctx, *from, *limit)
		if err != nil {
			return err
		}
		if *af.asJSON {
			return printJSON(stdout, ans)
		}
		printAuditEntries(stdout, ans)
		return nil
	})
	return report(stderr, name, err)
}

func printAuditEntries(w io.Writer, ans *wire.AuditShowResponse) {
	if len(ans.Entries) == 0 {
		fmt.Fprintf(w, "no entries in that range; the log holds entries up to %d\n", ans.Total)
	} else {
		fmt.Fprintf(w, "entries %d-%d of %d\n", ans.Entries[0].Seq, ans.Entries[len(ans.Entries)-1].Seq, ans.Total)
	}
	for _, e := range ans.Entries {
		fmt.Fprintf(w, "%d  %s  %s  %s\n", e.Seq, humanTime(e.Time), safeText(e.Action), safeText(string(e.Outcome)))
		role := safeText(e.Role)
		if role == "" {
			role = "no role"
		}
		fmt.Fprintf(w, "    operator %s (judged as %s)\n", safeText(e.Operator), role)
		if len(e.Criteria) > 0 {
			fmt.Fprintf(w, "    criteria %s\n", criteriaLine(e.Criteria))
		}
		if e.Purpose != "" {
			fmt.Fprintf(w, "    purpose  %s\n", quoteIfNeeded(e.Purpose))
		}
		if e.Detail != "" {
			fmt.Fprintf(w, "    detail   %s\n", safeText(e.Detail))
		}
		if len(e.Subjects) > 0 {
			named := make([]string, len(e.Subjects))
			for i, s := range e.Subjects {
				named[i] = quoteIfNeeded(s)
			}
			fmt.Fprintf(w, "    named    %s\n", strings.Join(named, " "))
		}
		if e.AnswerSHA256 != "" {
			fmt.Fprintf(w, "    answer   sha256 %s\n", safeText(e.AnswerSHA256))
		}
	}
	fmt.Fprintf(w, "audit entry %d (this request)\n", ans.AuditSeq)
}

// quoteIfNeeded quotes values a reader could misread: empty, with spaces,
// or with characters a client may have sent to rewrite the terminal or
// reorder the line (controls, bidirectional overrides); quoting escapes
// those.
func quoteIfNeeded(s string) string {
	if s == "" || !utf8.ValidString(s) || strings.ContainsFunc(s, func(r rune) bool { return r <= ' ' || r == '"' || r == '=' || r == '\\' || unsafeRune(r) }) {
		return strconv.Quote(s)
	}
	return s
}

// unsafeRune reports the characters no field is printed with as they are:
// C0 and C1 controls and DEL, the bidirectional embeddings, overrides and
// isolates (U+202A-U+202E, U+2066-U+2069) and marks, line and paragraph
// separators, and anything else Unicode does not call printable.
func unsafeRune(r rune) bool {
	switch {
	case r < 0x20, r >= 0x7f && r <= 0x9f:
		return true
	case r >= 0x202a && r <= 0x202e, r >= 0x2066 && r <= 0x2069, r == 0x200e, r == 0x200f, r == 0x061c:
		return true
	case r == 0x2028, r == 0x2029:
		return true
	}
	return r != ' ' && !unicode.IsPrint(r)
}

// safeText is free text as printed: unsafe characters, invalid UTF-8 and
// the backslash are written as Go escapes (\x1b, \u202e, \\), so that
// what a client sent can neither move the cursor nor flip the line, and an
// escape in the text cannot pass for one made here.
func safeText(s string) string {
	if utf8.ValidString(s) && !strings.ContainsFunc(s, func(r rune) bool { return r == '\\' || unsafeRune(r) }) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case r == '\\':
			b.WriteString(`\\`)
		case unsafeRune(r):
			q := strconv.QuoteRuneToASCII(r) // 'x' form; drop the quotes
			b.WriteString(q[1 : len(q)-1])
		default:
			b.WriteRune(r)
		}
		i += n
	}
	return b.String()
}

func runAuditVerify(args []string, stdout, stderr io.Writer) int {
	const name = "audit verify"
	fs := newFlagSet(name, auditSynopsis, stderr)
	dir := fs.String("dir", "", "verify the log `directory` offline instead of asking the agent")
	pubkey := fs.String("pubkey", "", "the log's public key `file` (PEM), for --dir")
	af := addAPIFlags(fs)
	if ok, code := parseAPIFlags(fs, args); !ok {
		return code
	}
	var (
		res    wire.AuditVerifyResponse
		source string
		err    error
	)
	switch {
	case *dir == "" && *pubkey == "":
		source = "agent"
		err = withClient(af, func(ctx context.Context, c *client.Client) error {
			ans, err := c.AuditVerify(ctx)
			if err == nil {
				res = *ans
			}
			return err
		})
	case *dir == "" || *pubkey == "":
		return report(stderr, name, usagef("--dir and --pubkey go together (offline verification needs both)"))
	default:
		source = *dir
		res, err = verifyOffline(*dir, *pubkey)
	}
	if err != nil {
		return report(stderr, name, err)
	}
	if *af.asJSON {
		err = printJSON(stdout, res)
	} else {
		printVerify(stdout, source, res)
	}
	if err != nil {
		return report(stderr, name, fmt.Errorf("write output: %w", err))
	}
	if !res.OK {
		return report(stderr, name, errors.New("the audit log failed verification"))
	}
	return exitOK
}

func verifyOffline(dir, pubkeyPath string) (wire.AuditVerifyResponse, error) {
	pub, err := audit.LoadPublicKey(pubkeyPath)
	if err != nil {
		return wire.AuditVerifyResponse{}, fmt.Errorf("--pubkey: %w", err)
	}
	report, err := audit.Verify(dir, pub)
	if err != nil {
		return wire.AuditVerifyResponse{}, fmt.Errorf("verify %s: %w", dir, err)
	}
	return auditwire.ReportOf(report), nil
}

func printVerify(w io.Writer, source string, res wire.AuditVerifyResponse) {
	span := "no entries"
	if res.Entries > 0 {
		span = fmt.Sprintf("entries %d-%d (%d present)", res.FirstSeq, res.LastSeq, res.Entries)
	}
	if res.OK {
		fmt.Fprintf(w, "audit log (%s) verified: %s, %d signed checkpoints, signed head at %d\n", source, span, res.Checkpoints, res.HeadSeq)
	} else {
		fmt.Fprintf(w, "audit log (%s) FAILED verification: %s; %s\n", source, span, plural(len(res.Problems), "problem", "problems"))
		for _, p := range res.Problems {
			fmt.Fprintf(w, "  seq %d, %s:%d: %s\n", p.Seq, p.File, p.Line, p.Reason)
		}
	}
	if res.AuditSeq != 0 {
		fmt.Fprintf(w, "audit entry %d\n", res.AuditSeq)
	}
}
