package auditwire

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/blocknat/blocknat/userspace/audit"
	"github.com/blocknat/blocknat/userspace/wire"
)

// TestSameJSON: an entry and a proof read the same on the wire as in the
// log, byte for byte, and come back unchanged; an evidence file and an
// audit show depend on it.
func TestSameJSON(t *testing.T) {
	at := time.Date(2026, 11, 20, 12, 0, 1, 700, time.UTC)
	full := audit.Entry{Seq: 7, Time: at, Operator: "uid:0(root)", Role: "investigator", Action: "lookup",
		Criteria: map[string]string{"ip": "198.51.100.10", "port": "2600"}, Purpose: "case 1", Outcome: audit.OutcomeAnswered,
		Detail: "1 candidate", Subjects: []string{"inside:100.64.0.3"}, AnswerSHA256: "ab", Prev: "cd", Hash: "ef"}
	bare := audit.Entry{Seq: 8, Time: at, Operator: "uid:65534", Action: "status", Outcome: audit.OutcomeRefused, Prev: "ef", Hash: "01"}
	signed := audit.SignedRecord{Kind: "head", Seq: 8, Hash: "01", Time: at, Sig: "99"}
	for _, p := range []audit.Proof{
		{Entry: full, Signed: signed},
		{Entry: full, Chain: []audit.Entry{full, bare}, Signed: signed},
	} {
		want, err := json.Marshal(p)
		if err != nil {
			t.Fatal(err)
		}
		got, err := json.Marshal(ProofOf(p))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("wire proof\n%s\nwant\n%s", got, want)
		}
		if back := AuditProof(ProofOf(p)); !reflect.DeepEqual(back, p) {
			t.Errorf("round trip %+v, want %+v", back, p)
		}
	}
	if got := EntriesOf(nil); got == nil {
		t.Error("EntriesOf(nil) is nil; the JSON would read null")
	}
}

// TestOutcomes: the wire spells every outcome as the audit log does.
func TestOutcomes(t *testing.T) {
	for a, w := range map[audit.Outcome]wire.Outcome{
		audit.OutcomeAnswered: wire.OutcomeAnswered, audit.OutcomeEmpty: wire.OutcomeEmpty, audit.OutcomeRefused: wire.OutcomeRefused,
		audit.OutcomeMalformed: wire.OutcomeMalformed, audit.OutcomeError: wire.OutcomeError,
	} {
		if string(a) != string(w) {
			t.Errorf("audit %q, wire %q", a, w)
		}
	}
}
