package driver

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	"github.com/secretfs/secretfs/provider"
)

// ReasonTokenMissing is the Warning Event posted on a pod whose provider is
// configured to receive a token audience that kubelet did not send.
const ReasonTokenMissing = "ProviderTokenMissing"

// audienceChecker is implemented by providers that are configured to
// receive the pod's service-account tokens of some audiences (external
// providers, --provider-audiences).
type audienceChecker interface {
	// MissingAudiences returns the configured audiences when no token in
	// tokens matches any of them (names only), else nil.
	MissingAudiences(tokens map[string]provider.Token) []string
}

// warningSink is implemented by an EventSink that can post any Warning
// Event on a pod (the API events do).
type warningSink interface {
	Warning(pod provider.Pod, reason, message string)
}

// checkAudiences warns, on a first publish, when p is configured for token
// audiences and kubelet sent none of them: the CSIDriver's tokenRequests
// lack them. The provider then gets no token, and one with RBAC of its own
// may quietly mint its own token instead, outside the token
// scoping the pod's service account gives. The publish goes on: whether
// the provider needs the token is the provider's to say.
func (d *Driver) checkAudiences(ctx context.Context, v *volume, p provider.Provider, req *provider.Request) {
	c, ok := p.(audienceChecker)
	if !ok {
		return
	}
	missing := c.MissingAudiences(req.Tokens)
	if len(missing) == 0 {
		return
	}
	for i, a := range missing {
		missing[i] = fmt.Sprintf("%q", a)
	}
	list := strings.Join(missing, ", ")
	d.log.LogAttrs(ctx, slog.LevelWarn, "provider is configured for token audiences kubelet did not send; add them to the CSIDriver's tokenRequests",
		slog.String("volume_id", v.id), slog.String("namespace", v.pod.Namespace), slog.String("pod", v.pod.Name),
		slog.String("class", v.class), slog.String("provider", v.provider), slog.String("audiences", list))
	if w, ok := d.events.(warningSink); ok {
		w.Warning(v.pod, ReasonTokenMissing, fmt.Sprintf("Provider %q of SecretProviderClass %q is configured to receive the pod's service-account token for %s, but kubelet sent none: the CSIDriver %s does not request it (spec.tokenRequests). The provider gets no token (and may mint its own); add the audience to the CSIDriver (Helm value tokenAudiences) or remove it from --provider-audiences.",
			v.provider, v.class, list, d.name))
	}
}
