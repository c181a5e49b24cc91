package wire

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
)

// Evidence is an answer exactly as it was audited: the answer's bytes, their
// SHA-256 (which the audit entry holds), and the proof that the entry is in
// the signed audit chain. `blocknat evidence verify` checks it offline.
type Evidence struct {
	AnswerSHA256 string          `json:"answer_sha256"`
	Answer       json.RawMessage `json:"answer"`
	Proof        AuditProof      `json:"proof"`
}

// Answered is the body of an answered lookup or history: the answer
// document, byte for byte as hashed into its audit entry, and the proof.
type Answered struct {
	AuditSeq uint64 `json:"audit_seq"`
	Evidence
}

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

// CheckAnswer verifies that the answer's bytes are those its entry names.
// It needs no key; that the entry is in the signed chain is checked with
// the audit log's public key (userspace/auditwire.VerifyEvidence).
func (e *Evidence) CheckAnswer() error {
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
