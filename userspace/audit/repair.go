package audit

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

const tornSuffix = ".torn-"

// RepairTornTail undoes what a crash in the middle of a write leaves: an
// incomplete last line in the newest segment or in checkpoints.jsonl. The
// torn bytes move to <file>.torn-<offset> beside it and the file is cut back
// to its last complete line; the paths of the moved-aside files are
// returned. It changes nothing and returns an error when the log has any
// other problem, or a torn line anywhere else: Append fsyncs an entry before
// it signs the head, so a torn line was never acknowledged, but only where a
// crash can have left it. Open the log afterwards and append an entry that
// records the repair.
func RepairTornTail(dir string, pub ed25519.PublicKey) ([]string, error) {
	if len(pub) != ed25519.PublicKeySize {
		return nil, errors.New("audit repair: an ed25519 public key is required")
	}
	snap, err := takeSnapshot(dir)
	if err != nil {
		return nil, fmt.Errorf("audit repair: %w", err)
	}
	res, err := scan(snap, pub)
	if err != nil {
		return nil, fmt.Errorf("audit repair: %w", err)
	}
	newest := ""
	if n := len(snap.segments); n > 0 {
		newest = snap.segments[n-1].name
	}
	var torn []string
	for _, p := range res.problems {
		switch {
		case p.kind == kindTorn && (p.File == newest || p.File == checkpointsFile):
			torn = append(torn, p.File)
		case p.kind == kindUnsignedTail && p.count == 1:
			// Open signs it.
		default:
			return nil, fmt.Errorf("audit repair: the log has a problem a crash cannot explain, not repairing: %s", p.Problem)
		}
	}
	var moved []string
	for _, name := range torn {
		path := filepath.Join(dir, name)
		data, err := os.ReadFile(path)
		if err != nil {
			return moved, fmt.Errorf("audit repair: %w", err)
		}
		cut := bytes.LastIndexByte(data, '\n') + 1
		aside := fmt.Sprintf("%s%s%d", path, tornSuffix, cut)
		if err := writeFileAtomic(dir, filepath.Base(aside), data[cut:], 0o600); err != nil {
			return moved, fmt.Errorf("audit repair: keep torn bytes of %s: %w", name, err)
		}
		if err := truncateSync(path, int64(cut)); err != nil {
			return moved, fmt.Errorf("audit repair: cut %s back to %d bytes: %w", name, cut, err)
		}
		moved = append(moved, aside)
	}
	return moved, nil
}

func truncateSync(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	err = f.Truncate(size)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
