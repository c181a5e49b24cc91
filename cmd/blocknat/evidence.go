package main

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/blocknat/blocknat/userspace/api/client"
	"github.com/blocknat/blocknat/userspace/audit"
	"github.com/blocknat/blocknat/userspace/auditwire"
	"github.com/blocknat/blocknat/userspace/wire"
)

func init() {
	commands["evidence"] = command{
		summary: "verify an evidence file offline with the audit log's public key",
		run:     runEvidence,
	}
}

const evidenceSynopsis = `evidence verify FILE --pubkey audit.pub [--json]

Checks, without the agent, an evidence file that 'blocknat lookup
--evidence' or 'history --evidence' wrote: that the answer in it is, byte
for byte, the one its audit entry names, and that the entry is in the audit
chain signed by the key. Take audit.pub from a copy kept off the router.
Exits 1 when any check fails, and says which.`

func runEvidence(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "verify" {
		if len(args) > 0 && (args[0] == "help" || args[0] == "-h" || args[0] == "--help") {
			fmt.Fprintf(stdout, "usage: blocknat %s\n", evidenceSynopsis)
			return exitOK
		}
		fmt.Fprintf(stderr, "blocknat evidence: want the verb verify\nusage: blocknat %s\n", evidenceSynopsis)
		return exitUsage
	}
	const name = "evidence verify"
	fs := newFlagSet(name, evidenceSynopsis, stderr)
	pubkey := fs.String("pubkey", "", "the audit log's public key `file` (PEM), from a copy kept off the router")
	asJSON := fs.Bool("json", false, "print the verified answer as JSON")
	positional, err := parseInterspersed(fs, args[1:])
	if err != nil {
		return flagExit(err)
	}
	if len(positional) != 1 {
		return report(stderr, name, usagef("give exactly one evidence FILE"))
	}
	if err := required(map[string]*string{"pubkey": pubkey}); err != nil {
		return report(stderr, name, err)
	}
	pub, err := audit.LoadPublicKey(*pubkey)
	if err != nil {
		return report(stderr, name, fmt.Errorf("--pubkey: %w", err))
	}
	data, err := os.ReadFile(positional[0])
	if err != nil {
		return report(stderr, name, err)
	}
	f, err := wire.DecodeEvidenceFile(data)
	if err == nil {
		err = auditwire.VerifyEvidence(f, pub)
	}
	if err != nil {
		fmt.Fprintf(stdout, "evidence %s: FAILED\n  %v\n", positional[0], err)
		return exitFailure
	}
	if *asJSON {
		return report(stderr, name, printJSON(stdout, f))
	}
	printEvidence(stdout, positional[0], f, keyFingerprint(pub))
	return exitOK
}

func printEvidence(w io.Writer, path string, f *wire.EvidenceFile, fingerprint string) {
	e, s := f.Proof.Entry, f.Proof.Signed
	fmt.Fprintf(w, "evidence %s: OK\n", path)
	fmt.Fprintf(w, "  the answer below (SHA-256 %s) is, byte for byte, the one audit entry %d records:\n", f.AnswerSHA256, e.Seq)
	fmt.Fprintf(w, "    %s at %s by %s (role %s), outcome %s\n", safeText(e.Action), humanTime(e.Time), safeText(e.Operator), safeText(e.Role), safeText(string(e.Outcome)))
	fmt.Fprintf(w, "    purpose %s\n", strconv.Quote(e.Purpose))
	if len(e.Criteria) > 0 {
		fmt.Fprintf(w, "    criteria %s\n", criteriaLine(e.Criteria))
	}
	fmt.Fprintf(w, "  entry %d is in the audit chain that the key %s signed (%s at seq %d, %s)\n",
		e.Seq, fingerprint, s.Kind, s.Seq, humanTime(s.Time))
	fmt.Fprintln(w, "  this does not prove the router's log was not rewritten by someone holding that key;")
	fmt.Fprintln(w, "  the checkpoints shipped off the router show that (blocknat audit verify --dir --pubkey)")
	fmt.Fprintln(w, "answer:")
	switch e.Action {
	case wire.ActionLookup:
		var ans wire.LookupResponse
		if json.Unmarshal(f.Answer, &ans) == nil {
			ans.AuditSeq = e.Seq
			printLookup(&indent{w: w}, e.Criteria["time"], &ans)
			return
		}
	case wire.ActionHistory:
		var ans wire.HistoryResponse
		if json.Unmarshal(f.Answer, &ans) == nil {
			ans.AuditSeq = e.Seq
			printHistory(&indent{w: w}, &ans)
			return
		}
	}
	fmt.Fprintf(w, "  %s\n", f.Answer)
}

