package restart

import (
	"context"
	"encoding/json"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
)

var (
	podsGVR        = schema.GroupVersionResource{Version: "v1", Resource: "pods"}
	replicaSetsGVR = schema.GroupVersionResource{Group: "apps", Version: "v1", Resource: "replicasets"}
	// restartable are the workloads whose pod template the restart writes.
	restartable = map[string]schema.GroupVersionResource{
		"Deployment":  {Group: "apps", Version: "v1", Resource: "deployments"},
		"StatefulSet": {Group: "apps", Version: "v1", Resource: "statefulsets"},
		"DaemonSet":   {Group: "apps", Version: "v1", Resource: "daemonsets"},
	}
)

// ref is an object's controller: zero when it has none.
type ref struct {
	apiVersion, kind, name, uid string
}

// podInfo is what the restart needs of a pod: its controller and the
// restart value of the template it was made from ("" for none).
type podInfo struct {
	ctl   ref
	value string
}

func controllerRef(o metav1.Object) ref {
	if c := metav1.GetControllerOfNoCopy(o); c != nil {
		return ref{apiVersion: c.APIVersion, kind: c.Kind, name: c.Name, uid: string(c.UID)}
	}
	return ref{}
}

// run does one job (steps 3 to 7 of the package comment) and returns its
// result (metrics.go), resultRetrying when it waits to try again.
func (r *Restarter) run(ctx context.Context, j job) string {
	why := fmt.Sprintf("the content of SecretProviderClass %q changed", j.class)
	pod, result := r.podOf(ctx, j)
	if result != "" {
		return result
	}
	ctl := pod.ctl
	switch {
	case ctl == (ref{}):
		return r.evict(ctx, j, why)
	case ctl.apiVersion == "apps/v1" && ctl.kind == "ReplicaSet":
		owner, ok := r.ownerOfReplicaSet(ctx, j, ctl)
		if !ok {
			return resultFailed
		}
		if owner == (ref{}) {
			return r.evict(ctx, j, why) // its ReplicaSet replaces it
		}
		ctl = owner
	}
	if gvr, ok := restartable[ctl.kind]; ok && ctl.apiVersion == "apps/v1" {
		return r.rollout(ctx, j, gvr, ctl, pod.value, why)
	}
	if ctl.kind == "Job" {
		r.warn(j.pod, fmt.Sprintf("%s, but the pod belongs to Job %q, whose pods run to completion: not restarted", why, ctl.name))
		return resultSkipped
	}
	r.warn(j.pod, fmt.Sprintf("%s, but the pod's controller is a %s %s %q, which the driver does not restart (it restarts Deployments, StatefulSets and DaemonSets, and evicts pods without one)", why, ctl.apiVersion, ctl.kind, ctl.name))
	return resultSkipped
}

// podOf returns j's pod's controller and template value, or the job's
// result when there is nothing to do (the pod is gone, or being deleted, or
// could not be read: told).
func (r *Restarter) podOf(ctx context.Context, j job) (podInfo, string) {
	r.mu.Lock()
	c, ok := r.podCtl[j.pod.UID]
	r.mu.Unlock()
	if ok {
		return c, ""
	}
	pod, err := r.opts.Client.Resource(podsGVR).Namespace(j.pod.Namespace).Get(ctx, j.pod.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return podInfo{}, resultGone
	}
	if err != nil {
		r.warn(j.pod, fmt.Sprintf("The content of SecretProviderClass %q changed, but reading the pod's controller failed: %v", j.class, err))
		return podInfo{}, resultFailed
	}
	if string(pod.GetUID()) != j.pod.UID || pod.GetDeletionTimestamp() != nil {
		return podInfo{}, resultGone // another pod of that name, or this one is going
	}
	c = podInfo{ctl: controllerRef(pod), value: pod.GetAnnotations()[Annotation]}
	r.mu.Lock()
	remember(r.podCtl, j.pod.UID, c)
	r.mu.Unlock()
	return c, ""
}

// ownerOfReplicaSet returns rs's controller (zero: none).
func (r *Restarter) ownerOfReplicaSet(ctx context.Context, j job, rs ref) (ref, bool) {
	r.mu.Lock()
	c, ok := r.rsOwner[rs.uid]
	r.mu.Unlock()
	if ok {
		return c, true
	}
	obj, err := r.opts.Client.Resource(replicaSetsGVR).Namespace(j.pod.Namespace).Get(ctx, rs.name, metav1.GetOptions{})
	if err == nil && string(obj.GetUID()) != rs.uid {
		err = apierrors.NewNotFound(replicaSetsGVR.GroupResource(), rs.name) // replaced
	}
	if err != nil {
		r.warn(j.pod, fmt.Sprintf("The content of SecretProviderClass %q changed, but reading the pod's ReplicaSet %q failed: %v", j.class, rs.name, err))
		return ref{}, false
	}
	c = controllerRef(obj)
	r.mu.Lock()
	remember(r.rsOwner, rs.uid, c)
	r.mu.Unlock()
	return c, true
}

