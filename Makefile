# blocknat: `sudo make demo` and `sudo make test` do all the set-up a fresh
# Debian machine needs (see deps), then run.

# sudo's secure_path usually lacks Go's own directory.
GO ?= $(shell command -v go 2>/dev/null || echo /usr/local/go/bin/go)
GOTEST_FLAGS ?= -count=1 -timeout 30m
BENCH_COUNT ?= 11

.PHONY: all deps generate check-generate check-tidy build test bench bench-quick soak demo lab lab-down clean

all: build

# Installs what a fresh machine lacks (clang, bpf headers, iproute2, test
# clients). Does nothing when everything is there.
deps:
	@test/install-deps.sh

# Rebuilds the committed bpf2go output from bpf/*.c and test/bench/bpf/*.c.
generate:
	$(GO) generate ./loader/ ./test/bench/

# Fails when the committed objects differ from what the sources produce.
check-generate: generate
	@git diff --exit-code --stat -- loader/ test/bench/ || { echo "loader/, test/bench/: committed bpf2go output is stale; run 'make generate' and commit"; exit 1; }

# Fails when go.mod or go.sum is not what `go mod tidy` makes of the code:
# a dependency used but marked indirect, or one no longer used.
check-tidy:
	@$(GO) mod tidy -diff || { echo "go.mod/go.sum are not tidy; run 'go mod tidy' and commit"; exit 1; }

build:
	$(GO) build -o bin/ ./cmd/...

# Root-only tests skip without root; BLOCKNAT_REQUIRE_PRIVILEGED=1 makes
# them fail instead (CI sets it).
test: deps
	$(GO) vet ./...
	$(GO) test $(GOTEST_FLAGS) ./...

# Every benchmark, then one report with every target judged (BENCHMARKS.md
# quotes it): the Go benchmarks (per packet, record store at a year's
# scale) go to .bench/gotest.out; test/bench's program runs the router
# comparisons, log volume and memory in namespaces it deletes even when it
# fails or is interrupted, and writes .bench/report.md.
bench: deps
	@mkdir -p .bench
	{ $(GO) test -run '^$$' -bench . -benchmem -count $(BENCH_COUNT) -timeout 90m ./loader/ ./userspace/...; echo $$? > .bench/status; } 2>&1 | tee .bench/gotest.out
	@exit $$(cat .bench/status)
	$(GO) run ./test/bench/cmd/blocknat-bench -gotest .bench/gotest.out -out .bench/report.md || { $(GO) run ./test/bench/cmd/blocknat-bench -cleanup; exit 1; }

# One short round of every benchmark, with small workloads: proves they
# still run (CI smoke test); its numbers are not comparable.
bench-quick: deps
	@mkdir -p .bench
	{ BLOCKNAT_BENCH_YEAR_DAYS=3 BLOCKNAT_BENCH_FLEET_SUBS=200 $(GO) test -run '^$$' -bench . -benchtime 10x -count 1 ./loader/ ./userspace/...; echo $$? > .bench/status; } 2>&1 | tee .bench/gotest-quick.out
	@exit $$(cat .bench/status)
	$(GO) run ./test/bench/cmd/blocknat-bench -quick -gotest .bench/gotest-quick.out -out .bench/report-quick.md || { $(GO) run ./test/bench/cmd/blocknat-bench -cleanup; exit 1; }

# The real blocknatd through 100 kill -9 restarts, 20 reloads, hostile
# packets and a full state_dir, with hundreds of subscribers activating
# and TCP connections talking; it prints figures, a verdict per phase and
# "N passed, M failed" (BENCHMARKS.md section 6 quotes it). About ten
# minutes, so not part of test or CI. Its namespaces, mounts
# and pins are removed however it ends; SOAK_FLAGS='-cycles 10' and the
# like shorten it (go run ./test/soak -h lists them).
soak: deps
	$(GO) run ./test/soak $(SOAK_FLAGS)

demo: deps build
	$(GO) run ./test/demo

# The demo's topology with blocknatd running on its router, left up to
# explore (it prints how); lab-down removes all of it, and does nothing
# when nothing is up. LAB names it: namespaces LAB-*, /run/LAB,
# /var/lib/LAB and /sys/fs/bpf/LAB, so two labs never meet.
LAB ?= bnlab
lab: deps build
	@$(GO) run ./test/lab up -name $(LAB) -bin bin

lab-down:
	@$(GO) run ./test/lab down -name $(LAB)

clean:
	rm -rf bin bench.out
