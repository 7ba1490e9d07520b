package podstatus

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/secretfs/secretfs/driver/class"
	"github.com/secretfs/secretfs/driver/hook"
	"github.com/secretfs/secretfs/provider"
)

// Triples that SSCD's <pod>-<namespace>-<class> maps to one name get two
// names; every name is a valid object name within the length limit and
// starts with SSCD's readable form when that fits.
func TestNameIsUnambiguous(t *testing.T) {
	for _, pair := range [][2][3]string{
		{{"a-b", "c", "d"}, {"a", "b-c", "d"}},                                             // the namespace's dashes
		{{"a-x-b", "x", "c"}, {"a", "x", "b-x-c"}},                                         // one namespace: pod and class
		{{"web", "ns", "app-1"}, {"web-ns-app", "", "1"}},                                  // degenerate
		{{"p", "n", strings.Repeat("c", 253)}, {"p", "n", strings.Repeat("c", 252) + "d"}}, // truncated alike
	} {
		a, b := Name(pair[0][0], pair[0][1], pair[0][2]), Name(pair[1][0], pair[1][1], pair[1][2])
		if a == b {
			t.Errorf("%q and %q both named %q", pair[0], pair[1], a)
		}
	}
	if n := Name("web-0", "team-a", "app"); !strings.HasPrefix(n, "web-0-team-a-app-") || len(n) > len("web-0-team-a-app-")+12 {
		t.Errorf("name %q: want SSCD's form plus a short suffix", n)
	}
	long := Name(strings.Repeat("p", 253), strings.Repeat("n", 63), strings.Repeat("c", 253))
	if msgs := validation.IsDNS1123Subdomain(long); len(msgs) > 0 {
		t.Errorf("%d-character name: %v", len(long), msgs)
	}
}

// A valid name for any triple of valid parts, and never the same name for
// two triples of one namespace.
func FuzzName(f *testing.F) {
	f.Add("web-0", "team-a", "app", "web", "team-a", "0-app")
	f.Add("a.b", "n", "c.", "a", "n", "b.c.")
	f.Fuzz(func(t *testing.T, pod, ns, cls, pod2, ns2, cls2 string) {
		for _, p := range []string{pod, ns, cls, pod2, ns2, cls2} {
			if len(validation.IsDNS1123Subdomain(p)) > 0 {
				return
			}
		}
		a := Name(pod, ns, cls)
		if msgs := validation.IsDNS1123Subdomain(a); len(msgs) > 0 {
			t.Fatalf("Name(%q, %q, %q) = %q: %v", pod, ns, cls, a, msgs)
		}
		if (pod != pod2 || cls != cls2) && ns == ns2 && a == Name(pod2, ns2, cls2) {
			t.Fatalf("%q and %q collide", []string{pod, ns, cls}, []string{pod2, ns2, cls2})
		}
	})
}

// fakeServer is the dynamic fake with what the API server does and the
// fake does not: applies create or update the object and bump its
// resourceVersion; deletes honour Preconditions.
type fakeServer struct {
	mu      sync.Mutex
	objs    map[string]*unstructured.Unstructured
	uids    int
	rv      int
	deletes []metav1.DeleteOptions
}

func newFake() (*fakeServer, *dynamicfake.FakeDynamicClient) {
	s := &fakeServer{objs: map[string]*unstructured.Unstructured{}}
	c := dynamicfake.NewSimpleDynamicClient(runtime.NewScheme())
	c.PrependReactor("patch", "*", func(a k8stesting.Action) (bool, runtime.Object, error) {
		p := a.(k8stesting.PatchAction)
		s.mu.Lock()
		defer s.mu.Unlock()
		var u unstructured.Unstructured
		if err := u.UnmarshalJSON(p.GetPatch()); err != nil {
			return true, nil, err
		}
		old := s.objs[p.GetName()]
		if old == nil {
			s.uids++
			u.SetUID(types.UID(fmt.Sprint("obj-", s.uids)))
		} else {
			u.SetUID(old.GetUID())
		}
		s.rv++
		u.SetResourceVersion(fmt.Sprint(s.rv))
		s.objs[p.GetName()] = &u
		return true, u.DeepCopy(), nil
	})
	c.PrependReactor("delete", "*", func(a k8stesting.Action) (bool, runtime.Object, error) {
		d := a.(k8stesting.DeleteAction)
		s.mu.Lock()
		defer s.mu.Unlock()
		s.deletes = append(s.deletes, d.GetDeleteOptions())
		cur := s.objs[d.GetName()]
		if pre := d.GetDeleteOptions().Preconditions; cur != nil && pre != nil &&
			((pre.UID != nil && *pre.UID != cur.GetUID()) || (pre.ResourceVersion != nil && *pre.ResourceVersion != cur.GetResourceVersion())) {
			// What the API server answers: 409 Conflict.
			return true, nil, apierrors.NewConflict(GVR.GroupResource(), d.GetName(), fmt.Errorf("precondition failed"))
		}
		delete(s.objs, d.GetName())
		return true, nil, nil
	})
	return s, c
}

