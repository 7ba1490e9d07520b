# The load harness: the real driver binary over its real socket, real tmpfs
# mounts, the fake backend with latency and a request limit; cache on and off.
# Needs root. Bigger runs: make bench-load BENCH_FLAGS='-volumes 1000 -concurrency 200'
BENCH_FLAGS ?=

.PHONY: bench-load
bench-load:
	$(GO) run ./test/bench $(BENCH_FLAGS)
