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
	if got, want := audiences(r.csiDriver), []string{"", "api://AzureADTokenExchange", "sts.amazonaws.com", "vault"}; !slices.Equal(got, want) {
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
