package clockstate

import (
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestReadIsTheKernels: Read reports what adjtimex says of this machine's
// clock, whichever state it is in (CI machines differ), and reading it
// needs no privilege and changes nothing.
func TestReadIsTheKernels(t *testing.T) {
	before := time.Now()
	st, err := Read()
	if err != nil {
		t.Fatal(err)
	}
	var tx unix.Timex
	if _, err := unix.Adjtimex(&tx); err != nil {
		t.Fatal(err)
	}
	if unsync := tx.Status&unix.STA_UNSYNC != 0; st.Synchronised == unsync {
		t.Errorf("Synchronised %v with the kernel's status %#x (STA_UNSYNC %v)", st.Synchronised, tx.Status, unsync)
	}
	if st.Status&unix.STA_UNSYNC != tx.Status&unix.STA_UNSYNC || st.EstimatedError < 0 || st.MaxError < 0 {
		t.Errorf("state %+v, kernel status %#x", st, tx.Status)
	}
	if st.ReadAt.Before(before) || time.Since(st.ReadAt) > time.Minute {
		t.Errorf("ReadAt %v, read after %v", st.ReadAt, before)
	}
	t.Logf("this machine's clock: %+v", st)
}

func TestWithinAndFormat(t *testing.T) {
	sync := State{Synchronised: true, EstimatedError: 12 * time.Millisecond}
	if !sync.Within(12*time.Millisecond) || sync.Within(11*time.Millisecond) {
		t.Errorf("Within around 12ms wrong for %+v", sync)
	}
	if (State{EstimatedError: 0}).Within(time.Second) {
		t.Error("an unsynchronised clock is within a bound")
	}
	for d, want := range map[time.Duration]string{850 * time.Microsecond: "850 µs", 12 * time.Millisecond: "12 ms", 1500 * time.Millisecond: "1.5 s"} {
		if got := FormatError(d); got != want {
			t.Errorf("FormatError(%v) = %q, want %q", d, got, want)
		}
	}
}
