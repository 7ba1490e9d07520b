# The load harness: the real driver binary over its real socket, real tmpfs
# mounts, the fake backend with latency and a request limit; cache on and off.
# Needs root. Bigger runs: make bench-load BENCH_FLAGS='-volumes 1000 -concurrency 200'
BENCH_FLAGS ?=

.PHONY: bench-load
bench-load:
	$(GO) run ./test/bench $(BENCH_FLAGS)

# The soak (test/bench/soak.go): idle memory and CPU, 10,000 lifecycles that
# must leave nothing grown after the first 1,000, and 110 volumes rotating.
# Not part of make test; about four minutes. Needs root.
SOAK_FLAGS ?=

.PHONY: soak
soak:
	$(GO) run ./test/bench -soak -concurrency 8 $(SOAK_FLAGS)