// rollout writes the restart value into w's pod template unless it is
// there already, or the template changed it since the pod was made from
// it, whose value was podValue (step 4).
func (r *Restarter) rollout(ctx context.Context, j job, gvr schema.GroupVersionResource, w ref, podValue, why string) string {
	value := r.value(j.sum)
	key := w.kind + "/" + j.pod.Namespace + "/" + w.name + "/" + w.uid
	r.mu.Lock()
	seen := r.written[key] == value
	r.mu.Unlock()
	if seen {
		return resultCarried
	}
	client := r.opts.Client.Resource(gvr).Namespace(j.pod.Namespace)
	obj, err := client.Get(ctx, w.name, metav1.GetOptions{})
	if err == nil && string(obj.GetUID()) != w.uid {
		err = apierrors.NewNotFound(gvr.GroupResource(), w.name) // replaced
	}
	if err != nil {
		r.warn(j.pod, fmt.Sprintf("%s, but reading the pod's %s %q failed: %v", why, w.kind, w.name, err))
		return resultFailed
	}
	current, _, _ := unstructured.NestedString(obj.Object, "spec", "template", "metadata", "annotations", Annotation)
	if current != value && current != podValue {
		// Restarted since the pod was made: its rollout replaces the pod.
		r.log.Debug("restart on change: the workload was restarted since the pod was made", "namespace", j.pod.Namespace, "pod", j.pod.Name, "kind", w.kind, "name", w.name)
		return resultCarried
	}
	result := resultCarried
	if current != value {
		patch, _ := json.Marshal(map[string]any{
			"metadata": map[string]any{"uid": w.uid}, // the workload read above, not a namesake
			"spec": map[string]any{"template": map[string]any{"metadata": map[string]any{
				"annotations": map[string]string{Annotation: value}}}},
		})
		if _, err := client.Patch(ctx, w.name, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: r.opts.FieldManager}); err != nil {
			r.warn(j.pod, fmt.Sprintf("%s, but restarting the pod's %s %q failed: %v", why, w.kind, w.name, err))
			return resultFailed
		}
		r.normal(j.pod, fmt.Sprintf("Rolling restart of %s %q: %s (pod template annotation %s=%s)", w.kind, w.name, why, Annotation, value))
		result = resultRolledOut
	}
	r.mu.Lock()
	remember(r.written, key, value)
	r.mu.Unlock()
	return result
}

// value returns Value(sum), computed once per digest on this node.
func (r *Restarter) value(sum [32]byte) string {
	k := string(sum[:])
	r.mu.Lock()
	v, ok := r.values[k]
	r.mu.Unlock()
	if ok {
		return v
	}
	v = Value(sum)
	r.mu.Lock()
	remember(r.values, k, v)
	r.mu.Unlock()
	return v
}

// evict evicts j's pod through the Eviction API. A refusal by a
// disruption budget is tried again later, a bounded number of times
// (step 5).
func (r *Restarter) evict(ctx context.Context, j job, why string) string {
	eviction := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "policy/v1", "kind": "Eviction",
		"metadata": map[string]any{"name": j.pod.Name, "namespace": j.pod.Namespace},
		// Only this pod, not a namesake created since.
		"deleteOptions": map[string]any{"preconditions": map[string]any{"uid": j.pod.UID}},
	}}
	_, err := r.opts.Client.Resource(podsGVR).Namespace(j.pod.Namespace).Create(ctx, eviction, metav1.CreateOptions{}, "eviction")
	switch {
	case err == nil:
		r.normal(j.pod, fmt.Sprintf("Evicted the pod (it has no controller to restart, or only a ReplicaSet): %s", why))
		return resultEvicted
	case apierrors.IsNotFound(err) || apierrors.IsConflict(err):
		return resultGone // gone already
	case apierrors.IsTooManyRequests(err) && j.attempt+1 < r.opts.EvictionRetries:
		if r.retryLater(j) {
			return resultRetrying
		}
		return resultSuperseded
	default:
		r.warn(j.pod, fmt.Sprintf("%s, but evicting the pod failed (after the attempts a disruption budget allows): %v", why, err))
		return resultFailed
	}
}
