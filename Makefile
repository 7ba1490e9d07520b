# secretfs: `make demo` shows the driver working, `make test` runs every test.
# Tests mount tmpfs and start a real cluster, so they run as root.

GO        ?= go
BIN       := bin
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X github.com/secretfs/secretfs/driver.Version=$(VERSION)
# grpcnotrace leaves grpc's request tracing (golang.org/x/net/trace, off
# unless a program turns it on) and the HTML templates it needs out of the
# binary: 0.3 MB, and about 0.5 MiB the driver would page in at start-up on
# every node. deploy/image/build.sh and the load harness build with it too.
TAGS      := grpcnotrace
FUZZTIME  ?= 15s
PKGS      := ./...

.PHONY: all build demo demo-run systemd-verify test unit sanity fuzz lint bench deps deps-apt chart-test clean help
all: build

# Tools built with go install into a per-machine cache, pinned here.
TOOLS_CACHE  ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/secretfs
HELM_VERSION := v4.3.2
HELM         ?= $(TOOLS_CACHE)/helm-$(HELM_VERSION)/helm
export HELM

include proto/proto.mk
include test/cluster/cluster.mk
include test/bench/bench.mk

help:
	@echo "make build       bin/secretfs"
	@echo "make demo        build and run the driver with the fake backend on a real tmpfs"
	@echo "make demo-run    secretfs run: a command with its secrets in a private mount namespace"
	@echo "make systemd-verify  systemd-analyze verify of deploy/systemd"
	@echo "make test        lint, unit, integration, csi-sanity and e2e tests (root)"
	@echo "make unit        go test of every package (root; includes integration and csi-sanity)"
	@echo "make lint        gofmt, go vet and staticcheck (pinned)"
	@echo "make fuzz        run every fuzz target for FUZZTIME ($(FUZZTIME)) each"
	@echo "make sanity      csi-sanity against the driver"
	@echo "make bench       benchmarks, then the load harness (make bench-load)"
	@echo "make soak        what the driver costs a node: idle, 10,000 lifecycles with no growth, 110 volumes rotating (about 4 min; root)"
	@echo "make e2e         start a real 3-node cluster (NODES=n), run the e2e suite, stop it"
	@echo "make e2e-kind    the e2e suite on a kind cluster"
	@echo "make cluster-up  keep the local cluster running (make cluster-down stops it)"
	@echo "make proto       regenerate the provider protocol's Go code"
	@echo "make chart-test  lint, render and install the Helm chart against a real API server"
	@echo "make deps        install the Debian packages and tools (helm) the tests need; every target that needs them runs it"

build:
	CGO_ENABLED=0 $(GO) build -trimpath -tags '$(TAGS)' -ldflags '$(LDFLAGS)' -o $(BIN)/secretfs ./cmd/secretfs

demo: build
	@$(GO) run ./test/demo -secretfs $(BIN)/secretfs

# The local agent's run mode: a command with its secrets in a private mount namespace.
demo-run: build
	@test/demo/run.sh $(BIN)/secretfs

# The systemd units of deploy/systemd parse (systemd-analyze verify) and keep their sandboxing.
systemd-verify:
	$(GO) test -count=1 -run Systemd -v ./test/manifests

# The unit and integration tests need etcd and kube-apiserver (built once per
# machine by k8s-bins) and helm (deps); e2e needs the whole local cluster.
# unit first, then e2e. Side by side they took about 3 minutes less, but on
# 2 cores the load reached 15-50, and in 4 of 7 clean-clone runs a different
# unit test with a timing assumption failed.
test: deps lint verify-proto k8s-bins
	@$(MAKE) --no-print-directory unit
	@$(MAKE) --no-print-directory e2e

# test/skips runs go test and ends with every skipped test and its reason.
unit: deps
	$(GO) run ./test/skips -count=1 $(PKGS)

chart-test: deps
	$(GO) test -count=1 -v ./test/chart/

sanity:
	$(GO) test -count=1 -run 'Sanity' -v ./driver/

# Every Fuzz target in the module, each for FUZZTIME. `go test` alone already
# runs the committed seed corpora.
fuzz:
	@set -e; for pkg in $$($(GO) list $(PKGS)); do \
	  for target in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
	    echo "== $$pkg $$target"; \
	    $(GO) test -run '^$$' -fuzz "^$$target$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 1s $$pkg; \
	  done; \
	done

# staticcheck is pinned; `go run` fetches it through the module proxy once
# and caches the build (the module's go.mod is not touched).
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)
	$(GO) vet -tags e2e,podbench ./test/e2e/
	$(GO) run $(STATICCHECK) $(PKGS)

bench:
	$(GO) test -run '^$$' -bench . -benchmem $(PKGS)
	$(MAKE) bench-load

# Everything the tests need that Go does not fetch by itself: Debian packages
# and helm. Idempotent: a second run checks and prints nothing.
deps: deps-apt $(HELM)

APT_PACKAGES := openssl strace containerd runc containernetworking-plugins busybox-static protobuf-compiler iptables iproute2 util-linux file systemd systemd-container
deps-apt:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "deps: installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 $$missing >/dev/null; \
	fi

$(HELM):
	@echo "deps: building helm $(HELM_VERSION) with go install (a few minutes the first time)"
	@GOBIN=$(dir $(HELM)) CGO_ENABLED=0 $(GO) install -trimpath -ldflags '-s -w' helm.sh/helm/v4/cmd/helm@$(HELM_VERSION)

clean:
	rm -rf $(BIN)
