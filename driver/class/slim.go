package class

import (
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"sync"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
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
//  4. and only while all kept specs together stay within maxKeptTotal
//     bytes (the keeper below): many small classes cannot add up to the
//     driver's memory limit either; beyond it, classes are read as in 3.
//
// A class then costs the informer its metadata, and the number of classes
// is what an admin bounds with a ResourceQuota
// (count/secretproviderclasses.secrets-store.csi.x-k8s.io).

const (
	maxKeptSpec       = 16 << 10
	maxKeptTotal      = 4 << 20
	maxKeptAnnotation = 80
	// notKeptField marks a slimmed class whose spec was left out. It is no
	// field of the API (the API server prunes unknown top-level fields),
	// and slim keeps it, so slimming twice changes nothing.
	notKeptField = "secretfs.dev/specNotKept"
)

// keeper holds the sizes of the specs the informer keeps, by
// namespace/name, so that together they stay within limit. The transform
// (slim) charges a class when it is stored, replacing what the same class
// was charged before; the informer's delete handler (forget) frees it.
type keeper struct {
	mu     sync.Mutex
	limit  int
	total  int
	sizes  map[string]charge
	warned bool
}

// A charge is the bytes kept of one class, and which class (a class
// deleted and created again under its name is another uid: the late
// delete of the first must not free the second's charge).
type charge struct {
	uid  types.UID
	size int
}

func newKeeper(limit int) *keeper { return &keeper{limit: limit, sizes: map[string]charge{}} }

// keep charges size bytes for the class key (uid) and reports whether
// they fit, replacing the key's earlier charge; a class that does not fit
// keeps no charge.
func (k *keeper) keep(key string, uid types.UID, size int) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	old := k.sizes[key].size
	if k.total-old+size > k.limit {
		k.total -= old
		delete(k.sizes, key)
		if !k.warned {
			k.warned = true
			slog.Warn("the class informer keeps no more specs: the classes of the cluster together exceed its limit; classes beyond it are read with one GET at each publish and refresh (bound the number of classes with a ResourceQuota)", "limit_bytes", k.limit)
		}
		return false
	}
	k.total += size - old
	k.sizes[key] = charge{uid: uid, size: size}
	return true
}

// forget frees what the class key was charged, if it is the class uid.
func (k *keeper) forget(key string, uid types.UID) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if c, ok := k.sizes[key]; ok && c.uid == uid {
		k.total -= c.size
		delete(k.sizes, key)
	}
}

// kept is the bytes charged now.
func (k *keeper) kept() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.total
}

// slim is the informer's transform (see above); it leaves anything that is
// not an *unstructured.Unstructured (a deletion tombstone) as it is.
func (k *keeper) slim(obj any) (any, error) {
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return obj, nil
	}
	key := u.GetNamespace() + "/" + u.GetName()
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
	size := 0
	if hasSpec {
		size = sizeOf(spec, maxKeptSpec)
	}
	switch {
	case u.Object[notKeptField] == true || size > maxKeptSpec || !k.keep(key, u.GetUID(), size):
		k.forget(key, u.GetUID())
		out.Object[notKeptField] = true
	case hasSpec:
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
