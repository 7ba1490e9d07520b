package secretsync

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	k8stesting "k8s.io/client-go/testing"

	"github.com/secretfs/secretfs/driver/class"
	"github.com/secretfs/secretfs/driver/hook"
	"github.com/secretfs/secretfs/internal/kube/kubecore"
	"github.com/secretfs/secretfs/provider"
)

// events records Warning events.
type events struct {
	mu   sync.Mutex
	list []string // "pod reason message"
}

func (e *events) Warning(pod provider.Pod, reason, msg string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.list = append(e.list, pod.Name+" "+reason+" "+msg)
}

func (e *events) all() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.list...)
}

// coreSecrets adapts client-go's typed core/v1 client (here the fake
// clientset's) to the narrower kubecore.SecretsGetter.
type coreSecrets struct{ corev1client.SecretsGetter }

func (c coreSecrets) Secrets(ns string) kubecore.SecretInterface { return c.SecretsGetter.Secrets(ns) }

// corePods adapts client-go's typed core/v1 client to kubecore.PodsGetter.
type corePods struct{ corev1client.PodsGetter }

func (c corePods) Pods(ns string) kubecore.PodInterface { return c.PodsGetter.Pods(ns) }

func newSyncer(t *testing.T, objs ...runtime.Object) (*Syncer, *fake.Clientset, *events) {
	t.Helper()
	return newSyncerWith(t, func(*Options) {}, objs...)
}

func newSyncerWith(t *testing.T, set func(*Options), objs ...runtime.Object) (*Syncer, *fake.Clientset, *events) {
	t.Helper()
	client := fake.NewClientset(objs...)
	// The fake does not assign uids; the API server does.
	var n atomic.Int64
	client.PrependReactor("create", "secrets", func(a k8stesting.Action) (bool, runtime.Object, error) {
		sec := a.(k8stesting.CreateAction).GetObject().(*corev1.Secret).DeepCopy()
		sec.UID = types.UID(fmt.Sprint("secret-uid-", n.Add(1)))
		if err := client.Tracker().Create(a.GetResource(), sec, a.GetNamespace()); err != nil {
			return true, nil, err
		}
		return true, sec, nil
	})
	// A JSON patch whose test fails: the API server answers 422 and says
	// no more; the fake would pass the patch library's error on.
	client.PrependReactor("patch", "secrets", func(a k8stesting.Action) (bool, runtime.Object, error) {
		handled, obj, err := k8stesting.ObjectReaction(client.Tracker())(a)
		var status apierrors.APIStatus
		if err != nil && !errors.As(err, &status) {
			err = apierrors.NewGenericServerResponse(http.StatusUnprocessableEntity, "patch", a.GetResource().GroupResource(), "", "", 0, false)
		}
		return handled, obj, err
	})
	ev := &events{}
	// Pods as owners unless a test says otherwise: the fake has no pods.
	opts := Options{Client: coreSecrets{client.CoreV1()}, Pods: corePods{client.CoreV1()}, Owner: OwnerPod, Events: ev, MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond, Wait: 20 * time.Second}
	set(&opts)
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s, client, ev
}

var testClass = &class.Class{Name: "app", Namespace: "ns", Provider: "fake", SecretObjects: []class.SecretObject{{
	SecretName: "app-env", Type: "Opaque", Labels: map[string]string{"team": "a"},
	Data: []class.SecretObjectData{{ObjectName: "user", Key: "USER"}, {ObjectName: "pass", Key: "PASS"}},
}}}

func vol(id, pod, pass string) hook.Volume {
	return hook.Volume{ID: id, Pod: provider.Pod{Namespace: "ns", Name: pod, UID: "uid-" + pod}, Class: testClass, Provider: "fake",
		Files: files("user", "admin", "pass", pass)}
}

// writes counts the create/update/patch/delete requests on secrets.
func writes(c *fake.Clientset) (n int) {
	for _, a := range c.Actions() {
		if a.GetResource().Resource == "secrets" && a.GetVerb() != "get" && a.GetVerb() != "list" && a.GetVerb() != "watch" {
			n++
		}
	}
	return n
}

func requests(c *fake.Clientset) int {
	n := 0
	for _, a := range c.Actions() {
		if a.GetResource().Resource == "secrets" {
			n++
		}
	}
	return n
}

