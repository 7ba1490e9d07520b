// Package e2e runs secretfs end to end against a real cluster named by
// KUBECONFIG (the local cluster of test/cluster, or kind) on which secretfs
// is deployed from test/e2e/overlay. No pod uses the host network; the local
// cluster has several nodes (3 by default), each with its own driver, fake
// backend data and kubelet root. Run with `make e2e` or `make e2e-kind`, or,
// on a cluster of `make cluster-up` (whose API server is reachable only from
// inside its control plane's network namespace):
//
//	test/cluster/exec.sh go test -tags e2e -count=1 -v ./test/e2e/
//
// Backends: the fake (built in, and served by the example external provider
// "extfake" of deploy/examples/external-provider over the provider
// protocol), kubernetes (Secrets read with the pod's own token; a Deployment,
// RBAC, watch-driven rotation whose latency is logged), and azure with
// workload identity against test/fakeazure, which the Azure test starts in
// its own process where the driver's --azure-vault-address and
// --azure-authority-host point, signed by the CA of its --azure-ca-file, and
// verifying tokens with the API server's service-account keys (/openid/v1/jwks).
//
// Tests that only touch their own namespace call t.Parallel() and run
// together after the others, one at a time, have finished: those roll,
// restart, drain or kill the drivers and nodes, or count what a node's
// driver holds, which another test's pods would change.
//
// Settings (environment):
//
//	SECRETFS_E2E_DRIVER_NAMESPACE   namespace of the DaemonSet (secretfs-system)
//	SECRETFS_E2E_ROTATION_TIMEOUT   how long a rotated value may take to show
//	                                (default 2m: the driver's 5s interval plus
//	                                kubelet's republish, about its sync period)
//	SECRETFS_E2E_FAKEAZURE_CA_CERT  CA (PEM certificate and key) the fake Azure
//	SECRETFS_E2E_FAKEAZURE_CA_KEY   signs with; default <KUBECONFIG's dir>/pki/
//	                                fakeazure-ca.{crt,key} (the local cluster).
//	                                Without it (and outside CI) the Azure test
//	                                is skipped.
package e2e
