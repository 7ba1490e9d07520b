package driver

import (
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"

	"github.com/secretfs/secretfs/provider"
)

func attrs(kv ...string) map[string]string {
	m := map[string]string{provider.AttrEphemeral: "true", provider.AttrClass: "app", provider.AttrPodNamespace: "team-a"}
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] == "<delete>" {
			delete(m, kv[i])
		} else {
			m[kv[i]] = kv[i+1]
		}
	}
	return m
}

func TestParseVolumeContext(t *testing.T) {
	vc, err := parseVolumeContext(attrs(provider.AttrPodName, "web-0", provider.AttrPodUID, "0f1e2d3c-aaaa", provider.AttrServiceAccount, "web",
		provider.AttrTokens, `{"api://AzureADTokenExchange":{"token":"abc","expirationTimestamp":"2030-01-02T03:04:05Z"},"vault":{"token":"def"}}`,
		"unrelated", "ignored"), false)
	if err != nil {
		t.Fatal(err)
	}
	if vc.Class != "app" || vc.Pod != (provider.Pod{Namespace: "team-a", Name: "web-0", UID: "0f1e2d3c-aaaa", ServiceAccount: "web"}) {
		t.Fatalf("%+v", vc)
	}
	tok := vc.Tokens["api://AzureADTokenExchange"]
	if tok.Token != "abc" || !tok.ExpirationTimestamp.Equal(time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)) || vc.Tokens["vault"].Token != "def" {
		t.Fatalf("tokens %+v", vc.Tokens)
	}
	if vc, err := parseVolumeContext(attrs(provider.AttrTokens, ""), false); err != nil || vc.Tokens != nil {
		t.Fatalf("empty tokens: %+v %v", vc, err)
	}

	for name, tc := range map[string]struct {
		attrs map[string]string
		msg   string
	}{
		"not ephemeral":      {attrs(provider.AttrEphemeral, "<delete>"), "is missing: use a csi volume"},
		"ephemeral garbage":  {attrs(provider.AttrEphemeral, "yes"), `is "yes"`},
		"no class":           {attrs(provider.AttrClass, "<delete>"), "secretProviderClass is missing"},
		"class uppercase":    {attrs(provider.AttrClass, "App"), "not a valid object name"},
		"class slash":        {attrs(provider.AttrClass, "a/b"), "not a valid object name"},
		"class too long":     {attrs(provider.AttrClass, strings.Repeat("a", 254)), "longer than 253"},
		"no namespace":       {attrs(provider.AttrPodNamespace, "<delete>"), "pod.namespace is missing"},
		"namespace with dot": {attrs(provider.AttrPodNamespace, "a.b"), "not a valid namespace"},
		"bad pod name":       {attrs(provider.AttrPodName, "Web 0"), "pod.name"},
		"tokens not json":    {attrs(provider.AttrTokens, "{"), "not a JSON object"},
		"tokens array":       {attrs(provider.AttrTokens, "[]"), "not a JSON object"},
		"tokens null":        {attrs(provider.AttrTokens, "null"), "not a JSON object"},
		"tokens trailing":    {attrs(provider.AttrTokens, `{} {}`), "not a JSON object"},
		"token missing":      {attrs(provider.AttrTokens, `{"aud":{}}`), `token for audience "aud" is missing`},
		"token null":         {attrs(provider.AttrTokens, `{"aud":null}`), `token for audience "aud" is missing`},
		"token wrong type":   {attrs(provider.AttrTokens, `{"aud":{"token":5}}`), "not a JSON object"},
		"bad expiry":         {attrs(provider.AttrTokens, `{"aud":{"token":"x","expirationTimestamp":"tomorrow"}}`), "not an RFC 3339 time"},
	} {
		_, err := parseVolumeContext(tc.attrs, false)
		if provider.CodeOf(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%s: want InvalidArgument containing %q, got %v", name, tc.msg, err)
		}
	}
}

func FuzzParseVolumeContext(f *testing.F) {
	f.Add("app", "team-a", "true", "web-0", "")
	f.Add("", "", "", "", "")
	f.Add("a.b-c", "ns", "false", "Web", `{"x":{"token":"t"}}`)
	f.Add("app", "team-a", "true", "web-0", `{"aud":{"token":"t","expirationTimestamp":"2030-01-01T00:00:00Z"}}`)
	f.Fuzz(func(t *testing.T, class, ns, eph, pod, tokens string) {
		vc, err := parseVolumeContext(map[string]string{provider.AttrClass: class, provider.AttrPodNamespace: ns, provider.AttrEphemeral: eph, provider.AttrPodName: pod, provider.AttrTokens: tokens}, false)
		if err != nil {
			if provider.CodeOf(err) != codes.InvalidArgument {
				t.Fatalf("code %v: %v", provider.CodeOf(err), err)
			}
			return
		}
		if eph != "true" || vc.Class != class || vc.Pod.Namespace != ns || checkName(class, 253, true) != nil || checkName(ns, 63, false) != nil {
			t.Fatalf("accepted %+v", vc)
		}
	})
}

func TestValidateTargetPath(t *testing.T) {
	for p, msg := range map[string]string{"": "missing", "a/b": "not absolute", "/a/../b": "not clean", "/a/": "not clean", "/": "root", "/a\x00": "NUL"} {
		if err := checkTargetPath(p); err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("%q: want %q, got %v", p, msg, err)
		}
	}
	if err := checkTargetPath("/var/lib/kubelet/pods/x/volumes/kubernetes.io~csi/secrets/mount"); err != nil {
		t.Fatal(err)
	}
}

// A pod author can set the tokens attribute; with kubelet's tokens in the
// secrets field (CSIDriver serviceAccountTokenInSecrets) it is ignored, even
// when it would be "fresher" or malformed.
func TestTokensInSecretsOverrideTheAttribute(t *testing.T) {
	forged := `{"":{"token":"forged","expirationTimestamp":"2999-01-01T00:00:00Z"}}`
	for name, attr := range map[string]string{"forged": forged, "malformed": `{"":`} {
		req := &csi.NodePublishVolumeRequest{
			VolumeId: "vol", TargetPath: "/t", Readonly: true,
			VolumeCapability: &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}}},
			VolumeContext:    attrs(provider.AttrTokens, attr),
			Secrets:          map[string]string{provider.AttrTokens: `{"":{"token":"kubelet","expirationTimestamp":"2030-01-01T00:00:00Z"}}`},
		}
		in, err := parsePublish(req)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got := in.Context.Tokens[""].Token; got != "kubelet" || len(in.Context.Tokens) != 1 {
			t.Fatalf("%s: token %q taken", name, got)
		}
		if !in.Context.IgnoredTokenAttr {
			t.Fatalf("%s: ignoring the attribute is not reported", name)
		}
		// Empty tokens in the secrets field still mean: no tokens.
		req.Secrets = map[string]string{provider.AttrTokens: ""}
		if in, err := parsePublish(req); err != nil || in.Context.Tokens != nil {
			t.Fatalf("%s: empty secrets tokens: %v %v", name, in.Context.Tokens, err)
		}
	}
	// Without the secrets key the attribute is kubelet's and is used.
	vc, err := parseVolumeContext(attrs(provider.AttrTokens, forged), false)
	if err != nil || vc.Tokens[""].Token != "forged" || vc.IgnoredTokenAttr {
		t.Fatalf("attribute without secrets: %+v %v", vc, err)
	}
}
