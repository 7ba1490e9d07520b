// Package podstatus writes a SecretProviderClassPodStatus per pod volume,
// the object the Secrets Store CSI Driver keeps (same group, version, kind
// and schema; its name with a suffix that makes it unambiguous, see Name), so `kubectl get secretproviderclasspodstatus` and the
// scripts built on it keep working: which pod mounts which class where, and
// which object versions it holds.
//
// Writes never happen on the publish path: Changed and Gone only queue. One
// worker sends the queue through a rate limiter (so it can never throttle
// publishes, unlike a client shared with them), coalescing by object: a
// volume that changes twice before its turn is written once. An object is
// written with a server-side apply (one request, create or update) and
// deleted on unpublish, with the uid and resourceVersion the node's last
// apply got back as preconditions: a pod that moved keeps the object its new
// node wrote (an apply by the same field manager updates the object in
// place, so the uid alone would not tell them apart) when the old node's
// unpublish comes late. A node deletes only an object it wrote for the same
// pod (uid) since it started, so a pod recreated under its name on the
// same node is safe too; and an unpublish does not replace a queued apply
// of a newer pod of that name. Its owner is the pod, so the garbage collector
// removes it whenever the driver does not.
package podstatus

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/dynamic"

	"github.com/secretfs/secretfs/driver/hook"
)

// GVR of SecretProviderClassPodStatus.
var GVR = schema.GroupVersionResource{Group: "secrets-store.csi.x-k8s.io", Version: "v1", Resource: "secretproviderclasspodstatuses"}

// NodeLabel is the label the Secrets Store CSI Driver puts on the object:
// the node the volume is on.
const NodeLabel = "internal.secrets-store.csi.k8s.io/node-name"

// Name is the object's name for a pod's volume of a class: the Secrets
// Store CSI Driver's <pod>-<namespace>-<class>, then "-" and a hash of the
// exact triple (hashLen hex digits of SHA-256 over the three, each with its
// length). SSCD's form alone is ambiguous: pod "a-x-b" with class "c" and
// pod "a" with class "b-x-c" in namespace "x" share "a-x-b-x-c", so one
// volume's object was the other's, and it can exceed the 253 characters
// of a name. The readable part is cut to fit (and to end in an
// alphanumeric); the suffix keeps every triple's name its own. Tools that
// list the objects, or select by the node label or status.podName, see
// them as before; a tool that computes SSCD's name and gets it finds none.
func Name(pod, namespace, class string) string {
	h := sha256.New()
	for _, s := range []string{pod, namespace, class} {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(s)))
		h.Write(n[:])
		h.Write([]byte(s))
	}
	suffix := hex.EncodeToString(h.Sum(nil))[:hashLen]
	readable := pod + "-" + namespace + "-" + class
	if limit := validation.DNS1123SubdomainMaxLength - 1 - hashLen; len(readable) > limit {
		readable = readable[:limit]
	}
	readable = strings.TrimRight(readable, "-.")
	if readable == "" {
		return suffix
	}
	return readable + "-" + suffix
}

// hashLen is the length of Name's suffix: 40 bits, so that names of the
// objects of one namespace do not collide by chance.
const hashLen = 10

// Options configure a Writer.
type Options struct {
	Client dynamic.Interface
	Node   string
	// QPS and Burst limit the writer's requests (defaults 5 and 10).
	QPS        float64
	Burst      int
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	// FieldManager names the driver in managedFields (default "secretfs").
	FieldManager string
}

// Writer is a hook.Hook; run it with Run.
type Writer struct {
	client  dynamic.Interface
	node    string
	limiter *rate.Limiter
	log     *slog.Logger
	manager string
	writes  *prometheus.CounterVec

	mu      sync.Mutex
	pending map[key]*op // the newest wanted state per object
	queue   []key       // objects with a pending op, in arrival order
	wake    chan struct{}
	// written: the uid and resourceVersion of each object as this node's
	// last apply left it, the preconditions of its delete.
	written map[key]written
}

var _ hook.Hook = (*Writer)(nil)

type key struct{ ns, name string }

// op is an apply (obj set) or a delete.
type op struct {
	obj map[string]any
	// pod is the uid of the pod whose volume asked for the op.
	pod     string
	retries int
}

// written is what this node's last apply of an object got back, and for
// which pod: a delete is sent only for that pod, with these preconditions.
type written struct {
	pre metav1.Preconditions
	pod string
}

// New returns a Writer; nothing is sent until Run.
func New(opts Options) (*Writer, error) {
	if opts.QPS <= 0 {
		opts.QPS = 5
	}
	if opts.Burst <= 0 {
		opts.Burst = 10
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.FieldManager == "" {
		opts.FieldManager = "secretfs"
	}
	w := &Writer{
		client: opts.Client, node: opts.Node, limiter: rate.NewLimiter(rate.Limit(opts.QPS), opts.Burst),
		log: opts.Logger, manager: opts.FieldManager,
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "secretfs", Name: "pod_status_writes_total",
			Help: "SecretProviderClassPodStatus requests by operation (apply, delete) and result (ok, the API error reason, or skipped: a delete of an object this node has not written since it started, left to the garbage collector).",
		}, []string{"operation", "result"}),
		pending: map[key]*op{}, wake: make(chan struct{}, 1), written: map[key]written{},
	}
	if opts.Registerer != nil {
		if err := opts.Registerer.Register(w.writes); err != nil {
			return nil, err
		}
	}
	return w, nil
}

