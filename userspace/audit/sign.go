package audit

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/blocknat/blocknat/userspace/logattr"
)

// Kinds of signed record.
const (
	kindCheckpoint = "checkpoint"
	kindAnchor     = "anchor"
	kindHead       = "head"
)

// SignedRecord is a checkpoint, anchor or head, as one line of
// checkpoints.jsonl or head.json holds it, and the signed part of a Proof.
type SignedRecord struct {
	Kind string    `json:"kind"`
	Seq  uint64    `json:"seq"`
	Hash string    `json:"hash"`
	Time time.Time `json:"time"`
	Sig  string    `json:"sig"`
}

func (r *SignedRecord) message() []byte {
	c := make(canon, 0, 128)
	c.str(signedDomain)
	c.str(r.Kind)
	c.u64(r.Seq)
	c.str(r.Hash)
	c.str(formatTime(r.Time))
	return c
}

func signRecord(priv ed25519.PrivateKey, kind string, seq uint64, hash string, t time.Time) SignedRecord {
	r := SignedRecord{Kind: kind, Seq: seq, Hash: hash, Time: t.UTC()}
	r.Sig = hex.EncodeToString(ed25519.Sign(priv, r.message()))
	return r
}

// line is the record's canonical line, newline included.
func (r *SignedRecord) line() []byte {
	b, err := json.Marshal(r)
	if err != nil {
		// Only a time outside years 0-9999 can fail, and Append's clock is not.
		panic(fmt.Sprintf("audit: encode signed record: %v", err))
	}
	return append(b, '\n')
}

// Verify checks that r is signed by pub and in the form this package signs
// (a known kind, lowercase hex hash and signature, Time in UTC), so that a
// record that verifies has one JSON spelling only. It says nothing about
// whether the entry r names exists; Verify and VerifyProof check that.
func (r SignedRecord) Verify(pub ed25519.PublicKey) error {
	if len(pub) != ed25519.PublicKeySize {
		return errors.New("an ed25519 public key is required")
	}
	switch r.Kind {
	case kindCheckpoint, kindAnchor, kindHead:
	default:
		return fmt.Errorf("kind %q is none of %s, %s, %s", r.Kind, kindCheckpoint, kindAnchor, kindHead)
	}
	if !isDigest(r.Hash) {
		return errors.New("hash: not 64 lowercase hex characters")
	}
	if r.Time.Location() != time.UTC {
		return errors.New("time: not in UTC, as records are signed")
	}
	sig, err := hex.DecodeString(r.Sig)
	if err != nil || len(sig) != ed25519.SignatureSize || hex.EncodeToString(sig) != r.Sig {
		return errors.New("sig: not a lowercase hex ed25519 signature")
	}
	if !ed25519.Verify(pub, r.message(), sig) {
		return errors.New("bad signature: record altered, forged, or signed with another key")
	}
	return nil
}

// parseSigned decodes one line (without its newline) and checks its encoding
// and signature. The record is returned whenever it decoded, so that a caller
// can name its seq in a problem.
func parseSigned(line []byte, pub ed25519.PublicKey) (SignedRecord, error) {
	var r SignedRecord
	if err := json.Unmarshal(line, &r); err != nil {
		return r, fmt.Errorf("not a valid signed record: %w", err)
	}
	canonical := r
	canonical.Time = r.Time.UTC()
	if want := canonical.line(); !bytes.Equal(want[:len(want)-1], line) {
		return r, errors.New("signed record is not in canonical form (its bytes were altered)")
	}
	return r, r.Verify(pub)
}

