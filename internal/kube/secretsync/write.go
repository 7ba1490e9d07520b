package secretsync

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// conflictError: the Secret exists and the driver must not write it.
type conflictError struct{ msg string }

func (e *conflictError) Error() string { return e.msg }

// errReplaced: the Secret the node knew is gone or is another object now.
var errReplaced = errors.New("the Secret was deleted or replaced")

// write makes the Secret k hold d, with every pod in owners among its
// owners, in as few requests as it can (see the package comment for why
// each count is what it is), and never reads a Secret (the sync's RBAC has
// no get):
//
//  1. The node knows the Secret (uid from its last response): one strategic
//     merge patch. The patch carries the uid, which the API server refuses
//     to change, so it can only ever land on the very object the node
//     created or checked for the managed label; owners merge by uid on the
//     server, so concurrent patches from other nodes lose nothing.
//  2. It does not (first sync on this node, or step 1 found it deleted or
//     replaced): one create, with every owner.
//  3. The create finds it exists: a JSON patch of test operations only,
//     which the API server applies to the object it holds: the managed
//     label must be "true" and the type d's, else the patch fails and
//     nothing of the Secret comes back (a conflict; see check). It changes
//     nothing, so nothing is stored; it answers the uid and owners. Then
//     the patch of step 1 with the owners missing from them.
func (s *Syncer) write(ctx context.Context, k key, uid types.UID, d *desired, owners, adds []metav1.OwnerReference) (*corev1.Secret, error) {
	if uid != "" {
		sec, err := s.patch(ctx, k, uid, d, adds)
		if !errors.Is(err, errReplaced) {
			return sec, err
		}
	}
	sec, err := s.create(ctx, k, d, owners)
	if !apierrors.IsAlreadyExists(err) {
		return sec, err
	}
	cur, err := s.check(ctx, k, d)
	if err != nil {
		return nil, err
	}
	known := map[types.UID]bool{}
	for _, o := range cur.OwnerReferences {
		known[o.UID] = true
	}
	var missing []metav1.OwnerReference
	for _, o := range owners {
		if !known[o.UID] {
			missing = append(missing, o)
		}
	}
	sec, err = s.patch(ctx, k, cur.UID, d, missing)
	if errors.Is(err, errReplaced) {
		return nil, fmt.Errorf("the Secret %q was replaced while the driver updated it; retrying", k.name)
	}
	return sec, err
}

// managedPath is ManagedLabel as a JSON pointer (RFC 6901: "/" is "~1").
var managedPath = "/metadata/labels/" + strings.ReplaceAll(strings.ReplaceAll(ManagedLabel, "~", "~0"), "/", "~1")

// check is step 3 of write: the Secret k exists; it is the driver's to
// write only if it carries the managed label and has d's type. The test
// operations are evaluated by the API server on the stored object, before
// admission; when one fails the server answers 422 without saying which
// (and without any of the Secret), so a second patch, testing the label
// alone, tells an unmanaged Secret from one of another type: one more
// request, on the conflict path only.
func (s *Syncer) check(ctx context.Context, k key, d *desired) (*corev1.Secret, error) {
	label := map[string]any{"op": "test", "path": managedPath, "value": "true"}
	cur, err := s.testPatch(ctx, k, label, map[string]any{"op": "test", "path": "/type", "value": string(d.typ)})
	switch {
	case err == nil:
		return cur, nil
	case apierrors.IsNotFound(err):
		return nil, fmt.Errorf("the Secret %q was deleted while the driver created it; retrying", k.name)
	case !testFailed(err):
		return nil, err
	}
	_, err = s.testPatch(ctx, k, label)
	switch {
	case testFailed(err):
		return nil, &conflictError{fmt.Sprintf("Secret %q already exists in namespace %q without the label %s=true: the driver never overwrites or adopts a Secret it does not manage; delete it or rename secretName in the class", k.name, k.ns, ManagedLabel)}
	case err == nil:
		return nil, &conflictError{fmt.Sprintf("Secret %q in namespace %q is not of type %q, which the class asks for; the type of a Secret cannot change: delete the Secret (pods that use it recreate it)", k.name, k.ns, d.typ)}
	}
	return nil, err
}

// testPatch sends a JSON patch of test operations only: it changes
// nothing, so nothing is stored, and answers the Secret when every test
// holds.
func (s *Syncer) testPatch(ctx context.Context, k key, ops ...map[string]any) (*corev1.Secret, error) {
	body, err := json.Marshal(ops)
	if err != nil {
		return nil, err
	}
	sec, err := s.client.Secrets(k.ns).Patch(ctx, k.name, types.JSONPatchType, body, metav1.PatchOptions{FieldManager: s.fieldManager})
	s.count("patch", err)
	return sec, err
}

// testFailed reports whether err is the API server's answer to a JSON
// patch whose test operation failed: 422 Invalid with no causes, which an
// admission refusal (a ValidatingAdmissionPolicy's "... denied request")
// or a validation error of the object never is.
func testFailed(err error) bool {
	var status apierrors.APIStatus
	if err == nil || !errors.As(err, &status) {
		return false
	}
	st := status.Status()
	return st.Code == http.StatusUnprocessableEntity && st.Reason == metav1.StatusReasonInvalid &&
		(st.Details == nil || len(st.Details.Causes) == 0) && !strings.Contains(st.Message, "denied")
}

func (s *Syncer) create(ctx context.Context, k key, d *desired, owners []metav1.OwnerReference) (*corev1.Secret, error) {
	sec, err := s.client.Secrets(k.ns).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Name: k.name, Namespace: k.ns, Labels: d.labels, Annotations: d.annotations, OwnerReferences: owners,
		},
		Type: d.typ,
		Data: d.data,
	}, metav1.CreateOptions{FieldManager: s.fieldManager})
	s.count("create", err)
	return sec, err
}

// patch is a strategic merge patch: labels and annotations merge (keys
// others added stay), owners merge by uid, data is replaced as a whole (a
// key the class no longer lists goes).
func (s *Syncer) patch(ctx context.Context, k key, uid types.UID, d *desired, adds []metav1.OwnerReference) (*corev1.Secret, error) {
	data := make(map[string]any, len(d.data)+1)
	data["$patch"] = "replace"
	for key, v := range d.data {
		data[key] = v // []byte: base64 in JSON
	}
	meta := map[string]any{"uid": uid, "labels": d.labels}
	if len(d.annotations) > 0 {
		meta["annotations"] = d.annotations
	}
	if len(adds) > 0 {
		meta["ownerReferences"] = adds
	}
	body, err := json.Marshal(map[string]any{"metadata": meta, "data": data})
	if err != nil {
		return nil, err
	}
	sec, err := s.client.Secrets(k.ns).Patch(ctx, k.name, types.StrategicMergePatchType, body, metav1.PatchOptions{FieldManager: s.fieldManager})
	clear(body)
	s.count("patch", err)
	switch {
	case apierrors.IsNotFound(err):
		return nil, errReplaced
	case apierrors.IsInvalid(err) && strings.Contains(err.Error(), "metadata.uid"):
		return nil, errReplaced
	case apierrors.IsConflict(err) && strings.Contains(err.Error(), "UID"):
		return nil, errReplaced
	}
	return sec, err
}

func (s *Syncer) count(verb string, err error) {
	result := "ok"
	if err != nil {
		result = string(apierrors.ReasonForError(err))
		if result == "" {
			result = "error"
		}
	}
	s.metrics.requests.WithLabelValues(verb, result).Inc()
}
