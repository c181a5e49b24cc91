// Package pcpserver is the agent's PCP server (RFC 6887) with NAT-PMP
// compatibility (RFC 6886, RFC 6887 Appendix A): a subscriber's home
// router asks it for an inbound port and gets one from the subscriber's
// own port block, on the subscriber's own public address.
//
// The wire format is userspace/pcp's; the kernel tables are behind Plane,
// which the loader's side implements. The server keeps an index of the
// pinned PCP table in memory (Plane.Entries is read once, at Run), so a
// request costs a map lookup and at most two table writes, and every
// change goes to the Plane before the index, so that a restart finds what
// was answered.
//
// What it refuses and why: THIRD_PARTY (a subscriber may map only its own
// address), FILTER (the data plane has no per-mapping remote filter, and
// RFC 6887 §13.3 lets a server that cannot honour it say UNSUPP_OPTION),
// protocol 0 (all protocols) and every protocol but TCP and UDP, a source
// that is no subscriber, and every request the data plane diverted to
// SuspectPort because it failed the inside source validation.
//
// Rate: every subscriber has a token bucket (Config.Rate, Config.Burst).
// Beyond it a subscriber gets at most one NO_RESOURCES answer a second
// and the rest is dropped and counted, so that a flood of spoofed
// requests cannot turn the server into a reflector. Refusals to sources
// that are no subscriber, and suspect requests, share one global bucket:
// charging a subscriber's bucket for a request that only claims its
// address would let a spoofer starve that subscriber.
//
// Nothing the server logs or counts names a remote peer, and Stats holds
// no per-subscriber figure.
package pcpserver
