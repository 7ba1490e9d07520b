package plugin

import (
	"maps"
	"slices"
	"testing"

	"github.com/secretfs/secretfs/provider"
)

func TestAudiencesMissing(t *testing.T) {
	a := DefaultAudiences()
	tok := func(auds ...string) map[string]provider.Token {
		m := map[string]provider.Token{}
		for _, x := range auds {
			m[x] = provider.Token{}
		}
		return m
	}
	for _, tc := range []struct {
		name   string
		tokens map[string]provider.Token
		want   []string
	}{
		{"vault", nil, []string{"vault"}},
		{"vault", tok("", "api://AzureADTokenExchange"), []string{"vault"}},
		{"vault", tok("vault"), nil},
		{"aws", tok("sts.amazonaws.com"), []string{"pods.eks.amazonaws.com"}},
		{"gcp", tok("my-project.svc.id.goog"), nil},
		{"gcp", tok(""), []string{"*.svc.id.goog"}},
		{"other", nil, nil},
	} {
		if got := a.Missing(tc.name, tc.tokens); !slices.Equal(got, tc.want) {
			t.Errorf("Missing(%s, %v) = %q, want %q", tc.name, tc.tokens, got, tc.want)
		}
	}
}

// "*=AUD" forwards AUD to every provider besides its own audiences.
func TestAudiencesAllProviders(t *testing.T) {
	a := DefaultAudiences()
	if err := a.Set(AllProviders + "=aud1,aud2"); err != nil {
		t.Fatal(err)
	}
	tokens := map[string]provider.Token{"aud1": {}, "vault": {}, "other": {}}
	for name, want := range map[string][]string{"vault": {"aud1", "vault"}, "conjur": {"aud1"}} {
		got, _ := a.Filter(name, tokens)
		if keys := slices.Sorted(maps.Keys(got)); !slices.Equal(keys, want) {
			t.Errorf("%s receives %q, want %q", name, keys, want)
		}
	}
	if got := a.Missing("conjur", tokens); !slices.Equal(got, []string{"aud2"}) {
		t.Errorf("Missing = %q", got)
	}
}
