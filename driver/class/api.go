package class

import (
	"context"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	"github.com/secretfs/secretfs/provider"
	"google.golang.org/grpc/codes"
)

// GVR is the resource the API source watches.
var GVR = schema.GroupVersionResource{Group: Group, Version: Version, Resource: Resource}

// resync only refreshes the informer's view; changes arrive by watch.
const resync = 10 * time.Minute

// syncWait bounds how long NewAPI waits for the first list, so a
// slow or missing API server delays start-up but never blocks it.
const syncWait = 10 * time.Second

// NewAPI returns a Source backed by a dynamic informer on
// SecretProviderClasses: a publish reads the local cache, not the API server.
// A class missing from the cache (just created, or the cache not synced yet)
// is fetched with one direct GET. The informer stops when ctx is done.
func NewAPI(ctx context.Context, cfg *rest.Config) (Source, error) {
	client, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("creating Kubernetes client: %w", err)
	}
	return newAPISource(ctx, client), nil
}

func newAPISource(ctx context.Context, client dynamic.Interface) *apiSource {
	// The informer is built from a ListWatch, not dynamicinformer's
	// factory: that package imports client-go's typed informers for every
	// built-in API group, which would add ~10 MB of code to the binary (and
	// to its resident pages) for one resource.
	res := client.Resource(GVR)
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error) {
			return res.List(ctx, opts)
		},
		WatchFuncWithContext: func(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
			return res.Watch(ctx, opts)
		},
	}
	informer := cache.NewSharedIndexInformerWithOptions(cache.ToListWatcherWithWatchListSemantics(lw, client), &unstructured.Unstructured{},
		cache.SharedIndexInformerOptions{
			ResyncPeriod:      resync,
			Indexers:          cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc},
			ObjectDescription: GVR.String(),
		})
	kept := newKeeper(maxKeptTotal)
	if err := informer.SetTransform(kept.slim); err != nil {
		panic(err) // only when the informer has started
	}
	if _, err := informer.AddEventHandler(cache.ResourceEventHandlerFuncs{DeleteFunc: func(obj any) {
		if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = tomb.Obj
		}
		if u, ok := obj.(*unstructured.Unstructured); ok {
			kept.forget(u.GetNamespace()+"/"+u.GetName(), u.GetUID())
		}
	}}); err != nil {
		panic(err) // only when the informer has stopped
	}
	s := &apiSource{client: client, informer: informer, lister: cache.NewGenericLister(informer.GetIndexer(), GVR.GroupResource()), kept: kept}
	go informer.RunWithContext(ctx)
	waitCtx, cancel := context.WithTimeout(ctx, syncWait)
	defer cancel()
	cache.WaitForCacheSync(waitCtx.Done(), s.informer.HasSynced)
	return s
}

type apiSource struct {
	client   dynamic.Interface
	informer cache.SharedIndexInformer
	lister   cache.GenericLister
	kept     *keeper
}

func (s *apiSource) Get(ctx context.Context, namespace, name string) (*Class, error) {
	obj, err := s.lister.ByNamespace(namespace).Get(name)
	if err != nil && !apierrors.IsNotFound(err) {
		return nil, provider.Unavailable("reading SecretProviderClass cache: %v", err)
	}
	if err != nil || specNotKept(obj) {
		obj, err = s.client.Resource(GVR).Namespace(namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return nil, apiError(namespace, name, err)
		}
	}
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return nil, provider.Errorf(codes.Internal, "unexpected object type %T in SecretProviderClass cache", obj)
	}
	var o object
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &o); err != nil {
		return nil, provider.InvalidArgument("SecretProviderClass %q in namespace %q is malformed: %v", name, namespace, err)
	}
	c := o.class()
	c.Namespace = namespace
	if spec, ok := u.Object["spec"].(map[string]any); ok {
		c.Unknown = unknownFields(spec)
	}
	if err := c.check(); err != nil {
		return nil, err
	}
	return c, nil
}

func apiError(namespace, name string, err error) error {
	switch {
	case apierrors.IsNotFound(err):
		return notFound(namespace, name, "")
	case apierrors.IsForbidden(err):
		return provider.PermissionDenied("the driver may not read SecretProviderClass %q in namespace %q: grant its service account get/list/watch on %s.%s", name, namespace, Resource, Group)
	case apierrors.IsTimeout(err), apierrors.IsServerTimeout(err), apierrors.IsTooManyRequests(err):
		return provider.Unavailable("reading SecretProviderClass %q in namespace %q: the API server is busy: %v", name, namespace, err)
	}
	if code := provider.CodeOf(err); code == codes.Canceled || code == codes.DeadlineExceeded {
		return provider.Errorf(code, "reading SecretProviderClass %q in namespace %q: %v", name, namespace, err)
	}
	return provider.Unavailable("reading SecretProviderClass %q in namespace %q: %v", name, namespace, err)
}

// RefreshAnnotation on a SecretProviderClass asks every node to refresh the
// class's mounted volumes now: each change to a new non-empty value is one
// request (any value: a timestamp is customary).
const RefreshAnnotation = Prefix + "refresh-requested"

// OnRefreshRequested calls f with a class's namespace and name each time
// its RefreshAnnotation changes to a new non-empty value. f must not block.
func (s *apiSource) OnRefreshRequested(f func(namespace, name string)) error {
	_, err := s.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		UpdateFunc: func(oldObj, newObj any) {
			o, ok1 := oldObj.(*unstructured.Unstructured)
			n, ok2 := newObj.(*unstructured.Unstructured)
			if !ok1 || !ok2 {
				return
			}
			v := n.GetAnnotations()[RefreshAnnotation]
			if v != "" && v != o.GetAnnotations()[RefreshAnnotation] {
				f(n.GetNamespace(), n.GetName())
			}
		},
	})
	return err
}