// keyFingerprint names a public key by the SHA-256 of its raw bytes, short
// enough to read over the phone to whoever holds the key's copy.
func keyFingerprint(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return "sha256:" + hex.EncodeToString(sum[:16])
}

// indent prefixes every line written through it with two spaces. A line
// may arrive in several writes, so it remembers whether the next byte starts
// one.
type indent struct {
	w       io.Writer
	midLine bool
}

func (i *indent) Write(p []byte) (int, error) {
	for _, l := range strings.SplitAfter(string(p), "\n") {
		if l == "" {
			continue
		}
		if !i.midLine {
			l = "  " + l
		}
		if _, err := io.WriteString(i.w, l); err != nil {
			return 0, err
		}
		i.midLine = !strings.HasSuffix(l, "\n")
	}
	return len(p), nil
}

// checkNewFile refuses, before anything is asked, an output file that
// already exists, so that a name clash costs no audited request.
func checkNewFile(flagName, path string) error {
	if path == "" {
		return nil
	}
	if _, err := os.Lstat(path); err == nil {
		return fmt.Errorf("%s: %s exists; remove it or choose another name", flagName, path)
	}
	return nil
}

// writeEvidence writes an answer's evidence file (mode 0600: it holds
// personal data), through a temporary file so that a crash leaves none
// half written.
func writeEvidence(path string, ev *wire.Evidence) error {
	if path == "" {
		return nil
	}
	data, err := wire.EncodeEvidenceFile(ev)
	if err != nil {
		return err
	}
	tmp, err := os.OpenFile(path+".tmp", os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("--evidence: %w", err)
	}
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(path+".tmp", path)
	}
	if err != nil {
		os.Remove(path + ".tmp")
		return fmt.Errorf("--evidence %s: %w", path, err)
	}
	if d, derr := os.Open(filepath.Dir(path)); derr == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// criteriaLine prints criteria as key=value in key order.
func criteriaLine(c map[string]string) string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = safeText(k) + "=" + quoteIfNeeded(c[k])
	}
	return strings.Join(parts, " ")
}

func runAuditSubject(args []string, stdout, stderr io.Writer) int {
	const name = "audit subject"
	fs := newFlagSet(name, auditSynopsis, stderr)
	subscriber := fs.String("subscriber", "", "the subscriber's inside IPv4 `address`")
	mac := fs.String("mac", "", "a device's hardware `address`")
	from := fs.String("from", "", "start of the period, RFC 3339 with a zone")
	to := fs.String("to", "", "end of the period, RFC 3339 with a zone")
	af := addAPIFlags(fs)
	if ok, code := parseAPIFlags(fs, args); !ok {
		return code
	}
	if err := required(map[string]*string{"from": from, "to": to}); err != nil {
		return report(stderr, name, err)
	}
	if (*subscriber == "") == (*mac == "") {
		return report(stderr, name, usagef("give one of --subscriber and --mac"))
	}
	req := wire.AuditSubjectRequest{Subscriber: *subscriber, MAC: *mac, From: *from, To: *to}
	err := withClient(af, func(ctx context.Context, c *client.Client) error {
		ans, err := c.AuditSubject(ctx, req)
		if err != nil {
			return err
		}
		if *af.asJSON {
			return printJSON(stdout, ans)
		}
		printAuditSubject(stdout, ans)
		return nil
	})
	return report(stderr, name, err)
}

func printAuditSubject(w io.Writer, ans *wire.AuditSubjectResponse) {
	fmt.Fprintf(w, "%s from %s to %s: %s\n", safeText(ans.Subject), humanTime(ans.From), humanTime(ans.To), plural(len(ans.Uses), "request named it", "requests named it"))
	for _, u := range ans.Uses {
		fmt.Fprintf(w, "  %s  %s  role %s  outcome %s  (entry %d; named in the %s)\n",
			humanTime(u.Time), safeText(u.Action), safeText(u.Role), safeText(string(u.Outcome)), u.Seq, safeText(strings.Join(u.Named, " and ")))
		if u.Purpose != "" {
			fmt.Fprintf(w, "    purpose %s\n", quoteIfNeeded(u.Purpose))
		}
	}
	fmt.Fprintf(w, "audit entry %d (this request)\n", ans.AuditSeq)
}