func (s *fakeServer) has(name string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.objs[name] != nil
}

func (s *fakeServer) owner(name string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if o := s.objs[name]; o != nil && len(o.GetOwnerReferences()) == 1 {
		return string(o.GetOwnerReferences()[0].UID)
	}
	return ""
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("not in time: %s", what)
		}
	}
}

// A pod that moved: its old node's late unpublish must not delete the
// object the new node wrote for the new pod of the same name; the old
// node's delete carries the preconditions of the object it wrote.
func TestLateDeleteSparesNewerObject(t *testing.T) {
	srv, client := newFake()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	oldNode, _ := New(Options{Client: client, Node: "old", QPS: 1000})
	newNode, _ := New(Options{Client: client, Node: "new", QPS: 1000})
	go oldNode.Run(ctx)
	go newNode.Run(ctx)
	vol := func(uid string) hook.Volume {
		return hook.Volume{ID: "v-" + uid, Pod: provider.Pod{Namespace: "ns", Name: "web-0", UID: uid}, Class: &class.Class{Name: "app"}}
	}
	name := Name("web-0", "ns", "app")
	oldNode.Changed(ctx, vol("uid-1"))
	waitFor(t, "old node's object", func() bool { return srv.owner(name) == "uid-1" })
	newNode.Changed(ctx, vol("uid-2"))
	waitFor(t, "new node's object", func() bool { return srv.owner(name) == "uid-2" })
	oldNode.Gone(vol("uid-1"))
	waitFor(t, "the old node's delete", func() bool {
		srv.mu.Lock()
		defer srv.mu.Unlock()
		return len(srv.deletes) == 1
	})
	srv.mu.Lock()
	pre := srv.deletes[0].Preconditions
	srv.mu.Unlock()
	if pre == nil || pre.UID == nil {
		t.Fatalf("delete without a uid precondition: %+v", pre)
	}
	time.Sleep(50 * time.Millisecond)
	if !srv.has(name) {
		t.Fatal("the old node's late delete removed the new pod's object")
	}
	newNode.Gone(vol("uid-2"))
	waitFor(t, "the new node's delete", func() bool { return !srv.has(name) })
}

// A pod recreated under its name on the same node: the old volume's late
// unpublish neither deletes the new pod's object nor, when both are still
// queued, drops the new pod's apply.
func TestSameNodeRecreatedPod(t *testing.T) {
	srv, client := newFake()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w, _ := New(Options{Client: client, Node: "n", QPS: 1000})
	vol := func(uid string) hook.Volume {
		return hook.Volume{ID: "v-" + uid, Pod: provider.Pod{Namespace: "ns", Name: "web-0", UID: uid}, Class: &class.Class{Name: "app"}}
	}
	name := Name("web-0", "ns", "app")
	// Queued together: the old volume's delete must not replace the new apply.
	w.Changed(ctx, vol("uid-1"))
	w.Changed(ctx, vol("uid-2"))
	w.Gone(vol("uid-1"))
	go w.Run(ctx)
	waitFor(t, "the new pod's object", func() bool { return srv.owner(name) == "uid-2" })
	// Written, then the old unpublish comes late.
	w.Gone(vol("uid-1"))
	w.Changed(ctx, vol("uid-3")) // a marker: the queue got past the Gone
	waitFor(t, "the marker", func() bool { return srv.owner(name) == "uid-3" })
	w.Gone(vol("uid-2"))
	w.Changed(ctx, hook.Volume{ID: "other", Pod: provider.Pod{Namespace: "ns", Name: "other", UID: "uid-o"}, Class: &class.Class{Name: "app"}})
	waitFor(t, "the second marker", func() bool { return srv.has(Name("other", "ns", "app")) })
	if !srv.has(name) {
		t.Fatal("an older pod's unpublish deleted the newer pod's object")
	}
	w.Gone(vol("uid-3"))
	waitFor(t, "the last pod's unpublish deletes it", func() bool { return !srv.has(name) })
}

