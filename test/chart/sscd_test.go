package chart

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// Values files of the Secrets Store CSI Driver's chart install secretfs:
// its own values.yaml (chart 1.6.0) and the values its CI installs with
// (testdata/sscd, copies with their attribution), rendered through
// secretfs's chart and decoded strictly.
var (
	sscdValues   = filepath.Join("testdata", "sscd", "values.yaml")
	sscdCIValues = filepath.Join("testdata", "sscd", "ci-values.yaml")
)

func sscdArgs(extra ...string) []string {
	args := []string{"template", "secretfs", chartDir, "--namespace", namespace, "--kube-version", "1.37.0", "-f", sscdValues}
	return append(args, extra...)
}

func TestSSCDValuesFile(t *testing.T) {
	h := newHelm(t)
	r := parseRendered(t, h.must(sscdArgs()...))
	checkInvariants(t, r)
	d := r.driver(t)
	wantArgs(t, d, map[string]string{
		"--sync-secrets":              "false",
		"--rotation-interval":         "2m", // enableSecretRotation: false; secretfs rotates anyway (NOTES)
		"--log-format":                "text",
		"-v":                          "0",
		"--provider-max-message-size": "4194304",
		"--provider-health-interval":  "0", // providerHealthCheck: false
		"--metrics-addr":              "$(POD_IP):8095",
		"--health-addr":               "$(POD_IP):9808",
		"--provider-dir":              "/var/run/secrets-store-csi-providers,/etc/kubernetes/secrets-store-csi-providers",
		"--kubelet-dir":               "/var/lib/kubelet",
	})
	// SSCD's image is not run: secretfs's is.
	if strings.Contains(d.Image, "csi-secrets-store") {
		t.Errorf("image %s", d.Image)
	}
	spec := r.daemonSet.Spec.Template.Spec
	if d.Resources.Limits.Memory().String() != "200Mi" || d.Resources.Requests.Cpu().String() != "50m" {
		t.Errorf("resources %+v, want linux.driver.resources", d.Resources)
	}
	if len(spec.Tolerations) != 1 || spec.Tolerations[0].Operator != "Exists" || spec.NodeSelector["kubernetes.io/os"] != "linux" ||
		spec.Affinity == nil || spec.Affinity.NodeAffinity == nil || spec.PriorityClassName != "" {
		t.Errorf("scheduling: tolerations %+v nodeSelector %v affinity %+v priorityClassName %q", spec.Tolerations, spec.NodeSelector, spec.Affinity, spec.PriorityClassName)
	}
	if !slices.Equal(audiences(r.csiDriver), []string{""}) {
		t.Errorf("token audiences %q", audiences(r.csiDriver))
	}
	if r.clusterRole == nil {
		t.Error("rbac.install: true rendered no ClusterRole")
	}
}

// The values of SSCD's CI (sync on, rotation every 30 s, the providers'
// token audiences): the same settings here, SSCD's Windows DaemonSet and
// images reported in NOTES; every provider gets every audience only with
// tokenRequestsForEveryProvider.
func TestSSCDCIValues(t *testing.T) {
	h := newHelm(t)
	r := parseRendered(t, h.must(sscdArgs("-f", sscdCIValues)...))
	checkInvariants(t, r)
	d := r.driver(t)
	wantArgs(t, d, map[string]string{"--sync-secrets": "true", "--rotation-interval": "30s", "--sync-owner": "controller"})
	if got, want := audiences(r.csiDriver), []string{"", "aud1", "aud2", "conjur", "api://AzureADTokenExchange", "sts.amazonaws.com"}; !slices.Equal(got, want) {
		t.Errorf("token audiences %q, want %q", got, want)
	}
	if v, ok := arg(d, "--provider-audiences"); ok {
		t.Errorf("--provider-audiences=%s without tokenRequestsForEveryProvider", v)
	}
	r = parseRendered(t, h.must(sscdArgs("-f", sscdCIValues, "--set", "tokenRequestsForEveryProvider=true", "--set", "commonLabels.team=dev")...))
	if r.daemonSet.Labels["team"] != "dev" || r.csiDriver.Labels["team"] != "dev" {
		t.Errorf("commonLabels not on the objects: %v %v", r.daemonSet.Labels, r.csiDriver.Labels)
	}
	if v, _ := arg(r.driver(t), "--provider-audiences"); v != "*=aud1,aud2,conjur,api://AzureADTokenExchange,sts.amazonaws.com" {
		t.Errorf("--provider-audiences=%s, want every tokenRequests audience for every provider", v)
	}

	notes := h.must("install", "secretfs", chartDir, "--namespace", namespace, "--dry-run=client", "-f", sscdValues, "-f", sscdCIValues)
	for _, want := range []string{
		"windows.enabled=true: secretfs has no Windows node driver",
		"linux.image.repository/tag (gcr.io/k8s-staging-csi-secrets-store/driver) name the Secrets Store CSI Driver's image",
		"linux.crds.*",
		"tokenRequests audiences aud1, aud2, conjur, api://AzureADTokenExchange, sts.amazonaws.com",
		"vault: vault; aws: sts.amazonaws.com",
		"set tokenRequestsForEveryProvider: true",
	} {
		if !strings.Contains(notes, want) {
			t.Errorf("NOTES do not say %q:\n%s", want, notes)
		}
	}
}

// What would install something other than the file asks is refused.
func TestSSCDValuesRefused(t *testing.T) {
	h := newHelm(t)
	for _, set := range []string{"linux.enabled=false", "rbac.pspEnabled=true", "linux.image.pullPolicy=Sometimes", "tokenRequests[0].expiration=1"} {
		if out, err := h.run(sscdArgs("--set", set)...); err == nil {
			t.Errorf("--set %s rendered:\n%.300s", set, out)
		}
	}
}
