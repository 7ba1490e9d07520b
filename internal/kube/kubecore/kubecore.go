// Package kubecore is the driver's client of the Kubernetes core/v1 API
// group: Secrets (the kubernetes backend reads and watches them, the Secret
// sync writes them) and Events. It is what client-go's generated
// CoreV1Client does, sending the same requests through client-go's REST
// client, with two differences. Its scheme holds only core/v1: the
// generated client's scheme (k8s.io/client-go/kubernetes/scheme) registers
// every built-in API group, and importing it puts all of them, their typed
// clients and the OpenAPI models into the binary (about 13 MB of code and
// data, most of it paged in at start-up by package initialisation). And it
// does not use the generic client the generated ones are built on
// (k8s.io/client-go/gentype): that package also holds the fake clients'
// machinery (k8s.io/client-go/testing: object trackers, managed fields,
// JSON and strategic merge patch, structured-merge-diff), which a driver on
// every node would carry and page in for nothing (resource.go).
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
	"k8s.io/client-go/rest"
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
func (c *Client) Secrets(namespace string) SecretInterface { return c.secrets(namespace) }

func (c *Client) secrets(namespace string) resource[*corev1.Secret] {
	return resource[*corev1.Secret]{c.rest, "secrets", namespace, true, func() *corev1.Secret { return &corev1.Secret{} }}
}

// ListSecrets lists the Secrets of namespace that opts selects, one page
// (opts.Limit, opts.Continue) per call. The kubernetes backend's label
// selectors use it; it is not part of SecretInterface, which the Secret
// sync's fakes implement.
func (c *Client) ListSecrets(ctx context.Context, namespace string, opts metav1.ListOptions) (*corev1.SecretList, error) {
	list := &corev1.SecretList{}
	err := c.secrets(namespace).list(ctx, opts, list)
	return list, err
}

// EventInterface is what the driver does with Events: it creates them and
// patches the count of a repeated one. client-go's typed EventInterface
// satisfies it.
type EventInterface interface {
	Create(ctx context.Context, event *corev1.Event, opts metav1.CreateOptions) (*corev1.Event, error)
	Patch(ctx context.Context, name string, pt types.PatchType, data []byte, opts metav1.PatchOptions, subresources ...string) (*corev1.Event, error)
}

// EventsGetter hands out an EventInterface per namespace.
type EventsGetter interface {
	Events(namespace string) EventInterface
}

// Events returns the Events of namespace (JSON, as client-go's generated
// client sends them: core/v1 Events do not prefer protobuf there).
func (c *Client) Events(namespace string) EventInterface {
	return resource[*corev1.Event]{c.rest, "events", namespace, false, func() *corev1.Event { return &corev1.Event{} }}
}
