package chart

import (
	"context"
	"os"
	"strings"
	"testing"
)

const podStatusCRD = "secretproviderclasspodstatuses.secrets-store.csi.x-k8s.io"

// With pod status on, the chart installs the SecretProviderClassPodStatus
// CRD (kept on uninstall, the same file as the kustomize component's);
// next to the Secrets Store CSI Driver's it leaves that one as it is and
// says so, as it does for the class CRD.
func TestPodStatusCRD(t *testing.T) {
	ours, err := os.ReadFile(chartDir + "/files/secretproviderclasspodstatuses.yaml")
	if err != nil {
		t.Fatal(err)
	}
	component, err := os.ReadFile("../../deploy/components/pod-status/crd.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if string(ours) != string(component) {
		t.Error("files/secretproviderclasspodstatuses.yaml differs from deploy/components/pod-status/crd.yaml")
	}
	h := newHelm(t)
	if out := h.must("template", "secretfs", chartDir, "--namespace", namespace); strings.Contains(out, podStatusCRD) {
		t.Error("the pod-status CRD rendered with podStatus.enabled=false")
	}

	// A fresh cluster: the chart installs it, and uninstall keeps it.
	c := startCluster(t)
	h.withServer(c.Server)
	h.must("install", "secretfs", chartDir, "--namespace", namespace, "--create-namespace", "--set", "podStatus.enabled=true")
	crd, err := c.crd(context.Background(), podStatusCRD)
	if err != nil || crd == nil || crd.GetAnnotations()["meta.helm.sh/release-name"] != "secretfs" || crd.GetAnnotations()["helm.sh/resource-policy"] != "keep" {
		t.Fatalf("pod-status CRD after install: %v %v", crd, err)
	}
	h.must("uninstall", "secretfs", "--namespace", namespace)
	if crd, _ := c.crd(context.Background(), podStatusCRD); crd == nil {
		t.Error("uninstall deleted the pod-status CRD")
	}

	// Next to SSCD's (a second cluster).
	c2 := startCluster(t)
	h2 := newHelm(t).withServer(c2.Server)
	c2.createCRD(t, "testdata/sscd/podstatus-crd.yaml")
	before, _ := c2.crd(context.Background(), podStatusCRD)
	out := h2.must("install", "secretfs", chartDir, "--namespace", namespace, "--create-namespace", "--set", "podStatus.enabled=true")
	if !strings.Contains(out, "The SecretProviderClassPodStatus CRD was left as it is: the Secrets Store CSI Driver's installer") {
		t.Errorf("notes do not say the pod-status CRD was left alone:\n%s", out)
	}
	after, _ := c2.crd(context.Background(), podStatusCRD)
	if after.GetResourceVersion() != before.GetResourceVersion() {
		t.Errorf("SSCD's pod-status CRD changed: resourceVersion %s -> %s", before.GetResourceVersion(), after.GetResourceVersion())
	}
}
