package secretsync_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	"github.com/secretfs/secretfs/driver/budget"
	"github.com/secretfs/secretfs/driver/class"
	"github.com/secretfs/secretfs/driver/hook"
	"github.com/secretfs/secretfs/internal/kube/kubecore"
	"github.com/secretfs/secretfs/internal/kube/secretsync"
	"github.com/secretfs/secretfs/provider"
	"github.com/secretfs/secretfs/test/kubeapi"
)

// applyPolicy creates the component's ValidatingAdmissionPolicy and its
// binding, as shipped.
func applyPolicy(t *testing.T, srv *kubeapi.Server, path string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	docs := strings.Split(string(data), "\n---\n")
	if len(docs) != 2 {
		t.Fatalf("%s: %d documents, want the policy and its binding", path, len(docs))
	}
	var policy admissionv1.ValidatingAdmissionPolicy
	var binding admissionv1.ValidatingAdmissionPolicyBinding
	if err := yaml.UnmarshalStrict([]byte(docs[0]), &policy); err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict([]byte(docs[1]), &binding); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := srv.Client.AdmissionregistrationV1().ValidatingAdmissionPolicies().Create(ctx, &policy, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Client.AdmissionregistrationV1().ValidatingAdmissionPolicyBindings().Create(ctx, &binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// driverToken is a client config with a token of the driver's own service
// account (TokenRequest, as the DaemonSet's pod gets it): no impersonation,
// so the API server sees exactly the driver's user.
func driverToken(t *testing.T, srv *kubeapi.Server) *rest.Config {
	t.Helper()
	ctx := context.Background()
	if _, err := srv.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "secretfs-system"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Client.CoreV1().ServiceAccounts("secretfs-system").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "secretfs-node"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	tok, _, err := srv.Token(ctx, "secretfs-system", "secretfs-node", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return &rest.Config{Host: srv.Host, BearerToken: tok, TLSClientConfig: rest.TLSClientConfig{CAData: srv.CAData}}
}

// The shipped policy, with the shipped RBAC, on a real API server: the
// driver's token is refused every Secret a class must not get out of the
// driver, cannot read a Secret it does not manage (no get; a patch of such
// a Secret is refused before anything comes back), and still does the
// normal sync writes; other users are not matched.
func TestAdmissionPolicy(t *testing.T) {
	srv := start(t)
	applyPolicy(t, srv, "../../../deploy/components/sync-secrets/policy.yaml")
	cfg := driverToken(t, srv)
	drv := kubernetes.NewForConfigOrDie(cfg)
	ctx := context.Background()
	pod := createPod(t, srv, "pod-0")
	podOwner := []metav1.OwnerReference{{APIVersion: "v1", Kind: "Pod", Name: pod.Name, UID: types.UID(pod.UID)}}
	managed := map[string]string{secretsync.ManagedLabel: "true"}
	good := func(name string) *corev1.Secret {
		return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: managed, OwnerReferences: podOwner},
			Type: corev1.SecretTypeOpaque, Data: map[string][]byte{"k": []byte("v")}}
	}
	// The policy takes effect within a few seconds of its creation.
	eventually(t, "the policy in force", func() bool {
		s := good("probe")
		s.Labels = nil
		_, err := drv.CoreV1().Secrets(ns).Create(ctx, s, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		return err != nil
	})

	refused := map[string]*corev1.Secret{}
	tok := good("token")
	tok.Type = corev1.SecretTypeServiceAccountToken
	tok.Annotations = map[string]string{corev1.ServiceAccountNameKey: "default"}
	tok.Data = nil
	refused["a service-account token"] = tok
	unmanaged := good("unmanaged")
	unmanaged.Labels = map[string]string{"app": "x"}
	refused["an unmanaged Secret"] = unmanaged
	// Owners: exactly pods and the controllers of pods.
	owned := func(name string, refs ...metav1.OwnerReference) *corev1.Secret {
		s := good(name)
		s.OwnerReferences = refs
		return s
	}
	ref := func(apiVersion, kind string) metav1.OwnerReference {
		return metav1.OwnerReference{APIVersion: apiVersion, Kind: kind, Name: "web", UID: types.UID("uid-" + kind)}
	}
	refused["a Secret owned by a Deployment"] = owned("deploy-owned", ref("apps/v1", "Deployment"))
	refused["a Secret owned by a pod and a Deployment"] = owned("mixed-owners", podOwner[0], ref("apps/v1", "Deployment"))
	refused["a Secret owned by a CronJob"] = owned("cronjob-owned", ref("batch/v1", "CronJob"))
	refused["a Secret owned by a ReplicaSet of another group"] = owned("rs-other", ref("example.com/v1", "ReplicaSet"))
	refused["a Secret owned by a Node"] = owned("node-owned", ref("v1", "Node"))
	admitted := map[string]*corev1.Secret{
		"a Secret owned by a ReplicaSet":           owned("rs-owned", ref("apps/v1", "ReplicaSet")),
		"a Secret owned by a StatefulSet":          owned("sts-owned", ref("apps/v1", "StatefulSet")),
		"a Secret owned by a DaemonSet":            owned("ds-owned", ref("apps/v1", "DaemonSet")),
		"a Secret owned by a Job":                  owned("job-owned", ref("batch/v1", "Job")),
		"a Secret owned by a pod and a ReplicaSet": owned("pod-rs-owned", podOwner[0], ref("apps/v1", "ReplicaSet")),
	}
	for what, s := range admitted {
		if _, err := drv.CoreV1().Secrets(ns).Create(ctx, s, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}); err != nil {
			t.Errorf("%s: refused: %v", what, err)
		}
	}
	orphan := good("orphan")
	orphan.OwnerReferences = nil
	refused["a Secret without owners"] = orphan
	bootstrap := good("bootstrap")
	bootstrap.Type = corev1.SecretTypeBootstrapToken
	refused["a bootstrap token"] = bootstrap
	for what, s := range refused {
		if _, err := drv.CoreV1().Secrets(ns).Create(ctx, s, metav1.CreateOptions{}); !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "secretfs-sync-secrets") {
			t.Errorf("%s: the policy did not refuse it: %v", what, err)
		}
		// Another user (here the admin) is not matched.
		if _, err := srv.Client.CoreV1().Secrets(ns).Create(ctx, s, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}); err != nil {
			t.Errorf("%s, created by the admin: %v", what, err)
		}
	}

	// A Secret of someone else: the driver's token cannot read it (RBAC),
	// nor take it over or read it through a patch (the policy).
	theirs := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "theirs"}, Data: map[string][]byte{"k": []byte("their-value")}}
	if _, err := srv.Client.CoreV1().Secrets(ns).Create(ctx, theirs, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := drv.CoreV1().Secrets(ns).Get(ctx, "theirs", metav1.GetOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("get with the driver's token: %v, want Forbidden", err)
	}
	adopt := `{"metadata":{"labels":{"secrets-store.csi.k8s.io/managed":"true"},"ownerReferences":[{"apiVersion":"v1","kind":"Pod","name":"pod-0","uid":"` + pod.UID + `"}]}}`
	for _, body := range []string{`{}`, adopt} {
		sec, err := drv.CoreV1().Secrets(ns).Patch(ctx, "theirs", types.StrategicMergePatchType, []byte(body), metav1.PatchOptions{})
		if err == nil || sec != nil && sec.Data != nil || strings.Contains(err.Error(), "their-value") {
			t.Errorf("patch %s of an unmanaged Secret with the driver's token: %v", body, err)
		}
	}
	if s, _ := srv.Client.CoreV1().Secrets(ns).Get(ctx, "theirs", metav1.GetOptions{}); len(s.Labels) != 0 || len(s.OwnerReferences) != 0 {
		t.Errorf("the unmanaged Secret was changed: %+v", s.ObjectMeta)
	}

	// The sync itself, as two nodes with the driver's token: create, then
	// the other node's test-patch and owner patch; a rotation.
	client, err := kubecore.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	a := newNodeWith(t, client, "node-a")
	b := newNodeWith(t, client, "node-b")
	p1 := createPod(t, srv, "pod-1")
	a.syncer.Changed(ctx, volume(pod, "one"))
	b.syncer.Changed(ctx, volume(p1, "one"))
	sec := secret(t, srv)
	if got := owners(sec); len(got) != 2 || string(sec.Data["PASS"]) != "one" {
		t.Fatalf("synced Secret: owners %v data %q", got, sec.Data)
	}
	if a.requests(t) != 2 || b.requests(t) != 4 {
		t.Errorf("requests: node-a %d (want 2: get of the pod, create), node-b %d (want 4: get of the pod, create, test patch, patch)", a.requests(t), b.requests(t))
	}
	a.syncer.Changed(ctx, volume(pod, "two"))
	if got := string(secret(t, srv).Data["PASS"]); got != "two" {
		t.Errorf("after rotation PASS=%q", got)
	}
	// A class asking for the token Secret: the driver refuses it before
	// any request (and the policy would).
	before := a.requests(t)
	v := volume(pod, "two")
	c := *v.Class
	c.SecretObjects = append(c.SecretObjects, tokenObject())
	v.Class = &c
	v.ID = "vol-token"
	a.syncer.Changed(ctx, v)
	if _, err := srv.Client.CoreV1().Secrets(ns).Get(ctx, "sa-token", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("the token Secret: %v", err)
	}
	if n := a.requests(t) - before; n > 1 {
		t.Errorf("%d requests for a class whose only new entry is refused", n)
	}
}

