package audit

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"slices"
)

// Proof shows, with the public key alone, that Entry is in the signed chain,
// so that whoever received an answer can check offline which entry released
// it (Entry.AnswerSHA256) without a copy of the log. Chain is Entry and then
// every later entry up to the seq Signed names; it is left out when Signed
// names Entry itself, as the head AppendProved returns does. The package doc
// ("Proofs") specifies the check.
type Proof struct {
	Entry  Entry        `json:"entry"`
	Chain  []Entry      `json:"chain,omitempty"`
	Signed SignedRecord `json:"signed"`
}

// VerifyProof checks p against pub: every entry's hash matches its content,
// the chain starts at the entry and runs on without a gap (consecutive seqs,
// each prev the hash before it), and the signed record verifies and names the
// chain's last entry by seq and hash. The error names the first check that
// failed.
func VerifyProof(p Proof, pub ed25519.PublicKey) error {
	if len(pub) != ed25519.PublicKeySize {
		return errors.New("audit proof: an ed25519 public key is required (the log's audit.pub, from a copy kept off the box)")
	}
	if err := checkEntry(&p.Entry); err != nil {
		return fmt.Errorf("audit proof: entry (seq %d): %w", p.Entry.Seq, err)
	}
	chain := p.Chain
	if len(chain) == 0 {
		chain = []Entry{p.Entry}
	} else if chain[0].Hash != p.Entry.Hash {
		return fmt.Errorf("audit proof: chain[0] (seq %d) is not the proved entry (seq %d): the chain must start with it", chain[0].Seq, p.Entry.Seq)
	}
	for i := range chain {
		e := &chain[i]
		if err := checkEntry(e); err != nil {
			return fmt.Errorf("audit proof: chain[%d] (seq %d): %w", i, e.Seq, err)
		}
		if i == 0 {
			continue
		}
		before := &chain[i-1]
		if e.Seq != before.Seq+1 {
			return fmt.Errorf("audit proof: chain[%d]: seq %d follows seq %d: entries missing or out of order", i, e.Seq, before.Seq)
		}
		if e.Prev != before.Hash {
			return fmt.Errorf("audit proof: chain[%d] (seq %d): prev is not the hash of seq %d: the chain was altered", i, e.Seq, before.Seq)
		}
	}
	last := &chain[len(chain)-1]
	if err := p.Signed.Verify(pub); err != nil {
		return fmt.Errorf("audit proof: signed %s (seq %d): %w", p.Signed.Kind, p.Signed.Seq, err)
	}
	if p.Signed.Seq != last.Seq {
		return fmt.Errorf("audit proof: the signed %s names seq %d, but the chain ends at seq %d", p.Signed.Kind, p.Signed.Seq, last.Seq)
	}
	if p.Signed.Hash != last.Hash {
		return fmt.Errorf("audit proof: the signed %s's hash for seq %d is not that entry's hash: it is not the entry that was signed", p.Signed.Kind, last.Seq)
	}
	return nil
}

func checkEntry(e *Entry) error {
	if e.Seq == 0 {
		return errors.New("seq 0: not an entry")
	}
	if entryHash(e) != e.Hash {
		return errors.New("hash does not match its content: the entry was altered")
	}
	return nil
}

// ProveEntry builds the Proof of entry seq from the log on disk: the chain
// from it to the first checkpoint or head at or after it, so that a proof
// for an entry whose own head is long replaced stays short. It checks the
// proof before returning it, so an error also means the log does not prove
// the entry (Verify says why).
func (l *Log) ProveEntry(seq uint64) (Proof, error) {
	l.files.RLock()
	defer l.files.RUnlock()
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return Proof{}, ErrClosed
	}
	segs := slices.Clone(l.segments)
	signed := l.head
	cps := fileSnap{checkpointsFile, l.cpsSize}
	lastCheckpoint := l.cpSeq
	l.mu.Unlock()

	if seq == 0 || seq > signed.Seq {
		return Proof{}, fmt.Errorf("audit prove: no signed entry %d: the log's signed head is at seq %d", seq, signed.Seq)
	}
	if seq <= lastCheckpoint {
		data, err := readSnap(l.dir, cps)
		if err != nil {
			return Proof{}, fmt.Errorf("audit prove: %w", err)
		}
		lines, _ := splitLines(data)
		for _, line := range lines {
			// A line that does not verify cannot prove anything; a later
			// record still can, and Verify reports the line.
			rec, err := parseSigned(line, l.pub)
			if err == nil && rec.Kind == kindCheckpoint && rec.Seq >= seq && rec.Seq < signed.Seq {
				signed = rec
			}
		}
	}

	var chain []Entry
	for _, seg := range segs {
		if seg.entries == 0 || seg.lastSeq < seq || seg.firstSeq > signed.Seq {
			continue
		}
		err := l.segmentEntries(seg, func(e Entry) bool {
			if e.Seq >= seq && e.Seq <= signed.Seq {
				chain = append(chain, e)
			}
			return e.Seq < signed.Seq
		})
		if err != nil {
			return Proof{}, fmt.Errorf("audit prove: %w", err)
		}
	}
	if len(chain) == 0 || chain[0].Seq != seq {
		return Proof{}, fmt.Errorf("audit prove: entry %d is not in the log (removed by retention)", seq)
	}
	p := Proof{Entry: chain[0], Signed: signed}
	if len(chain) > 1 {
		p.Chain = chain
	}
	if err := VerifyProof(p, l.pub); err != nil {
		return Proof{}, fmt.Errorf("audit prove: entry %d: the log does not prove it, run `blocknat audit verify`: %w", seq, err)
	}
	return p, nil
}
