package provider

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"google.golang.org/grpc/codes"
)

// Volume attributes of a CSI inline volume. The csi.storage.k8s.io/* keys
// are set by kubelet (CSIDriver podInfoOnMount and tokenRequests) and are
// passed on to external providers as the same keys; secretProviderClass is
// the only one the pod author sets.
const (
	AttrKubeletPrefix  = "csi.storage.k8s.io/"
	AttrClass          = "secretProviderClass"
	AttrEphemeral      = AttrKubeletPrefix + "ephemeral"
	AttrPodName        = AttrKubeletPrefix + "pod.name"
	AttrPodNamespace   = AttrKubeletPrefix + "pod.namespace"
	AttrPodUID         = AttrKubeletPrefix + "pod.uid"
	AttrServiceAccount = AttrKubeletPrefix + "serviceAccount.name"
	AttrTokens         = AttrKubeletPrefix + "serviceAccount.tokens"
)

// ParseTokens decodes csi.storage.k8s.io/serviceAccount.tokens as kubelet
// writes it: {"<audience>":{"token":"...","expirationTimestamp":"<RFC 3339>"}}.
// Every audience must be printable and carry a non-empty token; the
// expiry may be missing or null. Errors are InvalidArgument and name the
// audience at most, never a token or a piece of the input.
func ParseTokens(raw string) (map[string]Token, error) {
	var wire map[string]*struct {
		Token               *string          `json:"token"`
		ExpirationTimestamp *json.RawMessage `json:"expirationTimestamp"`
	}
	dec := json.NewDecoder(strings.NewReader(raw))
	if err := dec.Decode(&wire); err != nil || dec.More() || wire == nil {
		where := ""
		var se *json.SyntaxError
		if errors.As(err, &se) {
			where = fmt.Sprintf(" (syntax error at byte %d)", se.Offset)
		}
		return nil, InvalidArgument("kubelet's %s is not a JSON object of audience -> {token, expirationTimestamp}%s: check the CSIDriver tokenRequests", AttrTokens, where)
	}
	out := make(map[string]Token, len(wire))
	for aud, w := range wire {
		if !utf8.ValidString(aud) || strings.ContainsFunc(aud, unicode.IsControl) || len(aud) > 1024 {
			return nil, InvalidArgument("kubelet's %s has an audience that is not printable text", AttrTokens)
		}
		if w == nil || w.Token == nil || *w.Token == "" {
			return nil, InvalidArgument("kubelet's %s: the token for audience %q is missing or empty", AttrTokens, aud)
		}
		t := Token{Token: *w.Token}
		if w.ExpirationTimestamp != nil && string(*w.ExpirationTimestamp) != "null" {
			exp, ok := parseExpiry(*w.ExpirationTimestamp)
			if !ok {
				return nil, InvalidArgument("kubelet's %s: the expirationTimestamp for audience %q is not an RFC 3339 time", AttrTokens, aud)
			}
			t.ExpirationTimestamp = exp
		}
		out[aud] = t
	}
	return out, nil
}

// parseExpiry reads a JSON string holding an RFC 3339 time within the
// years RFC 3339 can write (0-9999 in UTC); "" is no expiry.
func parseExpiry(raw json.RawMessage) (time.Time, bool) {
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return time.Time{}, false
	}
	if s == "" {
		return time.Time{}, true
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil || t.UTC().Year() < 0 || t.UTC().Year() > 9999 {
		return time.Time{}, false
	}
	return t, true
}

// EncodeTokens writes tokens as kubelet does (metav1.Time: RFC 3339 in UTC
// to the second, null for no expiry), so that ParseTokens reads them back.
func EncodeTokens(tokens map[string]Token) (string, error) {
	type wireToken struct {
		Token               string  `json:"token"`
		ExpirationTimestamp *string `json:"expirationTimestamp"`
	}
	wire := make(map[string]wireToken, len(tokens))
	for aud, t := range tokens {
		w := wireToken{Token: t.Token}
		if !t.ExpirationTimestamp.IsZero() {
			s := t.ExpirationTimestamp.UTC().Format(time.RFC3339)
			w.ExpirationTimestamp = &s
		}
		wire[aud] = w
	}
	js, err := json.Marshal(wire)
	if err != nil {
		return "", Errorf(codes.Internal, "encoding service-account tokens: %v", err)
	}
	return string(js), nil
}
