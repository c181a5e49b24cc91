package audit

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
)

// Outcome says how a request ended.
type Outcome string

const (
	OutcomeAnswered  Outcome = "answered"  // data returned
	OutcomeEmpty     Outcome = "empty"     // authorised, nothing matched
	OutcomeRefused   Outcome = "refused"   // not authorised (role) or missing purpose
	OutcomeMalformed Outcome = "malformed" // request could not be parsed/validated
	OutcomeError     Outcome = "error"     // internal failure
)

func (o Outcome) valid() bool {
	switch o {
	case OutcomeAnswered, OutcomeEmpty, OutcomeRefused, OutcomeMalformed, OutcomeError:
		return true
	}
	return false
}

// Entry is one use of the records. The caller fills in Operator, Role,
// Action, Criteria, Purpose, Outcome, Detail, Subjects and AnswerSHA256;
// Append assigns the rest.
type Entry struct {
	Seq      uint64            `json:"seq"`                // 1-based, assigned by Append
	Time     time.Time         `json:"time"`               // assigned by Append (UTC, RFC 3339 nano)
	Operator string            `json:"operator"`           // e.g. "uid:1001(alice)" or "cert:CN=alice"
	Role     string            `json:"role"`               // role the request was judged under, "" if none
	Action   string            `json:"action"`             // lookup, history, export, status, audit.show, audit.verify, ...
	Criteria map[string]string `json:"criteria,omitempty"` // the search criterion exactly as asked
	Purpose  string            `json:"purpose,omitempty"`  // case reference
	Outcome  Outcome           `json:"outcome"`
	Detail   string            `json:"detail,omitempty"` // e.g. "2 records", refusal reason
	// Subjects are the subscribers the request or its answer named, as
	// SubjectInside and SubjectMAC spell them, so that a subscriber's
	// "who looked me up" is a scan rather than a re-run of every search.
	Subjects []string `json:"subjects,omitempty"`
	// AnswerSHA256 is the lowercase hex SHA-256 of the exact answer bytes, so
	// that an evidence file can be matched to the entry that released it.
	AnswerSHA256 string `json:"answer_sha256,omitempty"`
	Prev         string `json:"prev"` // hex SHA-256 of the previous entry
	Hash         string `json:"hash"` // hex SHA-256 of the canonical encoding, see the package doc
}

// SubjectInside names a subscriber by its inside address. A subject search
// matches strings exactly, so every writer must spell an address the same
// way: an IPv4-mapped address is logged as the IPv4 one.
func SubjectInside(a netip.Addr) string { return "inside:" + a.Unmap().String() }

// SubjectMAC names a subscriber by its MAC address, "mac:aa:bb:cc:dd:ee:ff"
// (lowercase, colons), for the same reason.
func SubjectMAC(mac net.HardwareAddr) string { return "mac:" + mac.String() }

// Limits on what one entry may hold. A client controls the criteria, and an
// unbounded line would let it bloat the log that must record it; clipping
// instead of refusing keeps every request on record.
//
// Sizes are counted as the line holds them, after JSON escaping: encoding/json
// writes '<', '>', '&', U+2028, U+2029 and most control characters as
// six-byte \uXXXX escapes, so a field clipped by its raw length could still
// be six times its limit on disk.
const (
	// MaxEntryBytes bounds a whole line, newline included. prepare clips
	// purpose, detail and criteria further (the longest first, down to
	// minFitBytes each) until the entry with the largest seq, time and
	// hashes fits, and then drops criteria and subjects (counted under
	// TruncatedKey) if it must.
	MaxEntryBytes = 16 << 10
	MaxFieldBytes = 4096 // longer strings (escaped) are cut and marked "…[truncated N bytes]"
	MaxCriteria   = 64   // further criteria (by sorted key) are dropped and counted under TruncatedKey
	MaxSubjects   = 256  // further subjects (sorted) are dropped and counted in a last "…truncated: N more subjects not logged"
	TruncatedKey  = "…truncated"
)

const (
	entryDomain  = "blocknat-audit-entry-v1"
	signedDomain = "blocknat-audit-signed-v1"
	// entryTrailerTag starts the part of the entry encoding that entries
	// without subjects and answer hash leave out, so that their hashes stay
	// what they were before those fields existed.
	entryTrailerTag = "v2"
)

// zeroHash is the prev of seq 1.
var zeroHash = strings.Repeat("0", 2*sha256.Size)

