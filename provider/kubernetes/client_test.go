package kubernetes

import (
	"context"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc/codes"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/rest"

	"github.com/secretfs/secretfs/provider"
)

func TestAPIErrorCodes(t *testing.T) {
	pod := provider.Pod{Namespace: "ns", ServiceAccount: "app"}
	gr := schema.GroupResource{Resource: "secrets"}
	for _, tc := range []struct {
		err  error
		code codes.Code
		says string
	}{
		{apierrors.NewNotFound(gr, "db"), codes.NotFound, "Secret ns/db not found"},
		{apierrors.NewForbidden(gr, "db", errors.New("rbac")), codes.PermissionDenied, "service account ns/app may not get Secret ns/db"},
		{apierrors.NewUnauthorized("no"), codes.Unauthenticated, "rejected the service-account token of service account ns/app"},
		{apierrors.NewTooManyRequests("slow down", 1), codes.Unavailable, "overloaded"},
		{apierrors.NewInternalError(errors.New("boom")), codes.Unavailable, "overloaded"},
		{apierrors.NewBadRequest("odd"), codes.Internal, "400"},
		{fmt.Errorf("client rate limiter Wait returned an error: %w", errors.New("rate")), codes.Unavailable, "client-side limit"},
		{errors.New("dial tcp 127.0.0.1:1: connect: connection refused"), codes.Unavailable, "unreachable"},
		{fmt.Errorf("get: %w", context.DeadlineExceeded), codes.DeadlineExceeded, "did not answer in time"},
	} {
		err := apiError(tc.err, "get", pod, "db")
		if provider.CodeOf(err) != tc.code || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("%v -> %v %q, want %v containing %q", tc.err, provider.CodeOf(err), err, tc.code, tc.says)
		}
	}
}

// A request without the pod's token never leaves the process: there is no
// identity to fall back to.
func TestNoRequestWithoutPodToken(t *testing.T) {
	var hits atomic.Int64
	var lastAuth atomic.Value
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		lastAuth.Store(r.Header.Get("Authorization"))
		http.Error(w, "no", http.StatusUnauthorized)
	}))
	defer srv.Close()
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	// The driver's own config: its credentials must not be carried over.
	cfg := &rest.Config{Host: srv.URL, BearerToken: "driver-identity", BearerTokenFile: "/token",
		TLSClientConfig: rest.TLSClientConfig{CAData: ca, CertFile: "/driver.crt", KeyFile: "/driver.key"}}
	opts := OptionsFromConfig(cfg)
	if opts.Host != srv.URL || string(opts.CAData) != string(ca) {
		t.Fatalf("options %+v", opts)
	}
	p, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	_, err = p.client.Secrets("ns").Get(context.Background(), "db", metav1.GetOptions{})
	if !errors.Is(err, errNoToken) {
		t.Errorf("request without a token: %v", err)
	}
	_, err = p.Fetch(context.Background(), &provider.Request{Pod: provider.Pod{Namespace: "ns"}, Parameters: map[string]string{"objects": "- secretName: db\n"}})
	if provider.CodeOf(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "tokenRequests") {
		t.Errorf("Fetch without tokens: %v", err)
	}
	if hits.Load() != 0 {
		t.Errorf("%d requests reached the server without the pod's token", hits.Load())
	}
	// With the pod's token, that token and only it is sent: the watch a
	// fetch reads first, then the GET.
	_, err = p.Fetch(context.Background(), &provider.Request{Pod: provider.Pod{Namespace: "ns"},
		Tokens: map[string]provider.Token{"": {Token: "pod-token"}}, Parameters: map[string]string{"objects": "- secretName: db\n"}})
	if provider.CodeOf(err) != codes.Unauthenticated || hits.Load() != 2 || lastAuth.Load() != "Bearer pod-token" {
		t.Errorf("Fetch with a token: %v, %d requests, last Authorization %q", err, hits.Load(), lastAuth.Load())
	}
}

func TestInClusterDefaults(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "::1")
	t.Setenv("KUBERNETES_SERVICE_PORT", "6443")
	o := Options{}
	if err := o.setDefaults(); err != nil {
		t.Fatal(err)
	}
	if o.Host != "https://[::1]:6443" || o.CAFile != inClusterCAFile || o.Audience != "" {
		t.Errorf("defaults %+v", o)
	}
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	if err := (&Options{}).setDefaults(); err == nil {
		t.Error("no host and not in a pod: want an error")
	}
}
