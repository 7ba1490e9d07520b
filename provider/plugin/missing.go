package plugin

import (
	"slices"

	"github.com/secretfs/secretfs/provider"
)

// Missing returns the audience patterns configured for provider name that
// no token in tokens matches, sorted (names only, never tokens): kubelet
// was not asked for them (the CSIDriver's tokenRequests lack them).
func (a Audiences) Missing(name string, tokens map[string]provider.Token) []string {
	var missing []string
	for _, p := range a.For(name) {
		one := Audiences{m: map[string][]string{name: {p}}}
		found := false
		for aud := range tokens {
			if one.allowed(name, aud) {
				found = true
				break
			}
		}
		if !found {
			missing = append(missing, p)
		}
	}
	slices.Sort(missing)
	return missing
}

// MissingAudiences returns the audiences configured for this provider when
// kubelet sent a token for none of them, so the provider receives no token
// at all (nil otherwise). One of several missing is normal: the AWS
// provider's two defaults serve IRSA and EKS Pod Identity, and a cluster
// requests the one it uses.
func (r *remote) MissingAudiences(tokens map[string]provider.Token) []string {
	missing := r.c.audiences.Missing(r.name, tokens)
	if len(missing) == 0 || len(missing) < len(r.c.audiences.For(r.name)) {
		return nil
	}
	return missing
}