func getSecret(t *testing.T, c *fake.Clientset) *corev1.Secret {
	t.Helper()
	s, err := c.CoreV1().Secrets("ns").Get(context.Background(), "app-env", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func ownerNames(s *corev1.Secret) string {
	var names []string
	for _, o := range s.OwnerReferences {
		names = append(names, o.Name)
	}
	slices.Sort(names)
	return strings.Join(names, ",")
}

func TestSyncLifecycle(t *testing.T) {
	s, c, ev := newSyncer(t)
	ctx := context.Background()

	// First publish: the Secret exists when Changed returns, in one request.
	s.Changed(ctx, vol("v1", "p1", "one"))
	sec := getSecret(t, c)
	if n := requests(c) - 1; n != 1 {
		t.Errorf("first publish made %d requests, want 1 (create)", n)
	}
	if sec.Type != corev1.SecretTypeOpaque || string(sec.Data["USER"]) != "admin" || string(sec.Data["PASS"]) != "one" ||
		sec.Labels[ManagedLabel] != "true" || sec.Labels["team"] != "a" || ownerNames(sec) != "p1" {
		t.Fatalf("secret %+v", sec)
	}
	o := sec.OwnerReferences[0]
	if o.APIVersion != "v1" || o.Kind != "Pod" || o.UID != "uid-p1" {
		t.Errorf("owner %+v", o)
	}

	// A refresh that changes nothing: no request at all.
	before := requests(c)
	s.Changed(ctx, vol("v1", "p1", "one"))
	if n := requests(c) - before; n != 0 {
		t.Errorf("unchanged refresh made %d requests, want 0: %v", n, c.Actions())
	}

	// A second pod on the node: one patch adds it as an owner.
	before = writes(c)
	s.Changed(ctx, vol("v2", "p2", "one"))
	if n := writes(c) - before; n != 1 {
		t.Errorf("second pod made %d writes, want 1", n)
	}
	if got := ownerNames(getSecret(t, c)); got != "p1,p2" {
		t.Errorf("owners %q, want p1,p2", got)
	}

	// Rotation: one write, the new value.
	before = writes(c)
	s.Changed(ctx, vol("v1", "p1", "two"))
	if n := writes(c) - before; n != 1 {
		t.Errorf("rotation made %d writes, want 1", n)
	}
	if got := string(getSecret(t, c).Data["PASS"]); got != "two" {
		t.Errorf("after rotation PASS=%q", got)
	}

	// Unpublish makes no request: the garbage collector counts the owners.
	before = requests(c)
	s.Gone(vol("v1", "p1", ""))
	s.Gone(vol("v2", "p2", ""))
	if n := requests(c) - before; n != 0 {
		t.Errorf("unpublish made %d requests", n)
	}
	if e := ev.all(); len(e) != 0 {
		t.Errorf("events: %q", e)
	}
}

func TestUnmanagedSecretIsNeverTouched(t *testing.T) {
	existing := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "app-env", Namespace: "ns", Labels: map[string]string{"owner": "me"}},
		Data: map[string][]byte{"PASS": []byte("mine")}}
	s, c, ev := newSyncer(t, existing)
	s.Changed(context.Background(), vol("v1", "p1", "one"))
	for _, a := range c.Actions() {
		if p, ok := a.(k8stesting.PatchAction); ok && p.GetPatchType() == types.JSONPatchType && !strings.Contains(string(p.GetPatch()), `"op":"add"`) &&
			!strings.Contains(string(p.GetPatch()), `"op":"replace"`) {
			continue // the test-only patch: changes nothing
		}
		if a.GetVerb() == "patch" || a.GetVerb() == "update" || a.GetVerb() == "get" {
			t.Fatalf("read or wrote an unmanaged Secret: %v", a)
		}
	}
	sec := getSecret(t, c)
	if string(sec.Data["PASS"]) != "mine" || len(sec.OwnerReferences) != 0 || sec.Labels[ManagedLabel] != "" {
		t.Fatalf("an unmanaged Secret was changed: %+v", sec)
	}
	e := ev.all()
	if len(e) != 1 || !strings.Contains(e[0], "p1 "+ReasonConflict) || !strings.Contains(e[0], `Secret "app-env"`) {
		t.Fatalf("want one conflict event naming the Secret, got %q", e)
	}
}

func TestOtherTypeIsAConflict(t *testing.T) {
	existing := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "app-env", Namespace: "ns", Labels: map[string]string{ManagedLabel: "true"}},
		Type: corev1.SecretTypeDockerConfigJson}
	s, _, ev := newSyncer(t, existing)
	s.Changed(context.Background(), vol("v1", "p1", "one"))
	if e := ev.all(); len(e) != 1 || !strings.Contains(e[0], "cannot change") {
		t.Fatalf("events %q", e)
	}
}

func TestManagedSecretFromElsewhereIsUpdated(t *testing.T) {
	// Left by the Secrets Store CSI Driver, or written by another node.
	existing := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "app-env", Namespace: "ns", UID: "sec-uid",
		Labels:          map[string]string{ManagedLabel: "true"},
		OwnerReferences: []metav1.OwnerReference{{APIVersion: "v1", Kind: "Pod", Name: "elsewhere", UID: "uid-elsewhere"}}},
		Type: corev1.SecretTypeOpaque, Data: map[string][]byte{"PASS": []byte("old"), "STALE": []byte("x")}}
	s, c, ev := newSyncer(t, existing)
	s.Changed(context.Background(), vol("v1", "p1", "one"))
	sec := getSecret(t, c)
	if string(sec.Data["PASS"]) != "one" || sec.Data["STALE"] != nil || ownerNames(sec) != "elsewhere,p1" {
		t.Fatalf("secret data %q owners %q", sec.Data, ownerNames(sec))
	}
	if e := ev.all(); len(e) != 0 {
		t.Errorf("events %q", e)
	}
}

