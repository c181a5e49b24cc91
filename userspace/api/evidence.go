package api

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/blocknat/blocknat/userspace/audit"
)

// EvidenceFormat names the evidence file's format and version.
const EvidenceFormat = "blocknat-evidence-v1"

// EvidenceFile is what `blocknat lookup --evidence` and `history --evidence`
// write. It is JSON, indented with two spaces as EncodeEvidenceFile writes
// it; a reader may pretty-print or reindent it, but the check refuses a file
// that differs from that canonical form in any byte.
//
// AnswerSHA256 is the lowercase hex SHA-256 of the answer in compact form
// (the JSON with every insignificant space removed, as the agent sent it),
// so the answer can be shown indented here and still be hashed exactly.
type EvidenceFile struct {
	Format string `json:"format"`
	Evidence
}

// check verifies that the answer's bytes are those its entry names. It
// needs no key: VerifyEvidence does the rest.
func (e *Evidence) check() error {
	var compact bytes.Buffer
	if err := json.Compact(&compact, e.Answer); err != nil {
		return fmt.Errorf("evidence: answer is not JSON: %w", err)
	}
	sum := sha256.Sum256(compact.Bytes())
	got := hex.EncodeToString(sum[:])
	switch {
	case got != e.AnswerSHA256:
		return fmt.Errorf("evidence: the answer's SHA-256 is %s, but answer_sha256 says %s: the answer was changed", got, e.AnswerSHA256)
	case e.Proof.Entry.AnswerSHA256 != e.AnswerSHA256:
		return fmt.Errorf("evidence: audit entry %d names answer %s, not %s: the answer is not the one audited", e.Proof.Entry.Seq, e.Proof.Entry.AnswerSHA256, e.AnswerSHA256)
	}
	return nil
}

// EncodeEvidenceFile returns the canonical bytes of an evidence file.
func EncodeEvidenceFile(ev *Evidence) ([]byte, error) {
	if ev == nil {
		return nil, errors.New("evidence: the answer carried none")
	}
	b, err := json.MarshalIndent(EvidenceFile{Format: EvidenceFormat, Evidence: *ev}, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("evidence: encode: %w", err)
	}
	return append(b, '\n'), nil
}

// DecodeEvidenceFile parses an evidence file and checks that it is in
// canonical form, so that no byte of it can change unnoticed.
func DecodeEvidenceFile(data []byte) (*EvidenceFile, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var f EvidenceFile
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("evidence: not an evidence file: %w", err)
	}
	if f.Format != EvidenceFormat {
		return nil, fmt.Errorf("evidence: format %q is not %q", f.Format, EvidenceFormat)
	}
	want, err := EncodeEvidenceFile(&f.Evidence)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(want, data) {
		at := 0
		for at < len(want) && at < len(data) && want[at] == data[at] {
			at++
		}
		return nil, fmt.Errorf("evidence: the file differs from its canonical form at byte %d: it was changed after it was written", at)
	}
	return &f, nil
}

// VerifyEvidence checks an evidence file offline with the audit log's
// public key: the answer is the one its entry names, byte for byte, and the
// entry is in the chain the key signed.
func VerifyEvidence(f *EvidenceFile, pub ed25519.PublicKey) error {
	if err := f.Evidence.check(); err != nil {
		return err
	}
	if err := audit.VerifyProof(f.Proof, pub); err != nil {
		return fmt.Errorf("evidence: audit proof: %w", err)
	}
	return nil
}
