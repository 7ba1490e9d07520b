package kubernetes

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/flowcontrol"

	"github.com/secretfs/secretfs/internal/kube/kubecore"
	"github.com/secretfs/secretfs/provider"
)

// In-cluster defaults, as client-go's rest.InClusterConfig uses them. The
// token file next to the CA is deliberately never read.
const (
	inClusterCAFile = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
	userAgent       = "secretfs-kubernetes-provider"
)

// DefaultMaxWatches is Options.MaxWatches when unset: about 35 MiB of the
// driver's memory at most.
const DefaultMaxWatches = 512

// Options configure the Kubernetes backend. They carry where the API server
// is and how to trust it, never a credential: every request is made with the
// pod's own service-account token.
type Options struct {
	// Host is the API server URL. Empty: in-cluster, from
	// KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT.
	Host string
	// CAData is a PEM bundle that signs the API server's certificate.
	// With CAFile also empty: the in-cluster CA file.
	CAData []byte
	CAFile string
	// TLSServerName overrides the name checked in the server certificate.
	TLSServerName string
	// Audience is the key of the token to use in Request.Tokens, which is the
	// audience of a CSIDriver spec.tokenRequests item. The default "" is the
	// item `audience: ""`, for which kubelet requests a token with the API
	// server's own audiences (--api-audiences, default the service-account
	// issuer), so it works on any cluster unchanged.
	Audience string
	// Logger receives operational messages (never tokens or secret data).
	Logger *slog.Logger
	// RequestTimeout bounds each GET. Default 10s.
	RequestTimeout time.Duration
	// QPS and Burst limit requests to the API server from this process, over
	// all pods together. Defaults 50 and 100.
	QPS   float32
	Burst int
	// MaxWatches bounds the API watches this process keeps open (one per
	// Secret or selector and service account in use, about 70 KiB of memory
	// each). Past it a volume's Watch fails ResourceExhausted (the volume
	// rotates at its interval) and a fetch GETs. Default 512.
	MaxWatches int
	// WrapTransport wraps the shared transport, for metrics or tests. It sees
	// the Authorization header: it must not log it.
	WrapTransport func(http.RoundTripper) http.RoundTripper
}

// OptionsFromConfig takes the API server address and its trust anchors
// from cfg and drops everything else, in particular any credential (client
// certificate, token, token file, exec plugin, impersonation), so that the
// driver's own identity can never be used to read a Secret.
func OptionsFromConfig(cfg *rest.Config) Options {
	return Options{
		Host:          cfg.Host,
		CAData:        cfg.TLSClientConfig.CAData,
		CAFile:        cfg.TLSClientConfig.CAFile,
		TLSServerName: cfg.TLSClientConfig.ServerName,
	}
}

func (o *Options) setDefaults() error {
	if o.Host == "" {
		host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
		if host == "" || port == "" {
			return errors.New("kubernetes provider: no API server: set Options.Host or run in a pod (KUBERNETES_SERVICE_HOST/PORT)")
		}
		o.Host = "https://" + net.JoinHostPort(host, port)
	}
	if len(o.CAData) == 0 && o.CAFile == "" {
		o.CAFile = inClusterCAFile
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.RequestTimeout <= 0 {
		o.RequestTimeout = 10 * time.Second
	}
	if o.QPS <= 0 {
		o.QPS = 50
	}
	if o.Burst <= 0 {
		o.Burst = 100
	}
	if o.MaxWatches <= 0 {
		o.MaxWatches = DefaultMaxWatches
	}
	return nil
}

// newClient builds the one client shared by all pods: one TLS transport per
// API server, no credential of its own, and a round tripper that sends the
// token found in the request context, or refuses to send at all.
func newClient(o Options, limiter flowcontrol.RateLimiter) (*kubecore.Client, error) {
	cfg := &rest.Config{
		Host:            o.Host,
		TLSClientConfig: rest.TLSClientConfig{CAData: o.CAData, CAFile: o.CAFile, ServerName: o.TLSServerName},
		UserAgent:       userAgent,
		RateLimiter:     limiter,
		// No Timeout: it would cut watches. GETs carry a context deadline.
		WrapTransport: func(rt http.RoundTripper) http.RoundTripper {
			if o.WrapTransport != nil {
				rt = o.WrapTransport(rt)
			}
			return &podTokenTransport{next: rt}
		},
	}
	httpClient, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes provider: API server client: %w", err)
	}
	return kubecore.NewForConfigAndClient(cfg, httpClient)
}

type tokenKey struct{}

// withToken returns ctx carrying the bearer token for requests made with it.
func withToken(ctx context.Context, token string) context.Context {
	return context.WithValue(ctx, tokenKey{}, token)
}

var errNoToken = errors.New("kubernetes provider: refusing to send a request without the pod's token")

