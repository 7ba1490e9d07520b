// Package kubecore is the driver's client of the Kubernetes core/v1 API
// group: Secrets (the kubernetes backend reads and watches them, the Secret
// sync writes them) and Events. It is what client-go's generated
// CoreV1Client does, built on the same generic client (gentype), with one
// difference: its scheme holds only core/v1. The generated client's scheme
// (k8s.io/client-go/kubernetes/scheme) registers every built-in API group,
// and importing it puts all of them, their typed clients and the OpenAPI
// models into the binary: about 13 MB of code and data, most of it paged in
// at start-up by package initialisation, for two resources.
package kubecore

import (
	"context"
	"fmt"
	"net/http"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/gentype"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/record"
)

var (
	scheme         = runtime.NewScheme()
	codecs         = serializer.NewCodecFactory(scheme)
	parameterCodec = runtime.NewParameterCodec(scheme)
)

func init() {
	// The options types (GetOptions, ListOptions, ...) under the
	// unversioned group, as the generated clientset's scheme has them, so
	// parameterCodec can encode them as query parameters.
	metav1.AddToGroupVersion(scheme, schema.GroupVersion{Version: "v1"})
	if err := corev1.AddToScheme(scheme); err != nil {
		panic(err)
	}
}

// SecretInterface is what the driver does with Secrets. client-go's typed
// SecretInterface (and so its fake clientset) satisfies it.
type SecretInterface interface {
	Get(ctx context.Context, name string, opts metav1.GetOptions) (*corev1.Secret, error)
	Watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error)
	Create(ctx context.Context, secret *corev1.Secret, opts metav1.CreateOptions) (*corev1.Secret, error)
	Patch(ctx context.Context, name string, pt types.PatchType, data []byte, opts metav1.PatchOptions, subresources ...string) (*corev1.Secret, error)
}

// SecretsGetter hands out a SecretInterface per namespace.
type SecretsGetter interface {
	Secrets(namespace string) SecretInterface
}

// Client is a core/v1 client. Safe for concurrent use.
type Client struct {
	rest rest.Interface
}

// NewForConfig returns a Client for cfg, with an HTTP client of its own.
func NewForConfig(cfg *rest.Config) (*Client, error) {
	httpClient, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return nil, err
	}
	return NewForConfigAndClient(cfg, httpClient)
}

// NewForConfigAndClient returns a Client for cfg that sends through
// httpClient (which carries cfg's transport settings).
func NewForConfigAndClient(cfg *rest.Config, httpClient *http.Client) (*Client, error) {
	c := *cfg
	gv := corev1.SchemeGroupVersion
	c.GroupVersion = &gv
	c.APIPath = "/api"
	c.NegotiatedSerializer = codecs.WithoutConversion()
	if c.UserAgent == "" {
		c.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	rc, err := rest.RESTClientForConfigAndClient(&c, httpClient)
	if err != nil {
		return nil, fmt.Errorf("core/v1 client: %w", err)
	}
	return &Client{rest: rc}, nil
}

// Secrets returns the Secrets of namespace.
func (c *Client) Secrets(namespace string) SecretInterface {
	return gentype.NewClient[*corev1.Secret]("secrets", c.rest, parameterCodec, namespace,
		func() *corev1.Secret { return &corev1.Secret{} }, gentype.PrefersProtobuf[*corev1.Secret]())
}

// ListSecrets lists the Secrets of namespace that opts selects, one page
// (opts.Limit, opts.Continue) per call. The kubernetes backend's label
// selectors use it; it is not part of SecretInterface, which the Secret
// sync's fakes implement.
func (c *Client) ListSecrets(ctx context.Context, namespace string, opts metav1.ListOptions) (*corev1.SecretList, error) {
	return gentype.NewClientWithList[*corev1.Secret, *corev1.SecretList]("secrets", c.rest, parameterCodec, namespace,
		func() *corev1.Secret { return &corev1.Secret{} }, func() *corev1.SecretList { return &corev1.SecretList{} },
		gentype.PrefersProtobuf[*corev1.Secret]()).List(ctx, opts)
}

// EventSink returns the sink an event recorder writes through: each Event
// goes to its own namespace, as client-go's EventSinkImpl does it.
func (c *Client) EventSink() record.EventSink {
	return eventSink{c}
}

type eventSink struct{ c *Client }

func (s eventSink) events(namespace string) *gentype.Client[*corev1.Event] {
	return gentype.NewClient[*corev1.Event]("events", s.c.rest, parameterCodec, namespace,
		func() *corev1.Event { return &corev1.Event{} })
}

func (s eventSink) Create(e *corev1.Event) (*corev1.Event, error) {
	return s.events(e.Namespace).Create(context.Background(), e, metav1.CreateOptions{})
}

func (s eventSink) Update(e *corev1.Event) (*corev1.Event, error) {
	return s.events(e.Namespace).Update(context.Background(), e, metav1.UpdateOptions{})
}

func (s eventSink) Patch(e *corev1.Event, data []byte) (*corev1.Event, error) {
	return s.events(e.Namespace).Patch(context.Background(), e.Name, types.StrategicMergePatchType, data, metav1.PatchOptions{})
}
