package preflight

import (
	"errors"
	"net"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/blocknat/blocknat/userspace/clockstate"
)

// capability is one the agent uses, and what for.
type capability struct {
	name string
	bit  int
	// orSysAdmin: CAP_SYS_ADMIN grants what this one does (kernels split
	// CAP_BPF and CAP_PERFMON out of it in 5.8).
	orSysAdmin bool
}

// needed are the agent's capabilities, the ones the systemd unit grants.
var needed = []capability{
	{"CAP_BPF", unix.CAP_BPF, true},
	{"CAP_NET_ADMIN", unix.CAP_NET_ADMIN, false},
	{"CAP_PERFMON", unix.CAP_PERFMON, true},
}

// effectiveCaps reads this process's effective capability set.
func effectiveCaps() (uint64, error) {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return 0, err
	}
	return uint64(data[0].Effective) | uint64(data[1].Effective)<<32, nil
}

func hasCap(set uint64, bit int) bool { return set&(1<<uint(bit)) != 0 }

func checkCapabilities() Finding {
	const name = "capabilities"
	set, err := effectiveCaps()
	if err != nil {
		return refuse(name, "cannot be read (capget: %v)", err)
	}
	var missing, held []string
	for _, c := range needed {
		if hasCap(set, c.bit) || (c.orSysAdmin && hasCap(set, unix.CAP_SYS_ADMIN)) {
			held = append(held, c.name)
		} else {
			missing = append(missing, c.name)
		}
	}
	if len(missing) > 0 {
		verb := "is"
		if len(missing) > 1 {
			verb = "are"
		}
		return refuse(name, "%s %s missing (uid %d): the agent loads and attaches XDP programs and installs the nftables guard; "+
			"run it as root (sudo blocknatd ...), or through the systemd unit, which grants exactly CAP_BPF CAP_NET_ADMIN CAP_PERFMON",
			strings.Join(missing, ", "), verb, os.Geteuid())
	}
	return pass(name, "%s", strings.Join(held, ", "))
}

// checkListen binds the metrics address and lets it go again.
func checkListen(name, addr string) Finding {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		if errors.Is(err, unix.EADDRINUSE) {
			return refuse(name, "is in use: another process listens there (ss -ltnp names it); stop it, or set metrics.listen to a free address")
		}
		return refuse(name, "cannot be listened on (%v): set metrics.listen to an address of this host, or \"\" to turn metrics off", unwrapOp(err))
	}
	ln.Close()
	return pass(name, "free")
}

// checkClock reads the kernel's clock-synchronisation state: every record
// and answer is only as good as this clock. bound is
// selfcheck.clock_max_error, the error above which the agent raises its
// clock alarm (0: none).
func checkClock(bound time.Duration) Finding {
	const name = "clock"
	st, err := clockstate.Read()
	if err != nil {
		return notChecked(name, "%v", err)
	}
	if !st.Synchronised {
		return warn(name, "is not synchronised (the kernel's STA_UNSYNC is set): record times and answers rest on this clock; "+
			"run an NTP client (chrony, systemd-timesyncd) and wait until it has synchronised (chronyc tracking, timedatectl)")
	}
	if bound > 0 && st.EstimatedError > bound {
		return warn(name, "estimated error %s is above selfcheck.clock_max_error %s: the agent raises its clock alarm; "+
			"see whether the NTP client still reaches its sources (chronyc sources)", clockstate.FormatError(st.EstimatedError), clockstate.FormatError(bound))
	}
	return pass(name, "synchronised, estimated error %s", clockstate.FormatError(st.EstimatedError))
}

// unwrapOp drops net.OpError's restatement of the address.
func unwrapOp(err error) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return op.Err
	}
	return err
}