// prepare checks what the caller must supply and makes every string valid,
// bounded UTF-8: encoding/json would silently replace invalid bytes when
// writing the line, and the hash must cover exactly what the line says.
func prepare(e Entry) (Entry, error) {
	var errs []error
	if e.Operator == "" {
		errs = append(errs, errors.New("entry.operator: required (who is asking)"))
	}
	if e.Action == "" {
		errs = append(errs, errors.New("entry.action: required (what kind of use)"))
	}
	if !e.Outcome.valid() {
		errs = append(errs, fmt.Errorf("entry.outcome: %q is not one of answered, empty, refused, malformed, error", e.Outcome))
	}
	if e.AnswerSHA256 != "" && !isDigest(e.AnswerSHA256) {
		errs = append(errs, fmt.Errorf("entry.answer_sha256: %q is not 64 lowercase hex characters (the SHA-256 of the answer bytes)", clip(e.AnswerSHA256)))
	}
	if err := errors.Join(errs...); err != nil {
		return Entry{}, err
	}
	out := Entry{
		Operator: clip(e.Operator),
		Role:     clip(e.Role),
		Action:   clip(e.Action),
		Purpose:  clip(e.Purpose),
		Outcome:  e.Outcome,
		Detail:   clip(e.Detail),

		AnswerSHA256: e.AnswerSHA256,
		Subjects:     prepareSubjects(e.Subjects),
	}
	dropped := 0
	if len(e.Criteria) > 0 {
		// Copy, so that the caller cannot change a stored entry afterwards.
		keys := make([]string, 0, len(e.Criteria))
		for k := range e.Criteria {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		out.Criteria = make(map[string]string, min(len(keys), MaxCriteria+1))
		for i, k := range keys {
			if i == MaxCriteria {
				dropped = len(keys) - MaxCriteria
				out.Criteria[TruncatedKey] = fmt.Sprintf("%d more criteria not logged", dropped)
				break
			}
			out.Criteria[clip(k)] = clip(e.Criteria[k])
		}
	}
	fit(&out, dropped)
	return out, nil
}

// minFitBytes is the least fit clips a string to, so that what is left
// still says what was there.
const minFitBytes = 64

// fit makes out's line at most MaxEntryBytes; dropped is the number of
// criteria prepare already left out.
func fit(out *Entry, dropped int) {
	for step := 0; ; step++ {
		over := lineBound(out) - MaxEntryBytes
		if over <= 0 {
			return
		}
		switch step {
		case 0:
			// Clip the longest of the strings a client supplies to one
			// cap, the largest that removes enough.
			keys := make([]string, 0, len(out.Criteria))
			for k := range out.Criteria {
				keys = append(keys, k)
			}
			slices.Sort(keys)
			values := make([]string, len(keys))
			for i, k := range keys {
				values[i] = out.Criteria[k]
			}
			items := []*string{&out.Purpose, &out.Detail}
			for i := range keys {
				items = append(items, &keys[i], &values[i])
			}
			clipToCap(items, over)
			if len(keys) > 0 {
				out.Criteria = make(map[string]string, len(keys))
				for i, k := range keys {
					if _, dup := out.Criteria[k]; dup {
						dropped++ // two keys that clipping made one
						continue
					}
					out.Criteria[k] = values[i]
				}
				if dropped > 0 {
					out.Criteria[TruncatedKey] = fmt.Sprintf("%d more criteria not logged", dropped)
				}
			}
		case 1:
			if n := len(out.Criteria); n > 0 {
				out.Criteria = map[string]string{TruncatedKey: fmt.Sprintf("%d criteria not logged: the entry would exceed %d bytes", n+dropped, MaxEntryBytes)}
			}
			if n := len(out.Subjects); n > 0 {
				out.Subjects = []string{fmt.Sprintf("%s: %d subjects not logged: the entry would exceed %d bytes", TruncatedKey, n, MaxEntryBytes)}
			}
		default:
			// Only the fields every entry has are left; these caps make
			// the line a fraction of the limit.
			for _, p := range []*string{&out.Operator, &out.Role, &out.Action, &out.Purpose, &out.Detail} {
				*p = clipEncoded(*p, 4*minFitBytes)
			}
			return
		}
	}
}

// clipToCap clips every item longer (escaped) than a cap to it, the cap
// being the largest that takes off at least over bytes, but not below
// minFitBytes.
func clipToCap(items []*string, over int) {
	lens := make([]int, len(items))
	total, longest := 0, 0
	for i, p := range items {
		lens[i] = encodedLen(*p)
		total += lens[i]
		longest = max(longest, lens[i])
	}
	target := total - over
	capped := func(c int) int {
		sum := 0
		for _, n := range lens {
			sum += min(n, c)
		}
		return sum
	}
	lo, hi := minFitBytes, longest // find the largest c in [lo, hi] with capped(c) <= target
	if capped(lo) > target {
		hi = lo
	}
	for lo < hi {
		mid := (lo + hi + 1) / 2
		if capped(mid) <= target {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	for i, p := range items {
		if lens[i] > lo {
			*p = clipEncoded(*p, lo)
		}
	}
}

// lineBound is the length of e's line, newline included, with the seq,
// time, prev and hash that Append assigns at their longest.
func lineBound(e *Entry) int {
	probe := *e
	probe.Seq = math.MaxUint64
	probe.Time = time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC)
	probe.Prev, probe.Hash = zeroHash, zeroHash
	line, err := json.Marshal(&probe)
	if err != nil {
		return math.MaxInt // cannot happen for valid UTF-8; treat as too large
	}
	return len(line) + 1
}

// encodedLen is the length of s inside a JSON string as encoding/json
// writes it (without the quotes).
func encodedLen(s string) int {
	n := 0
	for _, r := range s {
		n += runeEncodedLen(r)
	}
	return n
}

func runeEncodedLen(r rune) int {
	switch {
	case r == '"' || r == '\\' || r == '\n' || r == '\r' || r == '\t':
		return 2
	case r < 0x20 || r == '<' || r == '>' || r == '&' || r == '\u2028' || r == '\u2029' || r == utf8.RuneError:
		return 6
	case r < utf8.RuneSelf:
		return 1
	}
	return utf8.RuneLen(r)
}

// prepareSubjects returns a sorted, de-duplicated, bounded copy (nil when
// there are none, so that the entry encodes as one written before subjects
// existed). Clipping comes first, as two subjects it makes equal are one.
func prepareSubjects(subjects []string) []string {
	out := make([]string, 0, len(subjects))
	for _, s := range subjects {
		if s != "" { // names nobody
			out = append(out, clip(s))
		}
	}
	if len(out) == 0 {
		return nil
	}
	slices.Sort(out)
	out = slices.Compact(out)
	if len(out) > MaxSubjects {
		dropped := len(out) - MaxSubjects
		out = append(out[:MaxSubjects:MaxSubjects], fmt.Sprintf("%s: %d more subjects not logged", TruncatedKey, dropped))
	}
	return slices.Clip(out)
}

// isDigest says whether s is a SHA-256 as this package writes it.
func isDigest(s string) bool {
	if len(s) != 2*sha256.Size {
		return false
	}
	for i := range len(s) {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

func clip(s string) string {
	return clipEncoded(strings.ToValidUTF8(s, "\uFFFD"), MaxFieldBytes)
}

// clipEncoded cuts valid UTF-8 s so that it takes at most limit bytes
// escaped, marker included.
func clipEncoded(s string, limit int) string {
	if encodedLen(s) <= limit {
		return s
	}
	// The marker's number has at most 20 digits, and it escapes to itself.
	const markerRoom = len("…[truncated  bytes]") + 20
	room, cut := limit-markerRoom, 0
	for i, r := range s {
		n := runeEncodedLen(r)
		if room < n {
			break
		}
		room -= n
		cut = i + utf8.RuneLen(r)
	}
	return s[:cut] + fmt.Sprintf("…[truncated %d bytes]", len(s)-cut)
}

// canon builds the length-prefixed encoding described in the package doc.
type canon []byte

func (c *canon) str(s string) {
	*c = binary.BigEndian.AppendUint32(*c, uint32(len(s)))
	*c = append(*c, s...)
}

func (c *canon) u64(v uint64) { *c = binary.BigEndian.AppendUint64(*c, v) }

func formatTime(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

// entryHash is the hash of every field of e except Hash.
func entryHash(e *Entry) string {
	c := make(canon, 0, 256)
	c.str(entryDomain)
	c.u64(e.Seq)
	c.str(formatTime(e.Time))
	c.str(e.Operator)
	c.str(e.Role)
	c.str(e.Action)
	keys := make([]string, 0, len(e.Criteria))
	for k := range e.Criteria {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	c.u64(uint64(len(keys)))
	for _, k := range keys {
		c.str(k)
		c.str(e.Criteria[k])
	}
	c.str(e.Purpose)
	c.str(string(e.Outcome))
	c.str(e.Detail)
	c.str(e.Prev)
	if len(e.Subjects) > 0 || e.AnswerSHA256 != "" {
		c.str(entryTrailerTag)
		c.u64(uint64(len(e.Subjects)))
		for _, s := range e.Subjects {
			c.str(s)
		}
		c.str(e.AnswerSHA256)
	}
	sum := sha256.Sum256(c)
	return hex.EncodeToString(sum[:])
}