func tokenObject() class.SecretObject {
	return class.SecretObject{SecretName: "sa-token", Type: string(corev1.SecretTypeServiceAccountToken),
		Annotations: map[string]string{corev1.ServiceAccountNameKey: "default"},
		Data:        []class.SecretObjectData{{ObjectName: "pass", Key: "token"}}}
}

// On a real API server, with the driver's token and the policy: a class
// whose 16 Secrets copy one 200 KiB file holds it once in the node budget
// while writing and nothing after; a class over the per-class cap writes
// nothing.
func TestSyncMemoryBounded(t *testing.T) {
	srv := start(t)
	applyPolicy(t, srv, "../../../deploy/components/sync-secrets/policy.yaml")
	client, err := kubecore.NewForConfig(driverToken(t, srv))
	if err != nil {
		t.Fatal(err)
	}
	nodeBudget := budget.New(1 << 20)
	n := newNodeWith(t, client, "node-a", func(o *secretsync.Options) { o.Budget = nodeBudget; o.MaxClassBytes = 256 << 10 })
	pod := createPod(t, srv, "pod-0")
	big := &class.Class{Name: "big", Namespace: ns, Provider: "fake"}
	for i := range 16 {
		big.SecretObjects = append(big.SecretObjects, class.SecretObject{SecretName: fmt.Sprint("big-", i),
			Data: []class.SecretObjectData{{ObjectName: "blob", Key: "blob"}}})
	}
	blob := bytes.Repeat([]byte{'z'}, 200<<10)
	v := hook.Volume{ID: "vol-big", Pod: pod, Class: big, Provider: "fake", Files: []provider.File{{Path: "blob", Mode: 0o644, Contents: blob}}}
	ctx := context.Background()
	n.syncer.Changed(ctx, v)
	for i := range 16 {
		s, err := srv.Client.CoreV1().Secrets(ns).Get(ctx, fmt.Sprint("big-", i), metav1.GetOptions{})
		if err != nil || !bytes.Equal(s.Data["blob"], blob) {
			t.Fatalf("big-%d: %v", i, err)
		}
	}
	if used := nodeBudget.Used(); used != 0 {
		t.Errorf("the node budget holds %d bytes after every Secret was written", used)
	}
	over := &class.Class{Name: "over", Namespace: ns, Provider: "fake", SecretObjects: []class.SecretObject{{SecretName: "over",
		Data: []class.SecretObjectData{{ObjectName: "blob", Key: "a"}, {ObjectName: "blob2", Key: "b"}}}}}
	v = hook.Volume{ID: "vol-over", Pod: pod, Class: over, Provider: "fake", Files: []provider.File{
		{Path: "blob", Mode: 0o644, Contents: blob}, {Path: "blob2", Mode: 0o644, Contents: blob}}}
	before := n.requests(t)
	n.syncer.Changed(ctx, v)
	if _, err := srv.Client.CoreV1().Secrets(ns).Get(ctx, "over", metav1.GetOptions{}); !apierrors.IsNotFound(err) || n.requests(t) != before {
		t.Errorf("a class over the per-class cap: %v, %d requests", err, n.requests(t)-before)
	}
}

