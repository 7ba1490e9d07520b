package validate

import (
	"errors"
	"fmt"

	"github.com/secretfs/secretfs/provider"
)

// VolumeContext is what a publish learns from the volume attributes.
type VolumeContext struct {
	Class  string
	Pod    provider.Pod
	Tokens map[string]provider.Token
	// IgnoredTokenAttr: the volume attributes carried provider.AttrTokens although
	// kubelet passed the tokens in the secrets field, so the pod author
	// wrote it; it was ignored.
	IgnoredTokenAttr bool
}

// ParseVolumeContext validates the attributes of an ephemeral inline volume.
// Errors are InvalidArgument and say what to fix; they never quote a token.
// With tokensInSecrets (kubelet passed the tokens in the request's secrets
// field) the provider.AttrTokens attribute is not read at all: see tokensFromSecrets.
func ParseVolumeContext(attrs map[string]string, tokensInSecrets bool) (*VolumeContext, error) {
	if eph := attrs[provider.AttrEphemeral]; eph != "true" {
		if eph == "" {
			eph = "missing"
		} else {
			eph = fmt.Sprintf("%.20q", eph)
		}
		return nil, provider.InvalidArgument("secretfs serves only CSI ephemeral inline volumes, but %s is %s: use a csi volume in the pod spec, and a CSIDriver with volumeLifecycleModes [Ephemeral] and podInfoOnMount: true", provider.AttrEphemeral, eph)
	}
	vc := &VolumeContext{
		Class: attrs[provider.AttrClass],
		Pod: provider.Pod{
			Namespace:      attrs[provider.AttrPodNamespace],
			Name:           attrs[provider.AttrPodName],
			UID:            attrs[provider.AttrPodUID],
			ServiceAccount: attrs[provider.AttrServiceAccount],
		},
	}
	if vc.Class == "" {
		return nil, provider.InvalidArgument("volume attribute %s is missing: set volumeAttributes.%s to the name of a SecretProviderClass in the pod's namespace", provider.AttrClass, provider.AttrClass)
	}
	if err := checkName(vc.Class, 253, true); err != nil {
		return nil, provider.InvalidArgument("volume attribute %s %.80q is not a valid object name: %v", provider.AttrClass, vc.Class, err)
	}
	if vc.Pod.Namespace == "" {
		return nil, provider.InvalidArgument("volume attribute %s is missing: the CSIDriver object must set podInfoOnMount: true", provider.AttrPodNamespace)
	}
	if err := checkName(vc.Pod.Namespace, 63, false); err != nil {
		return nil, provider.InvalidArgument("volume attribute %s %.80q is not a valid namespace: %v", provider.AttrPodNamespace, vc.Pod.Namespace, err)
	}
	for key, val := range map[string]string{provider.AttrPodName: vc.Pod.Name, provider.AttrPodUID: vc.Pod.UID, provider.AttrServiceAccount: vc.Pod.ServiceAccount} {
		if val != "" {
			if err := checkName(val, 253, true); err != nil {
				return nil, provider.InvalidArgument("volume attribute %s %.80q is invalid: %v", key, val, err)
			}
		}
	}
	if _, ok := attrs[provider.AttrTokens]; ok && tokensInSecrets {
		vc.IgnoredTokenAttr = true
	} else if raw, ok := attrs[provider.AttrTokens]; ok && raw != "" {
		toks, err := provider.ParseTokens(raw)
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
