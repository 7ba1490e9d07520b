// Package e2e runs secretfs end to end against a real cluster named by
// KUBECONFIG (the local cluster of test/cluster, or kind) on which secretfs
// is deployed from test/e2e/overlay. Pods use hostNetwork, so the tests need
// no pod network. Run with `make e2e` or `make e2e-kind`, or:
//
//	KUBECONFIG=... go test -tags e2e -count=1 -v ./test/e2e/
//
// Settings (environment):
//
//	SECRETFS_E2E_DRIVER_NAMESPACE   namespace of the DaemonSet (secretfs-system)
//	SECRETFS_E2E_ROTATION_TIMEOUT   how long a rotated value may take to show
//	                                (default 2m: the driver's 5s interval plus
//	                                kubelet's republish, about its sync period)
package e2e
