package class

import (
	"crypto/sha256"
	"encoding/hex"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
)

// What the class informer keeps of each SecretProviderClass. Every node's
// driver watches the classes of every namespace, and any tenant may write
// many of them, each up to the API server's object limit (about 1.5 MiB:
// 256 KiB of annotations, the rest spec): kept whole, a few dozen such
// classes exceed the driver's memory limit on every node. So the informer
// keeps only what the driver acts on:
//
//  1. name, namespace, uid and resourceVersion of the metadata; no labels,
//     no managedFields, no other annotation;
//  2. the refresh annotation as it is up to maxKeptAnnotation bytes, else
//     as the digest "sha256:<hex>" (71 bytes), so a change is still a
//     change and the value's size costs nothing;
//  3. the spec when it is at most maxKeptSpec bytes; else no spec, and the
//     field notKeptField, so Get reads such a class with one GET each time
//     (a publish or a refresh of it), as it reads a class the cache has not
//     seen yet.
//
// A class then costs the informer at most about maxKeptSpec bytes, and the
// number of classes is what an admin bounds with a ResourceQuota
// (count/secretproviderclasses.secrets-store.csi.x-k8s.io).

const (
	maxKeptSpec       = 16 << 10
	maxKeptAnnotation = 80
	// notKeptField marks a slimmed class whose spec was left out. It is no
	// field of the API (the API server prunes unknown top-level fields),
	// and slim keeps it, so slimming twice changes nothing.
	notKeptField = "secretfs.dev/specNotKept"
)

// slim is the informer's transform (see above); it leaves anything that is
// not an *unstructured.Unstructured (a deletion tombstone) as it is.
func slim(obj any) (any, error) {
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return obj, nil
	}
	out := &unstructured.Unstructured{Object: map[string]any{}}
	out.SetAPIVersion(u.GetAPIVersion())
	out.SetKind(u.GetKind())
	out.SetName(u.GetName())
	out.SetNamespace(u.GetNamespace())
	out.SetUID(u.GetUID())
	out.SetResourceVersion(u.GetResourceVersion())
	if v := u.GetAnnotations()[RefreshAnnotation]; v != "" {
		if len(v) > maxKeptAnnotation {
			sum := sha256.Sum256([]byte(v))
			v = "sha256:" + hex.EncodeToString(sum[:])
		}
		out.SetAnnotations(map[string]string{RefreshAnnotation: v})
	}
	spec, hasSpec := u.Object["spec"]
	if u.Object[notKeptField] == true || (hasSpec && sizeOf(spec, maxKeptSpec) > maxKeptSpec) {
		out.Object[notKeptField] = true
	} else if hasSpec {
		out.Object["spec"] = spec
	}
	return out, nil
}

// specNotKept reports whether slim left out obj's spec.
func specNotKept(obj runtime.Object) bool {
	u, ok := obj.(*unstructured.Unstructured)
	return ok && u.Object[notKeptField] == true
}

// sizeOf is about the bytes v takes as JSON (strings and keys by length,
// 8 for anything else), counted only until it passes limit.
func sizeOf(v any, limit int) int {
	n := 0
	var walk func(any)
	walk = func(v any) {
		if n > limit {
			return
		}
		switch v := v.(type) {
		case string:
			n += len(v) + 2
		case map[string]any:
			for k, e := range v {
				n += len(k) + 3
				walk(e)
			}
		case []any:
			for _, e := range v {
				n++
				walk(e)
			}
		default:
			n += 8
		}
	}
	walk(v)
	return n
}