// recorder counts the requests the writer sends through the fake server.
type recorder struct {
	mu      sync.Mutex
	patches []k8stesting.PatchAction
	deletes []k8stesting.DeleteAction
}

func record(c *dynamicfake.FakeDynamicClient) *recorder {
	r := &recorder{}
	c.PrependReactor("*", "*", func(a k8stesting.Action) (bool, runtime.Object, error) {
		r.mu.Lock()
		defer r.mu.Unlock()
		switch a := a.(type) {
		case k8stesting.PatchAction:
			r.patches = append(r.patches, a)
		case k8stesting.DeleteAction:
			r.deletes = append(r.deletes, a)
		}
		return false, nil, nil // on to the fake server
	})
	return r
}

func (r *recorder) counts() (patches, deletes int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.patches), len(r.deletes)
}

// What one apply sends: a server-side apply (forced, under the driver's
// field manager) of the object named by Name in the pod's namespace, with
// the node label, the pod as its only owner and the volume's status; three
// changes queued together are one apply, of the last. The delete that
// follows carries exactly the uid and resourceVersion that apply got back.
func TestApplyAndDeleteRequests(t *testing.T) {
	srv, client := newFake()
	rec := record(client)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w, err := New(Options{Client: client, Node: "node-a", QPS: 1000})
	if err != nil {
		t.Fatal(err)
	}
	v := hook.Volume{ID: "vol-1", Target: "/pods/uid-1/mount", Pod: provider.Pod{Namespace: "team-a", Name: "web-0", UID: "uid-1"}, Class: &class.Class{Name: "app"}}
	for _, version := range []string{"1", "2", "3"} {
		v.Versions = []provider.ObjectVersion{{ID: "secret/db", Version: version}}
		w.Changed(ctx, v)
	}
	go w.Run(ctx)
	name := Name("web-0", "team-a", "app")
	waitFor(t, "the apply", func() bool { return srv.has(name) })
	if p, d := rec.counts(); p != 1 || d != 0 {
		t.Fatalf("%d patches, %d deletes for three changes queued together; want 1 apply", p, d)
	}
	rec.mu.Lock()
	p := rec.patches[0]
	rec.mu.Unlock()
	if p.GetPatchType() != types.ApplyPatchType || p.GetName() != name || p.GetNamespace() != "team-a" || p.GetResource() != GVR {
		t.Fatalf("patch %s %s/%s of %v, want an apply of team-a/%s", p.GetPatchType(), p.GetNamespace(), p.GetName(), p.GetResource(), name)
	}
	var sent unstructured.Unstructured
	if err := sent.UnmarshalJSON(p.GetPatch()); err != nil {
		t.Fatal(err)
	}
	owners := sent.GetOwnerReferences()
	if sent.GetKind() != "SecretProviderClassPodStatus" || sent.GetAPIVersion() != GVR.GroupVersion().String() ||
		sent.GetLabels()[NodeLabel] != "node-a" || len(owners) != 1 ||
		owners[0].Kind != "Pod" || owners[0].APIVersion != "v1" || owners[0].Name != "web-0" || owners[0].UID != "uid-1" {
		t.Fatalf("object %s %s labels %v owners %+v", sent.GetAPIVersion(), sent.GetKind(), sent.GetLabels(), owners)
	}
	status, _, _ := unstructured.NestedMap(sent.Object, "status")
	objects, _ := status["objects"].([]any)
	if status["podName"] != "web-0" || status["secretProviderClassName"] != "app" || status["mounted"] != true ||
		status["targetPath"] != "/pods/uid-1/mount" || len(objects) != 1 ||
		objects[0].(map[string]any)["id"] != "secret/db" || objects[0].(map[string]any)["version"] != "3" {
		t.Fatalf("status %v", status)
	}
	srv.mu.Lock()
	uid, rv := srv.objs[name].GetUID(), srv.objs[name].GetResourceVersion()
	srv.mu.Unlock()

	w.Gone(v)
	waitFor(t, "the delete", func() bool { return !srv.has(name) })
	if p, d := rec.counts(); p != 1 || d != 1 {
		t.Fatalf("%d patches, %d deletes; want 1 and 1", p, d)
	}
	rec.mu.Lock()
	del := rec.deletes[0]
	rec.mu.Unlock()
	pre := del.GetDeleteOptions().Preconditions
	if del.GetName() != name || del.GetNamespace() != "team-a" || pre == nil || pre.UID == nil || pre.ResourceVersion == nil ||
		*pre.UID != uid || *pre.ResourceVersion != rv {
		t.Fatalf("delete of %s/%s with preconditions %+v; want uid %s resourceVersion %s", del.GetNamespace(), del.GetName(), pre, uid, rv)
	}
}