type recorder struct {
	mu   sync.Mutex
	list []string
}

func (r *recorder) Warning(_ provider.Pod, reason, msg string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.list = append(r.list, reason+" "+msg)
}

func (r *recorder) all() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.list)
}

// Under the policy the sync still tells an unmanaged Secret, or a managed
// one of another type, apart from a failure: the JSON patch's test fails
// before admission runs, so the pod gets SecretSyncConflict (not a retried
// SecretSyncFailed), and the Secret is untouched.
func TestConflictUnderPolicy(t *testing.T) {
	srv := start(t)
	applyPolicy(t, srv, "../../../deploy/components/sync-secrets/policy.yaml")
	cfg := driverToken(t, srv)
	client, err := kubecore.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	ev := &recorder{}
	// No retry between a conflict and the volume's end: a retry in flight
	// when the test deletes the conflicting Secret would find it gone and
	// create it, and the next case could not create its own.
	n := newNodeWith(t, client, "node-a", func(o *secretsync.Options) { o.Events = ev; o.MinBackoff, o.MaxBackoff = time.Hour, time.Hour })
	pod := createPod(t, srv, "pod-0")
	eventually(t, "the policy in force", func() bool {
		_, err := kubernetes.NewForConfigOrDie(cfg).CoreV1().Secrets(ns).Create(ctx,
			&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "probe"}}, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		return err != nil
	})
	for _, s := range []*corev1.Secret{
		{ObjectMeta: metav1.ObjectMeta{Name: "app-env"}, Data: map[string][]byte{"PASS": []byte("theirs")}},
		{ObjectMeta: metav1.ObjectMeta{Name: "app-env", Labels: map[string]string{secretsync.ManagedLabel: "true"}},
			Type: corev1.SecretTypeBasicAuth, Data: map[string][]byte{"username": []byte("theirs")}},
	} {
		if _, err := srv.Client.CoreV1().Secrets(ns).Create(ctx, s, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		n.syncer.Changed(ctx, volume(pod, "one"))
		got := secret(t, srv)
		if string(got.Data["PASS"]) == "one" || len(got.OwnerReferences) != 0 {
			t.Errorf("the Secret was written: %+v", got)
		}
		e := ev.all()
		if len(e) == 0 || !strings.HasPrefix(e[len(e)-1], secretsync.ReasonConflict) {
			t.Errorf("events %q, want %s last", e, secretsync.ReasonConflict)
		}
		n.syncer.Gone(volume(pod, ""))
		if err := srv.Client.CoreV1().Secrets(ns).Delete(ctx, "app-env", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
}

// A Secret left by the Secrets Store CSI Driver (managed, owned by its
// SecretProviderClassPodStatus) is taken over under the policy: the pod is
// added as an owner and the old owner stays.
func TestSSCDSecretTakenOverUnderPolicy(t *testing.T) {
	srv := start(t)
	applyPolicy(t, srv, "../../../deploy/components/sync-secrets/policy.yaml")
	cfg := driverToken(t, srv)
	client, err := kubecore.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	eventually(t, "the policy in force", func() bool {
		_, err := kubernetes.NewForConfigOrDie(cfg).CoreV1().Secrets(ns).Create(ctx,
			&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "probe"}}, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		return err != nil
	})
	sscdOwner := metav1.OwnerReference{APIVersion: "secrets-store.csi.x-k8s.io/v1", Kind: "SecretProviderClassPodStatus", Name: "old-pod-team-a-app", UID: "spcps-uid"}
	if _, err := srv.Client.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "app-env",
		Labels: map[string]string{secretsync.ManagedLabel: "true"}, OwnerReferences: []metav1.OwnerReference{sscdOwner}},
		Data: map[string][]byte{"PASS": []byte("old")}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ev := &recorder{}
	n := newNodeWith(t, client, "node-a", func(o *secretsync.Options) { o.Events = ev })
	pod := createPod(t, srv, "pod-0")
	n.syncer.Changed(ctx, volume(pod, "new"))
	sec := secret(t, srv)
	if string(sec.Data["PASS"]) != "new" || len(sec.OwnerReferences) != 2 {
		t.Fatalf("Secret %q owners %+v; events %q", sec.Data, sec.OwnerReferences, ev.all())
	}
}
