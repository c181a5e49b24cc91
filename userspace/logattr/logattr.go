// Package logattr holds the attribute keys of every blocknat log line, so
// that one name means one thing across the agent and operators can filter
// on it. Nothing here may carry a destination address: the NAT never logs
// where subscribers go.
package logattr

const (
	Config     = "config"
	Interface  = "interface"
	Role       = "role"
	Mode       = "mode"
	PinDir     = "pin_dir"
	Epoch      = "epoch"
	Subscriber = "subscriber"
	Inside     = "inside"
	Public     = "public"
	PortLo     = "port_lo"
	PortHi     = "port_hi"
	Count      = "count"
	Err        = "err"
	Signal     = "signal"
	Path       = "path"
	Operator   = "operator"
	Action     = "action"
	Outcome    = "outcome"
	// ProgramID and ProgramName name a kernel BPF program (a foreign XDP
	// program the agent refused or replaced).
	ProgramID   = "program_id"
	ProgramName = "program_name"
	Listen      = "listen"
	// HostPID is the process whose mount namespace the agent took for the
	// host's when it shared the host's bpffs.
	HostPID = "host_pid"
	// Peer, Netns and Fix describe a veth's far end: its name, its
	// namespace, and the command that fixes what is wrong with it.
	Peer  = "peer"
	Netns = "netns"
	Fix   = "fix"
	// Check and Problem are a start-up check's name and what it found
	// wrong (userspace/preflight).
	Check   = "check"
	Problem = "problem"
	// Stack is a recovered panic's goroutine stack.
	Stack = "stack"
	// Component is a part of a service as its start and stop list name it;
	// Name the fleet service's name (userspace/fleet).
	Component = "component"
	Name      = "name"
	// FromVersion and ToVersion are a database schema's versions before
	// and after a migration; Partitions the day partitions a retention run
	// dropped.
	FromVersion = "from_version"
	ToVersion   = "to_version"
	Partitions  = "partitions"
)