// Nothing is sent for what the writer must not touch: a volume without a
// class, pod name or pod uid; a name that would be invalid; and a delete of
// an object this node never wrote (left to the garbage collector, counted
// as skipped).
func TestNoRequests(t *testing.T) {
	_, client := newFake()
	rec := record(client)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	reg := prometheus.NewRegistry()
	w, err := New(Options{Client: client, Node: "n", QPS: 1000, Registerer: reg, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	go w.Run(ctx)
	pod := provider.Pod{Namespace: "ns", Name: "web-0", UID: "uid-1"}
	w.Changed(ctx, hook.Volume{ID: "a", Pod: pod})                                                                          // no class
	w.Changed(ctx, hook.Volume{ID: "b", Pod: provider.Pod{Namespace: "ns", UID: "u"}, Class: &class.Class{Name: "app"}})    // no pod name
	w.Changed(ctx, hook.Volume{ID: "c", Pod: provider.Pod{Namespace: "ns", Name: "web-0"}, Class: &class.Class{Name: "a"}}) // no uid
	w.Changed(ctx, hook.Volume{ID: "d", Pod: provider.Pod{Namespace: "ns", Name: "Web_0", UID: "u"}, Class: &class.Class{Name: "app"}})
	w.Gone(hook.Volume{ID: "e", Pod: pod, Class: &class.Class{Name: "never-written"}})
	waitFor(t, "the skipped delete", func() bool {
		return testutil.ToFloat64(w.writes.WithLabelValues("delete", "skipped")) == 1
	})
	if p, d := rec.counts(); p != 0 || d != 0 {
		t.Fatalf("%d patches, %d deletes; want none", p, d)
	}
}

// A failed apply is retried (with backoff) until it succeeds, and counted
// by the API's reason.
func TestApplyRetried(t *testing.T) {
	srv, client := newFake()
	var mu sync.Mutex
	fail := 1
	client.PrependReactor("patch", "*", func(k8stesting.Action) (bool, runtime.Object, error) {
		mu.Lock()
		defer mu.Unlock()
		if fail > 0 {
			fail--
			return true, nil, apierrors.NewServiceUnavailable("try later")
		}
		return false, nil, nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w, err := New(Options{Client: client, Node: "n", QPS: 1000, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	go w.Run(ctx)
	w.Changed(ctx, hook.Volume{ID: "a", Pod: provider.Pod{Namespace: "ns", Name: "web-0", UID: "uid-1"}, Class: &class.Class{Name: "app"}})
	// The object is stored before the apply returns and is counted.
	waitFor(t, "the retried apply, counted", func() bool {
		return srv.has(Name("web-0", "ns", "app")) && testutil.ToFloat64(w.writes.WithLabelValues("apply", "ok")) >= 1
	})
	if got := testutil.ToFloat64(w.writes.WithLabelValues("apply", "ServiceUnavailable")); got != 1 {
		t.Errorf("failed applies counted %v, want 1", got)
	}
	if got := testutil.ToFloat64(w.writes.WithLabelValues("apply", "ok")); got != 1 {
		t.Errorf("applies counted %v, want 1", got)
	}
}
