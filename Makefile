# blocknat: `sudo make demo` and `sudo make test` do all the set-up a fresh
# Debian machine needs (see deps), then run.

# sudo's secure_path usually lacks Go's own directory.
GO ?= $(shell command -v go 2>/dev/null || echo /usr/local/go/bin/go)
GOTEST_FLAGS ?= -count=1 -timeout 30m
BENCH_COUNT ?= 11

.PHONY: all deps generate check-generate build test bench bench-quick demo clean

all: build

# Installs what a fresh machine lacks (clang, bpf headers, iproute2, test
# clients). Does nothing when everything is there.
deps:
	@test/install-deps.sh

# Rebuilds the committed bpf2go output from bpf/*.c.
generate:
	$(GO) generate ./loader/

# Fails when the committed objects differ from what the sources produce.
check-generate: generate
	@git diff --exit-code --stat -- loader/ || { echo "loader/: committed bpf2go output is stale; run 'make generate' and commit"; exit 1; }

build:
	$(GO) build -o bin/ ./cmd/...

# Root-only tests skip without root; BLOCKNAT_REQUIRE_PRIVILEGED=1 makes
# them fail instead (CI sets it).
test: deps
	$(GO) vet ./...
	$(GO) test $(GOTEST_FLAGS) ./...

bench: deps
	$(GO) test -run '^$$' -bench . -benchmem -count $(BENCH_COUNT) ./loader/ ./userspace/... | tee bench.out

# One short round of every benchmark: proves they still run (CI smoke test).
bench-quick: deps
	$(GO) test -run '^$$' -bench . -benchtime 100x -count 1 ./loader/ ./userspace/...

demo: deps build
	$(GO) run ./test/demo

clean:
	rm -rf bin bench.out
