package kubecore

import (
	"context"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
)

// resource is one core/v1 resource in one namespace. Its methods send the
// requests client-go's generated clients send (k8s.io/client-go/gentype's
// Client: same paths, query parameters, content types and timeouts),
// written out on the REST client for the four verbs the driver uses.
type resource[T runtime.Object] struct {
	rest      rest.Interface
	name      string // the plural: "secrets"
	namespace string
	// protobuf: the resource prefers protobuf (client-go's generated client
	// says so for built-in types it can encode that way; Events it does not).
	protobuf bool
	new      func() T
}

func (r resource[T]) on(req *rest.Request) *rest.Request {
	return req.UseProtobufAsDefaultIfPreferred(r.protobuf).
		NamespaceIfScoped(r.namespace, r.namespace != "").
		Resource(r.name)
}

func (r resource[T]) Get(ctx context.Context, name string, opts metav1.GetOptions) (T, error) {
	out := r.new()
	err := r.on(r.rest.Get()).Name(name).VersionedParams(&opts, parameterCodec).Do(ctx).Into(out)
	return out, err
}

func (r resource[T]) Watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
	opts.Watch = true
	return r.on(r.rest.Get()).VersionedParams(&opts, parameterCodec).Timeout(timeoutOf(opts)).Watch(ctx)
}

func (r resource[T]) Create(ctx context.Context, obj T, opts metav1.CreateOptions) (T, error) {
	out := r.new()
	err := r.on(r.rest.Post()).VersionedParams(&opts, parameterCodec).Body(obj).Do(ctx).Into(out)
	return out, err
}

func (r resource[T]) Patch(ctx context.Context, name string, pt types.PatchType, data []byte, opts metav1.PatchOptions, subresources ...string) (T, error) {
	out := r.new()
	err := r.on(r.rest.Patch(pt)).Name(name).SubResource(subresources...).
		VersionedParams(&opts, parameterCodec).Body(data).Do(ctx).Into(out)
	return out, err
}

// list reads one page of the resource into list (a *corev1.SecretList for
// "secrets").
func (r resource[T]) list(ctx context.Context, opts metav1.ListOptions, list runtime.Object) error {
	return r.on(r.rest.Get()).VersionedParams(&opts, parameterCodec).Timeout(timeoutOf(opts)).Do(ctx).Into(list)
}

// timeoutOf is the client-side timeout of a list or watch: its
// TimeoutSeconds, as the generated clients set it.
func timeoutOf(opts metav1.ListOptions) time.Duration {
	if opts.TimeoutSeconds == nil {
		return 0
	}
	return time.Duration(*opts.TimeoutSeconds) * time.Second
}
