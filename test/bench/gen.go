package bench

// The generated objects are committed so that `go build` needs no clang.
// -mcpu=v3 gives the atomic fetch-and-add the generator numbers frames with.
//go:generate go tool bpf2go -target bpfel -cflags "-O2 -g -Wall -Werror -mcpu=v3" trafficgen bpf/trafficgen.c
//go:generate go tool bpf2go -target bpfel -cflags "-O2 -g -Wall -Werror -mcpu=v3" sink bpf/sink.c