// podTokenTransport authenticates each request with the token in its
// context. A request without one is never sent: there is no fallback
// identity.
type podTokenTransport struct{ next http.RoundTripper }

func (t *podTokenTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	token, _ := req.Context().Value(tokenKey{}).(string)
	if token == "" {
		return nil, errNoToken
	}
	req = req.Clone(req.Context())
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := t.next.RoundTrip(req)
	if b := provider.BudgetFrom(req.Context()); b != nil && resp != nil && resp.Body != nil {
		resp.Body = b.Reader(resp.Body) // a fetch's GETs: read within the volume's allowance
	}
	if c := streamChargeFrom(req.Context()); c != nil && resp != nil && resp.Body != nil {
		resp.Body = c.reader(resp.Body) // a watch a fetch reads from (prime.go)
	}
	return resp, err
}

// podToken returns the token for the configured audience, or an error that
// tells the admin which CSIDriver setting is missing.
func (p *Provider) podToken(req *provider.Request) (string, error) {
	tok, ok := req.Tokens[p.opts.Audience]
	if !ok || tok.Token == "" {
		return "", provider.Errorf(codes.FailedPrecondition,
			"no service-account token for audience %q in the request: the CSIDriver %s needs spec.tokenRequests "+
				"with an item audience: %q (and the pod a service account); the kubernetes provider reads Secrets only as the pod",
			p.opts.Audience, "csi.secretfs.dev", p.opts.Audience)
	}
	if !tok.ExpirationTimestamp.IsZero() && !p.now().Before(tok.ExpirationTimestamp) {
		return "", provider.Errorf(codes.Unauthenticated,
			"the service-account token of %s expired at %s: kubelet renews it on the next republish (CSIDriver requiresRepublish: true)",
			saName(req.Pod), tok.ExpirationTimestamp.UTC().Format(time.RFC3339))
	}
	return tok.Token, nil
}

// apiError turns a client error for verb on a Secret into a provider error
// that says what to do. API server messages name only the resource.
func apiError(err error, verb string, pod provider.Pod, secret string) error {
	who := saName(pod)
	what := fmt.Sprintf("Secret %s/%s", pod.Namespace, secret)
	var pe *provider.Error
	switch {
	case errors.As(err, &pe) && (pe.Code == codes.ResourceExhausted || pe.Code == codes.Unavailable):
		return provider.Errorf(pe.Code, "%s of %s: %s", verb, what, pe.Message) // the volume's or the node's bound (Budget)
	case errors.Is(err, context.DeadlineExceeded):
		return provider.DeadlineExceeded("%s of %s: the API server did not answer in time", verb, what)
	case errors.Is(err, context.Canceled):
		return provider.Errorf(codes.Canceled, "%s of %s canceled", verb, what)
	case strings.Contains(err.Error(), "client rate limiter"):
		// client-go does not wrap the limiter's error; its text is stable.
		return provider.Unavailable("%s of %s: too many requests from this node to the API server (client-side limit, see Options.QPS): retry later", verb, what)
	case apierrors.IsNotFound(err):
		return provider.NotFound("%s not found", what)
	case apierrors.IsForbidden(err):
		return provider.PermissionDenied(
			"%s may not %s %s: bind it to a Role in namespace %s with apiGroups [\"\"], resources [secrets], verbs [get, watch], resourceNames [%s]",
			who, verb, what, pod.Namespace, secret)
	case apierrors.IsUnauthorized(err):
		return provider.Errorf(codes.Unauthenticated,
			"the API server rejected the service-account token of %s (expired, pod gone, or wrong audience: "+
				"the CSIDriver tokenRequests audience must be one the API server accepts, see --api-audiences)", who)
	case apierrors.IsTooManyRequests(err), apierrors.IsServerTimeout(err), apierrors.IsTimeout(err),
		apierrors.IsServiceUnavailable(err), apierrors.IsInternalError(err), apierrors.IsUnexpectedServerError(err):
		return provider.Unavailable("%s of %s: the API server is overloaded or failing: %v", verb, what, err)
	}
	var status apierrors.APIStatus
	if errors.As(err, &status) {
		code := status.Status().Code
		if code >= 500 || code == 0 {
			return provider.Unavailable("%s of %s: API server error %d: %s", verb, what, code, status.Status().Message)
		}
		return provider.Errorf(codes.Internal, "%s of %s: API server answered %d: %s", verb, what, code, status.Status().Message)
	}
	// Transport failures: refused, reset, TLS, DNS.
	return provider.Unavailable("%s of %s: API server unreachable: %v", verb, what, err)
}

func saName(pod provider.Pod) string {
	sa := pod.ServiceAccount
	if sa == "" {
		sa = "(unknown: enable CSIDriver podInfoOnMount)"
	}
	return fmt.Sprintf("service account %s/%s", pod.Namespace, sa)
}
