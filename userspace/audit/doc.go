// Package audit is blocknat's tamper-evident log of every use of the retained
// NAT records (sikkerhedsbekendtgørelsen § 19: time, who, what kind of use,
// and the search criterion). The API server appends one Entry per request
// before it answers; if Append fails, the request gets no data.
//
// Everything an auditor needs to check a copy of the directory without this
// package is written down below.
//
// # Files
//
// A log directory holds:
//
//	audit-YYYYMMDD.jsonl  entries, one JSON object per line, one file per UTC day
//	checkpoints.jsonl     signed checkpoints and retention anchors, one per line
//	head.json             the signed head: seq and hash of the newest entry
//	audit.pub             the ed25519 public key, PEM "PUBLIC KEY" (PKIX)
//
// The private key lives elsewhere (Options.KeyPath, PEM "PRIVATE KEY",
// PKCS #8, mode 0600), so that copying the directory off the box never copies
// it. Files that match none of these names (head.json.tmp, quarantined torn
// lines, see below) are ignored by verification.
//
// An entry goes into the segment of the UTC day of its Time. When the clock
// steps back over midnight, entries stay in the newest segment, so segment
// names always sort in seq order. A line is exactly what Go's encoding/json
// Marshal produces for Entry (fields in declaration order, criteria keys
// sorted, no spaces, Time in UTC, empty criteria, purpose, detail, subjects
// and answer_sha256 left out), followed by "\n". Verification re-encodes
// every line and reports one that differs, so even a change that does not
// alter a field's meaning (a key's letter case, say) is caught. Lines written
// before subjects and answer_sha256 existed have neither key, and re-encode
// byte for byte as they were written.
//
// A line, newline included, is at most MaxEntryBytes (16 KiB), counted as
// written, after JSON escaping ('<', '>', '&', U+2028, U+2029 and control
// characters take six bytes each). Each string is first clipped to
// MaxFieldBytes escaped bytes and marked "…[truncated N bytes]" (N counts the
// UTF-8 bytes cut); when the line would still be longer, purpose, detail and
// criteria keys and values are clipped, the longest first, to one cap of at
// least 64 bytes, and if that is not enough the criteria and subjects are
// replaced by one note under "…truncated" that counts them. A clipped entry
// is hashed and verified as written, like any other.
//
// subjects lists the subscribers the request or its answer named
// ("inside:100.64.0.7", "mac:aa:bb:cc:dd:ee:ff"), sorted bytewise without
// duplicates; beyond MaxSubjects the rest are dropped and a last element
// "…truncated: N more subjects not logged" counts them. answer_sha256 is
// the lowercase hex SHA-256 of the exact bytes of the answer given.
//
// # The entry hash
//
// Hash is the lowercase hex SHA-256 of a length-prefixed binary encoding, so
// that it does not depend on any JSON library. With str(s) = the byte length
// of s as a 4-byte big-endian integer followed by the UTF-8 bytes of s, and
// u64(n) = n as 8 bytes big-endian, the hashed bytes are
//
//	str("blocknat-audit-entry-v1") u64(seq) str(time) str(operator) str(role)
//	str(action) u64(number of criteria) { str(key) str(value) }...
//	str(purpose) str(outcome) str(detail) str(prev) [trailer]
//
// and, only when subjects or answer_sha256 is non-empty,
//
//	trailer = str("v2") u64(number of subjects) { str(subject) }...
//	          str(answer_sha256)
//
// with the subjects in the order of the line and answer_sha256 as written
// ("" when absent). An entry with neither has no trailer, so its hash is the
// one it had before these fields existed. Every part is length-prefixed, so
// the bytes after str(prev) are either nothing or a trailer and no two
// entries share an encoding. Here time is Time in UTC formatted as RFC 3339
// with nanoseconds and trailing zeros dropped (Go's time.RFC3339Nano, as it
// appears in the line), criteria pairs are in ascending bytewise order of
// key, and prev is the previous entry's Hash as 64 lowercase hex characters. The first entry of a
// log has prev = 64 zeros; after retention pruning the first entry left has
// prev = the hash recorded by the newest retention anchor.
//
// # Signed records
//
// checkpoints.jsonl and head.json hold lines of the form
//
//	{"kind":"checkpoint","seq":100,"hash":"…","time":"…","sig":"…"}
//
// kind is "checkpoint" (every Options.CheckpointEvery entries, every
// Options.CheckpointInterval when entries were added, on Checkpoint and on
// Close), "anchor" (written by Sweep before it deletes segments: seq and hash
// of the last entry deleted) or "head" (only in head.json, rewritten on every
// Append through a temporary file, fsync and rename). sig is the lowercase hex
// ed25519 signature over
//
//	str("blocknat-audit-signed-v1") str(kind) u64(seq) str(hash) str(time)
//
// with the same str, u64 and time rules as the entry hash.
//
// # Proofs
//
// A proof shows with the public key alone that one entry is in the signed
// chain, so that whoever received an answer can check, without a copy of the
// log, the entry that released it and (by its answer_sha256) that the bytes
// they hold are the answer it records. As JSON:
//
//	{"entry":{…},"chain":[{…},…],"signed":{"kind":"head",…}}
//
// entry and every element of chain are entries as a segment line holds them,
// and signed is a signed record as in head.json or checkpoints.jsonl. chain
// is entry followed by every later entry up to the seq signed names; it is
// left out when signed names entry itself (the head written by the entry's
// own append). A proof holds when
//
//   - every entry's hash is the entry hash of its content, and its seq is
//     not 0;
//   - chain, when present, starts with an entry whose hash is entry's, and
//     each later element has the seq one above the one before and prev equal
//     to its hash;
//   - signed is of a kind above, its hash and sig are lowercase hex, its time
//     is UTC, and sig verifies under the public key as described in "Signed
//     records";
//   - signed's seq and hash are those of the last element of chain (of entry
//     when chain is left out).
//
// A proof says that the entry was in the chain when the record was signed,
// and no more: like every signed record, it does not show that the log
// still holds the entry, nor that no one holding the key rewrote it since.
//
// # What verification checks
//
// Verify reads the directory and reports every Problem with the seq, the file
// and the 1-based line at fault:
//
//   - a line that is not a complete, canonical JSON entry, or whose hash does
//     not match its content (any changed byte);
//   - a line without its final newline (a torn write, or a cut file);
//   - seqs that skip (deleted entries or a deleted segment in the middle),
//     go back (reordered entries) or whose prev is not the hash before them;
//   - a first entry that is neither seq 1 with a zero prev nor the successor of
//     a signed anchor (deleted oldest segments that pruning did not remove);
//   - a checkpoint, anchor or head with a bad signature (forged, edited, or
//     signed with another key), and one whose hash differs from the entry it
//     names (entries rewritten and re-chained);
//   - a signed record naming a seq beyond the last entry (the log was
//     truncated, or its newest segment deleted), a missing head.json, and
//     entries after the seq of the head (appended without the key).
//
// Pruning by Sweep is not a problem: the anchor it signs first accounts for
// the entries it deletes.
//
// A signed head or checkpoint proves only what was there when it was signed.
// Anyone holding the private key (root on the router can read it) can rewrite
// the log and re-sign everything, and anyone can roll the whole directory back
// to an older consistent copy. The checkpoints are therefore meant to be
// shipped off the box as they are written, and the public key kept off the box
// too: to check a copy against the shipped checkpoints, put the shipped
// checkpoints.jsonl (which holds every line the box ever wrote, so it is a
// superset of an honest box's file) into the copy and run Verify with the
// off-box public key.
//
// # Crashes
//
// Append writes and fsyncs the entry line, then the head, so a crash can leave
// (a) an entry that the head does not cover yet, or (b) a torn last line. Open
// accepts (a) when it is exactly one entry (the crash window; Append never
// returned for it, so no data was answered) and re-signs the head; Verify still
// reports it until then. For (b), when torn last lines (of the newest
// segment or of checkpoints.jsonl) are the only problems, Open runs
// RepairTornTail, which moves the torn bytes into <segment>.torn-<offset>
// (kept, not dropped, and deleted with its segment by retention) and cuts the
// file back to its last complete line, and then appends an entry recording
// the repair (operator "blocknatd", action "audit.repair", the files named in
// the detail), so a crash is never a reason not to start and never goes
// unrecorded. A torn line was never acknowledged: Append had not returned,
// so no answer depended on it. RepairTornTail refuses, and Open with it,
// when any other problem is present, so it cannot be used to cut
// acknowledged entries.
//
// # Retention
//
// Sweep deletes whole segments, oldest first, whose newest entry is older
// than Options.Retention. It first verifies the log (an anchor signed over
// tampered data would launder it), then signs an anchor for the last entry it
// deletes, then unlinks the files. Unlinking frees the blocks but does not
// overwrite them on the device; put the log on an encrypted volume where
// erasure at the media level is required.
package audit
