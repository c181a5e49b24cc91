package loader

// The self-check canary (bpf/canary.c) has its own object so that the NAT's
// is untouched by it; its output is committed like the NAT's.
//go:generate go tool bpf2go -target bpfel -cflags "-O2 -g -Wall -Werror" -type block_event_kind canary ../bpf/canary.c -- -I../bpf