// loadOrCreateKey reads the PKCS #8 ed25519 key at path, creating it (0600)
// when the file does not exist.
func loadOrCreateKey(path string, logger *slog.Logger) (ed25519.PrivateKey, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return createKey(path, logger)
	}
	if err != nil {
		return nil, fmt.Errorf("read audit key %s: %w", path, err)
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("audit key %s: no PEM \"PRIVATE KEY\" block", path)
	}
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("audit key %s: %w", path, err)
	}
	priv, ok := key.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("audit key %s: %T is not an ed25519 key", path, key)
	}
	if fi, err := os.Stat(path); err == nil && fi.Mode().Perm()&0o077 != 0 {
		logger.Warn("audit signing key is readable by group or others", logattr.Path, path)
	}
	return priv, nil
}

func createKey(path string, logger *slog.Logger) (ed25519.PrivateKey, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate audit key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("encode audit key: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create audit key directory: %w", err)
	}
	// O_EXCL: two agents racing must not end up signing with different keys.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("create audit key %s: %w", path, err)
	}
	_, err = f.Write(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = syncDir(filepath.Dir(path))
	}
	if err != nil {
		return nil, fmt.Errorf("write audit key %s: %w", path, err)
	}
	logger.Info("generated audit signing key", logattr.Path, path)
	return priv, nil
}

// MarshalPublicKey encodes pub as PEM "PUBLIC KEY" (PKIX), the format of
// audit.pub, which openssl also reads.
func MarshalPublicKey(pub ed25519.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("encode public key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}

// ParsePublicKey decodes a PEM "PUBLIC KEY" block holding an ed25519 key.
func ParsePublicKey(data []byte) (ed25519.PublicKey, error) {
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "PUBLIC KEY" {
		return nil, errors.New("no PEM \"PUBLIC KEY\" block")
	}
	key, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return nil, err
	}
	pub, ok := key.(ed25519.PublicKey)
	if !ok {
		return nil, fmt.Errorf("%T is not an ed25519 key", key)
	}
	return pub, nil
}

// ReadPublicKey is ParsePublicKey for a reader, such as the audit.pub a
// requester received with a proof.
func ReadPublicKey(r io.Reader) (ed25519.PublicKey, error) {
	// A PEM ed25519 key is about 113 bytes; the bound keeps a wrong file
	// from being read whole.
	data, err := io.ReadAll(io.LimitReader(r, 64<<10))
	if err != nil {
		return nil, fmt.Errorf("read public key: %w", err)
	}
	return ParsePublicKey(data)
}

// LoadPublicKey reads a public key written by MarshalPublicKey. An auditor
// should load the key from a copy kept off the box, not from the audit.pub
// of the directory being checked, which whoever altered the log could replace.
func LoadPublicKey(path string) (ed25519.PublicKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read public key: %w", err)
	}
	pub, err := ParsePublicKey(data)
	if err != nil {
		return nil, fmt.Errorf("public key %s: %w", path, err)
	}
	return pub, nil
}

// writePublicKey writes audit.pub, or checks that the one there is ours: a
// different key there means the directory belongs to another key, and
// signing on would leave a log no single key verifies.
func writePublicKey(dir string, pub ed25519.PublicKey) error {
	path := filepath.Join(dir, pubFile)
	data, err := os.ReadFile(path)
	if err == nil {
		have, perr := ParsePublicKey(data)
		if perr != nil {
			return fmt.Errorf("%s: %w", path, perr)
		}
		if !have.Equal(pub) {
			return fmt.Errorf("%s holds a different public key than the audit key (Options.KeyPath): this log was signed with another key; refusing to sign on", path)
		}
		return nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("read %s: %w", path, err)
	}
	pemData, err := MarshalPublicKey(pub)
	if err != nil {
		return err
	}
	if err := writeFileAtomic(dir, pubFile, pemData, 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// writeFileAtomic replaces dir/name by data: temporary file, fsync, rename,
// fsync of the directory, so that a crash leaves the old or the new file.
func writeFileAtomic(dir, name string, data []byte, perm os.FileMode) error {
	tmp := filepath.Join(dir, name+".tmp")
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, perm)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(dir, name))
	}
	if err == nil {
		err = syncDir(dir)
	}
	return err
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
