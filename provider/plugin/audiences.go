package plugin

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/secretfs/secretfs/provider"
)

// Audiences says which of the pod's service-account tokens each external
// provider receives. kubelet mints one token per CSIDriver tokenRequests
// audience for every pod, and the driver holds all of them; a provider gets
// only the tokens whose audience is configured for it, so a buggy or
// compromised provider never holds the pod's Kubernetes API token (audience
// "") or another cloud's credentials unless the node admin says so.
//
// An audience is matched exactly, or, written "*.suffix", as any audience
// that ends in ".suffix" (the GCP provider's audience is the project's
// workload identity pool, "<project>.svc.id.goog"). The API server's own
// audience, the empty string, is written `""`.
//
// The zero value forwards no token to any provider.
type Audiences struct {
	m map[string][]string // provider name -> audience patterns
}

// apiServerAudience is how the empty audience is written in a flag.
const apiServerAudience = `""`

// maxAudienceLen bounds one audience, as the driver's token parser does.
const maxAudienceLen = 1024

// DefaultAudiences are the audiences the providers of the Secrets Store CSI
// Driver read, as their documentation asks the node admin to configure in
// the CSIDriver's tokenRequests:
//
//	vault  vault                                   (Vault; without it, Vault mints its own token)
//	aws    sts.amazonaws.com, pods.eks.amazonaws.com (IRSA and EKS Pod Identity)
//	gcp    *.svc.id.goog                           (the workload identity pool <project>.svc.id.goog)
//
// Azure is built in; an external Azure provider under another name needs
// api://AzureADTokenExchange configured for it.
func DefaultAudiences() Audiences {
	return Audiences{m: map[string][]string{
		"vault": {"vault"},
		"aws":   {"sts.amazonaws.com", "pods.eks.amazonaws.com"},
		"gcp":   {"*.svc.id.goog"},
	}}
}

// Set configures one provider from "NAME=AUDIENCE[,AUDIENCE...]", replacing
// what NAME had (so a default can be changed or, with "NAME=", removed).
// It implements flag.Value, so the flag can be given once per provider.
func (a *Audiences) Set(s string) error {
	name, list, ok := strings.Cut(s, "=")
	name = strings.TrimSpace(name)
	if !ok {
		return errors.New(`want NAME=AUDIENCE[,AUDIENCE...], e.g. aws=sts.amazonaws.com,pods.eks.amazonaws.com ("" is the API server's audience; NAME= forwards none)`)
	}
	if name != AllProviders && !ValidName(name) {
		return fmt.Errorf("provider name %.80q: use letters, digits, '-', '_' and '.', at most 63 characters, or %s for every provider", name, AllProviders)
	}
	var auds []string
	for _, f := range strings.Split(list, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		if f == apiServerAudience {
			f = ""
		} else if err := checkAudience(f); err != nil {
			return fmt.Errorf("provider %s: audience %.80q %v", name, f, err)
		}
		if !slices.Contains(auds, f) {
			auds = append(auds, f)
		}
	}
	if a.m == nil {
		a.m = map[string][]string{}
	} else {
		a.m = maps.Clone(a.m) // a copy of DefaultAudiences stays as it was
	}
	a.m[name] = auds
	return nil
}

func checkAudience(aud string) error {
	switch {
	case len(aud) > maxAudienceLen:
		return fmt.Errorf("is longer than %d bytes", maxAudienceLen)
	case !utf8.ValidString(aud) || strings.ContainsFunc(aud, func(r rune) bool { return unicode.IsControl(r) || unicode.IsSpace(r) }):
		return errors.New("has spaces or characters that are not printable")
	case strings.Contains(aud, `"`):
		return errors.New(`has a '"'; write the API server's audience as "" on its own`)
	}
	if rest, ok := strings.CutPrefix(aud, "*."); ok {
		if rest == "" || strings.Contains(rest, "*") {
			return errors.New("is not a valid pattern: only a leading \"*.\" followed by a suffix without '*' is allowed")
		}
		return nil
	}
	if strings.Contains(aud, "*") {
		return errors.New("has a '*' that is not a leading \"*.\"")
	}
	return nil
}

// String lists the configuration as flags would give it, sorted by name.
func (a *Audiences) String() string {
	if a == nil {
		return ""
	}
	names := slices.Sorted(maps.Keys(a.m))
	parts := make([]string, 0, len(names))
	for _, n := range names {
		auds := make([]string, len(a.m[n]))
		for i, aud := range a.m[n] {
			if aud == "" {
				aud = apiServerAudience
			}
			auds[i] = aud
		}
		parts = append(parts, n+"="+strings.Join(auds, ","))
	}
	return strings.Join(parts, " ")
}

// AllProviders, as the name in "NAME=AUDIENCE,...", forwards those
// audiences to every external provider besides its own: the Secrets Store
// CSI Driver's behaviour (every provider gets every token), for a node
// admin who chooses it.
const AllProviders = "*"

// For returns the audience patterns configured for provider name (its own
// and AllProviders').
func (a Audiences) For(name string) []string {
	out := slices.Clone(a.m[name])
	for _, p := range a.m[AllProviders] {
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out
}

// allowed reports whether provider name may receive a token for aud.
func (a Audiences) allowed(name, aud string) bool {
	for _, p := range a.For(name) {
		if p == aud {
			return true
		}
		if suffix, ok := strings.CutPrefix(p, "*"); ok && p != "" && len(aud) > len(suffix) && strings.HasSuffix(aud, suffix) {
			return true
		}
	}
	return false
}

// Filter returns the tokens provider name may receive, and the audiences it
// withheld (sorted; names only, never tokens). It returns nil when none are
// forwarded, so the request carries no tokens attribute at all: some
// providers (GCP) mint their own token only when the attribute is absent.
func (a Audiences) Filter(name string, tokens map[string]provider.Token) (map[string]provider.Token, []string) {
	var out map[string]provider.Token
	var withheld []string
	for aud, t := range tokens {
		if !a.allowed(name, aud) {
			withheld = append(withheld, aud)
			continue
		}
		if out == nil {
			out = make(map[string]provider.Token, len(tokens))
		}
		out[aud] = t
	}
	slices.Sort(withheld)
	return out, withheld
}
