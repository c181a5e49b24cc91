// Package bench measures blocknat against the other ways a Linux router
// does NAT: throughput through a router namespace fed by an XDP
// live-frames generator, log volume against conntrack session logging,
// and the data plane's memory. cmd/blocknat-bench runs it all for
// `make bench` and writes the report BENCHMARKS.md quotes.
package bench
