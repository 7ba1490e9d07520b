package driver

import (
	"context"
	"strings"
	"testing"

	"github.com/secretfs/secretfs/provider"
)

// End to end through NodePublishVolume: the backend reads with kubelet's
// token, and the log says the pod's attribute was ignored (without it).
func TestPublishUsesKubeletTokensOverTheAttribute(t *testing.T) {
	e := newEnv(t, nil)
	req := publishReq("vol-t", e.target("t"), "app", "team-a")
	req.VolumeContext[provider.AttrTokens] = `{"":{"token":"forged-by-the-pod","expirationTimestamp":"2999-01-01T00:00:00Z"}}`
	req.Secrets = map[string]string{provider.AttrTokens: `{"":{"token":"from-kubelet","expirationTimestamp":"2030-01-01T00:00:00Z"}}`}
	if _, err := e.node.NodePublishVolume(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	if got := e.prov.lastReq.Tokens[""].Token; got != "from-kubelet" {
		t.Fatalf("backend got token %q", got)
	}
	logs := e.logs.String()
	if !strings.Contains(logs, "ignoring the volume attribute") || strings.Contains(logs, "forged-by-the-pod") || strings.Contains(logs, "from-kubelet") {
		t.Fatalf("logs: %s", logs)
	}
}
