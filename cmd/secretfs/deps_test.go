package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestBinaryLeavesOutOtherAPIGroups keeps packages that register or wrap
// every built-in Kubernetes API group out of the driver binary: each of
// them adds megabytes of code that package initialisation pages in, and
// the driver uses core/v1 (internal/kube/kubecore) and one CRD (dynamic) only.
func TestBinaryLeavesOutOtherAPIGroups(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Skipf("go list: %v", err)
	}
	banned := []string{
		"k8s.io/client-go/kubernetes",        // the whole clientset
		"k8s.io/client-go/kubernetes/scheme", // every group's types
		"k8s.io/client-go/informers",         // every group's informers (dynamicinformer imports it)
		"k8s.io/client-go/discovery",
		"k8s.io/api/apps/v1",
	}
	deps := map[string]bool{}
	for _, p := range strings.Fields(string(out)) {
		deps[p] = true
	}
	for _, p := range banned {
		if deps[p] {
			t.Errorf("the driver binary imports %s; use internal/kube/kubecore or the dynamic client instead", p)
		}
	}
}