func TestFailureIsPostedAndRetried(t *testing.T) {
	s, c, ev := newSyncer(t)
	var mu sync.Mutex
	fails := 3
	c.PrependReactor("create", "secrets", func(k8stesting.Action) (bool, runtime.Object, error) {
		mu.Lock()
		defer mu.Unlock()
		if fails > 0 {
			fails--
			return true, nil, apierrors.NewForbidden(schema.GroupResource{Resource: "secrets"}, "app-env", errors.New("RBAC: no"))
		}
		return false, nil, nil
	})
	s.Changed(context.Background(), vol("v1", "p1", "one"))
	// The publish returned after the first failure; the retries go on.
	waitFor(t, func() bool {
		_, err := c.CoreV1().Secrets("ns").Get(context.Background(), "app-env", metav1.GetOptions{})
		return err == nil
	})
	e := ev.all()
	if len(e) != 1 || !strings.Contains(e[0], ReasonFailed) || !strings.Contains(e[0], "forbidden") {
		t.Fatalf("want one failure event (repeats are not posted again), got %q", e)
	}
	if got := string(getSecret(t, c).Data["PASS"]); got != "one" {
		t.Errorf("PASS=%q", got)
	}
	if n := testutil.ToFloat64(s.metrics.results.WithLabelValues("failed")); n != 3 {
		t.Errorf("secretfs_secret_syncs_total{result=failed} = %v, want 3", n)
	}
	if n := testutil.ToFloat64(s.metrics.requests.WithLabelValues("create", "Forbidden")); n != 3 {
		t.Errorf("secretfs_secret_sync_requests_total{verb=create,result=Forbidden} = %v, want 3", n)
	}
}

func TestRetryWritesNewestContent(t *testing.T) {
	s, c, _ := newSyncer(t)
	var mu sync.Mutex
	down := true
	c.PrependReactor("*", "secrets", func(a k8stesting.Action) (bool, runtime.Object, error) {
		mu.Lock()
		defer mu.Unlock()
		if down {
			return true, nil, apierrors.NewServiceUnavailable("down")
		}
		return false, nil, nil
	})
	s.Changed(context.Background(), vol("v1", "p1", "one"))
	s.Changed(context.Background(), vol("v1", "p1", "two")) // rotated while the API was down
	mu.Lock()
	down = false
	mu.Unlock()
	waitFor(t, func() bool {
		sec, err := c.CoreV1().Secrets("ns").Get(context.Background(), "app-env", metav1.GetOptions{})
		return err == nil && string(sec.Data["PASS"]) == "two"
	})
}

func TestSimultaneousPublishesCoalesce(t *testing.T) {
	s, c, _ := newSyncer(t)
	release := make(chan struct{})
	var once sync.Once
	c.PrependReactor("create", "secrets", func(k8stesting.Action) (bool, runtime.Object, error) {
		once.Do(func() { <-release })
		return false, nil, nil
	})
	const pods = 20
	var wg sync.WaitGroup
	for i := range pods {
		wg.Go(func() { s.Changed(context.Background(), vol(fmt.Sprint("v", i), fmt.Sprint("p", i), "one")) })
	}
	// Let every publish queue up behind the first write.
	waitFor(t, func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		e := s.secrets[key{"ns", "app-env"}]
		return e != nil && len(e.users) == pods
	})
	close(release)
	wg.Wait()
	if n := writes(c); n > 2 {
		t.Errorf("%d simultaneous publishes made %d writes, want at most 2", pods, n)
	}
	if n := len(getSecret(t, c).OwnerReferences); n != pods {
		t.Errorf("%d owners, want %d", n, pods)
	}
}

