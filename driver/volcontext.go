package driver

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/secretfs/secretfs/provider"
)

// Volume attributes. The csi.storage.k8s.io/* keys are set by kubelet
// (CSIDriver podInfoOnMount and tokenRequests); secretProviderClass is the
// only one the pod author sets. No other attribute means anything: the class
// is the admin's word and attributes never override its parameters.
const (
	AttrClass          = "secretProviderClass"
	AttrEphemeral      = "csi.storage.k8s.io/ephemeral"
	AttrPodName        = "csi.storage.k8s.io/pod.name"
	AttrPodNamespace   = "csi.storage.k8s.io/pod.namespace"
	AttrPodUID         = "csi.storage.k8s.io/pod.uid"
	AttrServiceAccount = "csi.storage.k8s.io/serviceAccount.name"
	AttrTokens         = "csi.storage.k8s.io/serviceAccount.tokens"
)

// volumeContext is what a publish learns from the volume attributes.
type volumeContext struct {
	Class  string
	Pod    provider.Pod
	Tokens map[string]provider.Token
	// IgnoredTokenAttr: the volume attributes carried AttrTokens although
	// kubelet passed the tokens in the secrets field, so the pod author
	// wrote it; it was ignored.
	IgnoredTokenAttr bool
}

// parseVolumeContext validates the attributes of an ephemeral inline volume.
// Errors are InvalidArgument and say what to fix; they never quote a token.
// With tokensInSecrets (kubelet passed the tokens in the request's secrets
// field) the AttrTokens attribute is not read at all: see tokenSource.
func parseVolumeContext(attrs map[string]string, tokensInSecrets bool) (*volumeContext, error) {
	if eph := attrs[AttrEphemeral]; eph != "true" {
		if eph == "" {
			eph = "missing"
		} else {
			eph = fmt.Sprintf("%.20q", eph)
		}
		return nil, provider.InvalidArgument("secretfs serves only CSI ephemeral inline volumes, but %s is %s: use a csi volume in the pod spec, and a CSIDriver with volumeLifecycleModes [Ephemeral] and podInfoOnMount: true", AttrEphemeral, eph)
	}
	vc := &volumeContext{
		Class: attrs[AttrClass],
		Pod: provider.Pod{
			Namespace:      attrs[AttrPodNamespace],
			Name:           attrs[AttrPodName],
			UID:            attrs[AttrPodUID],
			ServiceAccount: attrs[AttrServiceAccount],
		},
	}
	if vc.Class == "" {
		return nil, provider.InvalidArgument("volume attribute %s is missing: set volumeAttributes.%s to the name of a SecretProviderClass in the pod's namespace", AttrClass, AttrClass)
	}
	if err := checkName(vc.Class, 253, true); err != nil {
		return nil, provider.InvalidArgument("volume attribute %s %.80q is not a valid object name: %v", AttrClass, vc.Class, err)
	}
	if vc.Pod.Namespace == "" {
		return nil, provider.InvalidArgument("volume attribute %s is missing: the CSIDriver object must set podInfoOnMount: true", AttrPodNamespace)
	}
	if err := checkName(vc.Pod.Namespace, 63, false); err != nil {
		return nil, provider.InvalidArgument("volume attribute %s %.80q is not a valid namespace: %v", AttrPodNamespace, vc.Pod.Namespace, err)
	}
	for key, val := range map[string]string{AttrPodName: vc.Pod.Name, AttrPodUID: vc.Pod.UID, AttrServiceAccount: vc.Pod.ServiceAccount} {
		if val != "" {
			if err := checkName(val, 253, true); err != nil {
				return nil, provider.InvalidArgument("volume attribute %s %.80q is invalid: %v", key, val, err)
			}
		}
	}
	if _, ok := attrs[AttrTokens]; ok && tokensInSecrets {
		vc.IgnoredTokenAttr = true
	} else if raw, ok := attrs[AttrTokens]; ok && raw != "" {
		toks, err := parseTokens(raw)
		if err != nil {
			return nil, err
		}
		vc.Tokens = toks
	}
	return vc, nil
}

// checkName accepts Kubernetes object names: lowercase letters, digits, '-'
// and, for DNS subdomains, '.'; starting and ending alphanumeric.
func checkName(s string, max int, dots bool) error {
	if len(s) > max {
		return fmt.Errorf("longer than %d characters", max)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		ok := c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || dots && c == '.'
		if !ok {
			return errors.New("only lowercase letters, digits and '-'" + map[bool]string{true: " or '.'", false: ""}[dots] + " are allowed")
		}
	}
	if !isAlnum(s[0]) || !isAlnum(s[len(s)-1]) {
		return errors.New("must start and end with a letter or digit")
	}
	return nil
}

func isAlnum(c byte) bool { return c >= 'a' && c <= 'z' || c >= '0' && c <= '9' }

// parseTokens decodes csi.storage.k8s.io/serviceAccount.tokens:
// {"<audience>":{"token":"...","expirationTimestamp":"<RFC 3339>"}}.
// Errors name the audience at most, never a token or a piece of the input.
func parseTokens(raw string) (map[string]provider.Token, error) {
	var wire map[string]*struct {
		Token               *string `json:"token"`
		ExpirationTimestamp *string `json:"expirationTimestamp"`
	}
	dec := json.NewDecoder(strings.NewReader(raw))
	if err := dec.Decode(&wire); err != nil || dec.More() || wire == nil {
		where := ""
		var se *json.SyntaxError
		if errors.As(err, &se) {
			where = fmt.Sprintf(" (syntax error at byte %d)", se.Offset)
		}
		return nil, provider.InvalidArgument("kubelet's %s is not a JSON object of audience -> {token, expirationTimestamp}%s: check the CSIDriver tokenRequests", AttrTokens, where)
	}
	out := make(map[string]provider.Token, len(wire))
	for aud, w := range wire {
		if !utf8.ValidString(aud) || strings.ContainsFunc(aud, unicode.IsControl) || len(aud) > 1024 {
			return nil, provider.InvalidArgument("kubelet's %s has an audience that is not printable text", AttrTokens)
		}
		if w == nil || w.Token == nil || *w.Token == "" {
			return nil, provider.InvalidArgument("kubelet's %s: the token for audience %q is missing or empty", AttrTokens, aud)
		}
		t := provider.Token{Token: *w.Token}
		if w.ExpirationTimestamp != nil && *w.ExpirationTimestamp != "" {
			if err := t.ExpirationTimestamp.UnmarshalText([]byte(*w.ExpirationTimestamp)); err != nil {
				return nil, provider.InvalidArgument("kubelet's %s: the expirationTimestamp for audience %q is not an RFC 3339 time", AttrTokens, aud)
			}
		}
		out[aud] = t
	}
	return out, nil
}
