package chart

import (
	"slices"
	"strings"
	"testing"
)

// The CSIDriver requests the audiences of the providers the chart
// configures (providerAudiences) besides tokenAudiences; a pattern no
// tokenAudiences entry matches is refused, never silently dropped.
func TestProviderAudiencesAreRequested(t *testing.T) {
	h := newHelm(t)
	base := []string{"template", "secretfs", chartDir, "--namespace", namespace, "--kube-version", "1.37.0"}
	r := parseRendered(t, h.must(append(base, "--set-json", `providerAudiences={"vault":["vault"],"aws":["sts.amazonaws.com",""]}`)...))
	if got, want := audiences(r.csiDriver), []string{"", "sts.amazonaws.com", "vault"}; !slices.Equal(got, want) {
		t.Errorf("token audiences %q, want %q", got, want)
	}
	r = parseRendered(t, h.must(append(base, "--set-json", `providerAudiences={"gcp":["*.svc.id.goog"]}`,
		"--set-json", `tokenAudiences=["","my-project.svc.id.goog"]`)...))
	if got, want := audiences(r.csiDriver), []string{"", "my-project.svc.id.goog"}; !slices.Equal(got, want) {
		t.Errorf("token audiences %q, want %q", got, want)
	}
	out, err := h.run(append(base, "--set-json", `providerAudiences={"gcp":["*.svc.id.goog"]}`)...)
	if err == nil || !strings.Contains(out+err.Error(), "tokenAudiences") {
		t.Errorf("an unmatched pattern rendered: %v\n%s", err, out)
	}
}

// kubelet requests every listed audience for every pod, so the chart lists
// only the kubernetes backend's by default; Azure workload identity's is
// added on request, and NOTES say so while the azure backend is on
// without it.
func TestAzureAudienceOnRequest(t *testing.T) {
	h := newHelm(t)
	base := []string{"secretfs", chartDir, "--namespace", namespace}
	for _, c := range []struct {
		set       []string
		audiences []string
		warns     bool
	}{
		{nil, []string{""}, true},
		{[]string{"--set-json", `tokenAudiences=["","api://AzureADTokenExchange"]`}, []string{"", "api://AzureADTokenExchange"}, false},
		{[]string{"--set-json", `backends=["kubernetes"]`}, []string{""}, false},
		{[]string{"--set-json", `tokenRequests=[{"audience":"api://AzureADTokenExchange"}]`}, []string{"", "api://AzureADTokenExchange"}, false},
	} {
		r := parseRendered(t, h.must(append(append([]string{"template", "--kube-version", "1.37.0"}, base...), c.set...)...))
		if got := audiences(r.csiDriver); !slices.Equal(got, c.audiences) {
			t.Errorf("%v: token audiences %q, want %q", c.set, got, c.audiences)
		}
		notes := h.must(append(append([]string{"install", "--dry-run=client"}, base...), c.set...)...)
		if got := strings.Contains(notes, "tokenAudiences does not list\napi://AzureADTokenExchange"); got != c.warns {
			t.Errorf("%v: NOTES warn of the missing Azure audience: %v, want %v\n%s", c.set, got, c.warns, notes)
		}
	}
}
