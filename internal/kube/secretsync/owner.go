package secretsync

// Who owns a synced Secret. The Secrets Store CSI Driver makes the pod's
// controller the owner (the ReplicaSet, StatefulSet, DaemonSet or Job),
// and the pod itself when it has none; the sync does the same by default
// (OwnerController), so the garbage collector deletes the Secret with the
// last of those controllers, and a Deployment of N replicas costs one
// owner per ReplicaSet, not N. OwnerPod makes every pod an owner instead:
// the Secret goes with the last pod that uses it, at the price of one
// owner (and one patch) per pod.
//
// The controller is read from the pod: one GET per volume, on the first
// publish of a volume whose class syncs Secrets, remembered until the
// volume is gone (a pod's controller reference never changes to another
// object while the pod lives). Pods are created by tenants, so this is
// bounded by what kubelet publishes on this node, and nothing else of the
// pod is kept.

import (
	"context"
	"fmt"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/secretfs/secretfs/driver/hook"
)

// OwnerMode says which object owns a synced Secret.
type OwnerMode string

const (
	// OwnerController: the pod's controller, the pod when it has none.
	OwnerController OwnerMode = "controller"
	// OwnerPod: every pod that uses the Secret.
	OwnerPod OwnerMode = "pod"
)

// OwnerFlag is the driver flag that sets Options.Owner.
const OwnerFlag = "--sync-owner"

// ParseOwnerMode parses the value of OwnerFlag.
func ParseOwnerMode(s string) (OwnerMode, error) {
	switch m := OwnerMode(s); m {
	case OwnerController, OwnerPod:
		return m, nil
	}
	return "", fmt.Errorf("%s=%q: want %q or %q", OwnerFlag, s, OwnerController, OwnerPod)
}

// ReasonOwner: the pod's controller could not be read; the pod owns the
// Secret for now.
const ReasonOwner = "SecretSyncOwner"

func podRef(v hook.Volume) metav1.OwnerReference {
	return metav1.OwnerReference{APIVersion: "v1", Kind: "Pod", Name: v.Pod.Name, UID: types.UID(v.Pod.UID)}
}

// ownerOf returns the owner of the Secrets v syncs (see the file comment).
// A failed read is a Warning Event on the pod and makes the pod the owner
// for this write, so the Secret exists and is collected; the read is tried
// again on the volume's next change.
func (s *Syncer) ownerOf(ctx context.Context, v hook.Volume) metav1.OwnerReference {
	if s.owner == OwnerPod {
		return podRef(v)
	}
	s.mu.Lock()
	ref, ok := s.volOwner[v.ID]
	s.mu.Unlock()
	if ok && ref.pod == v.Pod.UID {
		return ref.ref
	}
	ctx, cancel := context.WithTimeout(ctx, min(s.wait, 10*time.Second))
	defer cancel()
	pod, err := s.pods.Pods(v.Pod.Namespace).Get(ctx, v.Pod.Name, metav1.GetOptions{})
	s.count("get-pod", err)
	if err != nil {
		s.warn(v.Pod, ReasonOwner, fmt.Sprintf("Reading the pod's controller failed (the pod owns its synced Secrets until the next change of its volume): %v", err))
		return podRef(v)
	}
	if string(pod.UID) != v.Pod.UID {
		// Another pod of that name now: this one is gone, and owns what
		// it syncs until the garbage collector sees it.
		return podRef(v)
	}
	out := podRef(v)
	if c := metav1.GetControllerOfNoCopy(pod); c != nil {
		out = metav1.OwnerReference{APIVersion: c.APIVersion, Kind: c.Kind, Name: c.Name, UID: c.UID}
	}
	s.mu.Lock()
	if _, used := s.vols[v.ID]; used { // not gone meanwhile
		s.volOwner[v.ID] = volOwner{pod: v.Pod.UID, ref: out}
	}
	s.mu.Unlock()
	return out
}

type volOwner struct {
	pod string
	ref metav1.OwnerReference
}