// Changed queues the volume's status object.
func (w *Writer) Changed(_ context.Context, v hook.Volume) {
	if v.Class == nil || v.Pod.Name == "" || v.Pod.UID == "" {
		return
	}
	name := Name(v.Pod.Name, v.Pod.Namespace, v.Class.Name)
	if len(validation.IsDNS1123Subdomain(name)) > 0 {
		w.log.Warn("no SecretProviderClassPodStatus: its name would not be a valid object name", "namespace", v.Pod.Namespace, "pod", v.Pod.Name, "class", v.Class.Name)
		return
	}
	objects := make([]any, 0, len(v.Versions))
	for _, o := range v.Versions {
		objects = append(objects, map[string]any{"id": o.ID, "version": o.Version})
	}
	obj := map[string]any{
		"apiVersion": GVR.GroupVersion().String(),
		"kind":       "SecretProviderClassPodStatus",
		"metadata": map[string]any{
			"name": name, "namespace": v.Pod.Namespace,
			"labels": map[string]any{NodeLabel: w.node},
			"ownerReferences": []any{map[string]any{
				"apiVersion": "v1", "kind": "Pod", "name": v.Pod.Name, "uid": v.Pod.UID,
			}},
		},
		"status": map[string]any{
			"podName": v.Pod.Name, "secretProviderClassName": v.Class.Name, "mounted": true,
			"targetPath": v.Target, "objects": objects,
		},
	}
	w.enqueue(key{v.Pod.Namespace, name}, &op{obj: obj, pod: v.Pod.UID})
}

// Gone queues the deletion of the volume's status object.
func (w *Writer) Gone(v hook.Volume) {
	if v.Class == nil || v.Pod.Name == "" {
		return
	}
	k := key{v.Pod.Namespace, Name(v.Pod.Name, v.Pod.Namespace, v.Class.Name)}
	w.mu.Lock()
	if p := w.pending[k]; p != nil && p.obj != nil && p.pod != v.Pod.UID {
		// A newer pod of the same name (recreated on this node) has its
		// apply queued: it overwrites the object; deleting would drop it.
		w.mu.Unlock()
		return
	}
	w.mu.Unlock()
	w.enqueue(k, &op{pod: v.Pod.UID})
}

func (w *Writer) enqueue(k key, o *op) {
	w.mu.Lock()
	if _, queued := w.pending[k]; !queued {
		w.queue = append(w.queue, k)
	}
	w.pending[k] = o
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// Run sends queued writes until ctx ends.
func (w *Writer) Run(ctx context.Context) {
	for {
		w.mu.Lock()
		if len(w.queue) == 0 {
			w.mu.Unlock()
			select {
			case <-w.wake:
				continue
			case <-ctx.Done():
				return
			}
		}
		k := w.queue[0]
		w.queue = w.queue[1:]
		o := w.pending[k]
		delete(w.pending, k)
		w.mu.Unlock()
		if err := w.limiter.Wait(ctx); err != nil {
			return
		}
		if err := w.do(ctx, k, o); err != nil {
			w.log.Warn("writing SecretProviderClassPodStatus failed; retrying", "namespace", k.ns, "name", k.name, "err", err.Error())
			o.retries++
			delay := min(time.Second<<min(o.retries, 8), 5*time.Minute)
			time.AfterFunc(delay, func() {
				w.mu.Lock()
				_, newer := w.pending[k]
				w.mu.Unlock()
				if !newer {
					w.enqueue(k, o)
				}
			})
		}
	}
}

func (w *Writer) do(ctx context.Context, k key, o *op) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	res := w.client.Resource(GVR).Namespace(k.ns)
	var err error
	operation := "apply"
	if o.obj == nil {
		operation = "delete"
		w.mu.Lock()
		rec, known := w.written[k]
		w.mu.Unlock()
		if !known || rec.pod != o.pod {
			// Not written for this pod by this node since it started (or its
			// apply never succeeded, or a newer pod of the same name on this
			// node wrote it since): whatever object has the name now is not
			// known to be this volume's, so it is left to the garbage
			// collector, which deletes it with its pod.
			w.writes.WithLabelValues(operation, "skipped").Inc()
			return nil
		}
		pre := rec.pre
		err = res.Delete(ctx, k.name, metav1.DeleteOptions{Preconditions: &pre})
		if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
			// Gone already, or no longer the object this node wrote: a
			// newer pod's volume (on this or another node) wrote it since.
			err = nil
		}
		if err == nil {
			w.mu.Lock()
			if w.written[k] == rec {
				delete(w.written, k)
			}
			w.mu.Unlock()
		}
	} else {
		var body []byte
		if body, err = json.Marshal(o.obj); err != nil {
			return err
		}
		force := true
		var obj *unstructured.Unstructured
		obj, err = res.Patch(ctx, k.name, types.ApplyPatchType, body, metav1.PatchOptions{FieldManager: w.manager, Force: &force})
		if err == nil {
			uid, rv := obj.GetUID(), obj.GetResourceVersion()
			w.mu.Lock()
			w.written[k] = written{pre: metav1.Preconditions{UID: &uid, ResourceVersion: &rv}, pod: o.pod}
			w.mu.Unlock()
		}
	}
	result := "ok"
	if err != nil {
		result = string(apierrors.ReasonForError(err))
		if result == "" {
			result = "error"
		}
	}
	w.writes.WithLabelValues(operation, result).Inc()
	if err != nil {
		return fmt.Errorf("%s: %w", operation, err)
	}
	return nil
}