func TestSecretDeletedIsRecreatedOnChange(t *testing.T) {
	s, c, _ := newSyncer(t)
	s.Changed(context.Background(), vol("v1", "p1", "one"))
	if err := c.CoreV1().Secrets("ns").Delete(context.Background(), "app-env", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	s.Changed(context.Background(), vol("v1", "p1", "two"))
	if got := string(getSecret(t, c).Data["PASS"]); got != "two" {
		t.Errorf("PASS=%q", got)
	}
}

func TestInvalidEntriesArePosted(t *testing.T) {
	s, c, ev := newSyncer(t)
	v := vol("v1", "p1", "one")
	cls := *testClass
	cls.SecretObjects = append([]class.SecretObject{{SecretName: "bad", Data: []class.SecretObjectData{{ObjectName: "missing", Key: "k"}}}}, cls.SecretObjects...)
	v.Class = &cls
	s.Changed(context.Background(), v)
	getSecret(t, c) // the valid entry is still synced
	e := ev.all()
	if len(e) != 1 || !strings.Contains(e[0], `Secret "bad"`) || !strings.Contains(e[0], "missing") {
		t.Fatalf("events %q", e)
	}
	noPod := vol("v2", "", "one")
	noPod.Pod.UID = ""
	s.Changed(context.Background(), noPod)
	if e := ev.all(); len(e) != 2 || !strings.Contains(e[1], "podInfoOnMount") {
		t.Fatalf("events %q", e)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in time")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A class asking for a service-account token gets a refusal Event naming
// the entry and key, and no request is made for it; the class's other
// Secrets are still synced.
func TestRefusedEntryIsNotWritten(t *testing.T) {
	s, c, ev := newSyncer(t)
	v := vol("v1", "p1", "one")
	cls := *testClass
	cls.SecretObjects = append([]class.SecretObject{{SecretName: "token", Type: "kubernetes.io/service-account-token",
		Annotations: map[string]string{"kubernetes.io/service-account.name": "admin"},
		Data:        []class.SecretObjectData{{ObjectName: "pass", Key: "token"}}}}, cls.SecretObjects...)
	v.Class = &cls
	s.Changed(context.Background(), v)
	getSecret(t, c)
	if _, err := c.CoreV1().Secrets("ns").Get(context.Background(), "token", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("the refused Secret: %v", err)
	}
	e := ev.all()
	if len(e) != 2 || !strings.Contains(e[0], "p1 "+ReasonRefused) || !strings.Contains(e[0], `Secret "token"`) ||
		!strings.Contains(e[1], `annotation key "kubernetes.io/service-account.name"`) || strings.Contains(strings.Join(e, " "), "admin") {
		t.Fatalf("events %q", e)
	}
}

// --sync-owner=controller: the pod's controller owns the Secret, read with
// one get of the pod per volume; a pod without a controller owns it
// itself; a failed read makes the pod the owner with a Warning Event.
func TestControllerOwner(t *testing.T) {
	isController := true
	rsPod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web-1", UID: "uid-web-1",
		OwnerReferences: []metav1.OwnerReference{
			{APIVersion: "v1", Kind: "Other", Name: "not-controller", UID: "uid-other"},
			{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "web", UID: "uid-rs", Controller: &isController},
		}}}
	s, client, ev := newSyncerWith(t, func(o *Options) { o.Owner = OwnerController }, rsPod)
	ctx := context.Background()
	podGets := func() (n int) {
		for _, a := range client.Actions() {
			if a.GetResource().Resource == "pods" && a.GetVerb() == "get" {
				n++
			}
		}
		return n
	}
	s.Changed(ctx, vol("v1", "web-1", "one"))
	s.Changed(ctx, vol("v1", "web-1", "two")) // the owner is remembered
	sec, err := client.CoreV1().Secrets("ns").Get(ctx, "app-env", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "web", UID: "uid-rs"}}
	if !slices.Equal(sec.OwnerReferences, want) || podGets() != 1 {
		t.Fatalf("owners %+v after %d pod reads, want %+v after 1", sec.OwnerReferences, podGets(), want)
	}

	// A pod the API server does not know (the read fails): the pod owns
	// it, with a Warning Event, and the next change reads again.
	s.Changed(ctx, vol("v2", "gone", "two"))
	s.Changed(ctx, vol("v2", "gone", "three"))
	if podGets() != 3 {
		t.Errorf("%d pod reads, want 3 (a failed read is not remembered)", podGets())
	}
	sec, _ = client.CoreV1().Secrets("ns").Get(ctx, "app-env", metav1.GetOptions{})
	var kinds []string
	for _, o := range sec.OwnerReferences {
		kinds = append(kinds, o.Kind+"/"+o.Name)
	}
	slices.Sort(kinds)
	if !slices.Equal(kinds, []string{"Pod/gone", "ReplicaSet/web"}) {
		t.Errorf("owners %+v, want the ReplicaSet and the pod gone", sec.OwnerReferences)
	}
	if got := ev.all(); len(got) != 2 || !strings.HasPrefix(got[0], "gone "+ReasonOwner+" ") {
		t.Errorf("events %q, want two %s on the pod", got, ReasonOwner)
	}

	if _, err := ParseOwnerMode("replicaset"); err == nil {
		t.Error("ParseOwnerMode accepted an unknown mode")
	}
	if _, err := New(Options{Client: s.client, Owner: "node"}); err == nil {
		t.Error("New accepted an unknown owner mode")
	}
}
