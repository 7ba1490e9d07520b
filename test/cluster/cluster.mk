# Local cluster, images and end-to-end tests. Included by the top Makefile.
#
#   make k8s-bins      build etcd and Kubernetes v1.37.2 into the per-machine cache
#   make image         the secretfs image as _output/images/secretfs.tar (no Docker)
#   make cluster-up    a cluster of NODES nodes (default 3) in network namespaces
#                      of its own, with secretfs deployed (root)
#   make cluster-down  stop it and remove everything it left
#   make cluster-leaks up, down, and check that nothing is left behind
#   make e2e           cluster-up, the e2e tests, cluster-down (logs kept on failure)
#   make e2e-kind      the e2e tests on a kind cluster (needs Docker and kind)
#   make bench-pods    pod start bursts, Secret volume against secretfs (not in
#                      make test; PODBENCH_KINDS, PODBENCH_BURSTS, PODBENCH_ROUNDS,
#                      PODBENCH_SPREAD, PODBENCH_WARMUP choose the runs; test/e2e/podstart_test.go)

.PHONY: k8s-bins image test-images cluster-up cluster-down cluster-leaks e2e e2e-kind bench-pods

k8s-bins:
	@echo "k8s-bins: etcd and Kubernetes $$(sed -n 's/^K8S_VERSION=//p' test/tools/build.sh) into the per-machine cache (20-40 min the first time, seconds after)"
	test/tools/build.sh

image:
	deploy/image/build.sh

test-images:
	test/image/build.sh

cluster-up: deps
	test/cluster/up.sh

cluster-down:
	test/cluster/down.sh

cluster-leaks: deps
	test/cluster/leaks.sh

e2e: deps
	test/e2e/local.sh

e2e-kind:
	test/e2e/kind.sh

PODBENCH_KINDS ?= secret,kubernetes,fake,azure,external
PODBENCH_BURSTS ?= 10,50,100
PODBENCH_ROUNDS ?= 2
PODBENCH_SPREAD ?= 300
PODBENCH_WARMUP ?= 10

bench-pods: deps
	E2E_TAGS=e2e,podbench E2E_RUN='^TestPodStartBurst$$' E2E_TIMEOUT=120m \
	SECRETFS_PODBENCH_KINDS=$(PODBENCH_KINDS) SECRETFS_PODBENCH_BURSTS=$(PODBENCH_BURSTS) \
	SECRETFS_PODBENCH_ROUNDS=$(PODBENCH_ROUNDS) SECRETFS_PODBENCH_SPREAD=$(PODBENCH_SPREAD) SECRETFS_PODBENCH_WARMUP=$(PODBENCH_WARMUP) test/e2e/local.sh
