package kubernetes

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/secretfs/secretfs/provider"
)

// putLabelled creates Secret name in the fixture namespace with labels
// and one key, k, holding value.
func (f *fixture) putLabelled(name string, labels map[string]string, value string) {
	f.t.Helper()
	_, err := f.s.Client.CoreV1().Secrets(f.ns).Create(f.ctx(), &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Data:       map[string][]byte{"k": []byte(value)},
	}, metav1.CreateOptions{})
	if err != nil {
		f.t.Fatal(err)
	}
}

// label sets (value non-nil) or removes (nil) label key on Secret name.
func (f *fixture) label(name, key string, value *string) {
	f.t.Helper()
	v := "null"
	if value != nil {
		v = fmt.Sprintf("%q", *value)
	}
	patch := fmt.Sprintf(`{"metadata":{"labels":{%q:%s}}}`, key, v)
	if _, err := f.s.Client.CoreV1().Secrets(f.ns).Patch(f.ctx(), name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		f.t.Fatal(err)
	}
}

func (l *requestLog) listCounts() (lists int, limits []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lists, slices.Clone(l.listLimits)
}

func fileMap(res *provider.Result) map[string]string {
	out := make(map[string]string, len(res.Files))
	for _, f := range res.Files {
		out[f.Path] = string(f.Contents)
	}
	return out
}

func TestSelectorFetch(t *testing.T) {
	f := newFixture(t)
	f.serviceAccount(f.ns, "app")
	f.grant(f.ns, "app", []string{"get", "list"})
	f.putLabelled("a", map[string]string{"app": "shop"}, "A")
	f.putLabelled("b", map[string]string{"app": "shop", "tier": "db"}, "B")
	f.putLabelled("c", map[string]string{"app": "other", "tier": "db"}, "C")
	f.putSecret(f.ns, "named", map[string][]byte{"pw": []byte("N")})

	req := f.request("app", "- labelSelector: app=shop\n- labelSelector: \"tier in (db), app\"\n  path: db\n  filePermission: \"0400\"\n- secretName: named\n  key: pw\n")
	res, err := f.p.Fetch(f.ctx(), req)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"a/k": "A", "b/k": "B", "db/b/k": "B", "db/c/k": "C", "pw": "N"}
	if got := fileMap(res); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("files %v, want %v", got, want)
	}
	for _, file := range res.Files {
		if strings.HasPrefix(file.Path, "db/") != (file.Mode == 0o400) {
			t.Errorf("file %s mode %o", file.Path, file.Mode)
		}
	}
	var ids []string
	for _, v := range res.Versions {
		ids = append(ids, v.ID)
		if v.Version == "" {
			t.Errorf("version %s is empty", v.ID)
		}
	}
	if want := []string{"secret/named", "selector/app,tier in (db)", "selector/app=shop"}; fmt.Sprint(ids) != fmt.Sprint(want) {
		t.Errorf("version IDs %q, want %q", ids, want)
	}
	if lists, _ := f.log.listCounts(); lists != 2 {
		t.Errorf("%d list requests for two selectors, want 2", lists)
	}
	// A selector that selects nothing mounts nothing and is no error.
	res, err = f.p.Fetch(f.ctx(), f.request("app", "- labelSelector: app=none\n"))
	if err != nil || len(res.Files) != 0 {
		t.Errorf("empty selection: %v, %d files", err, len(res.Files))
	}
}

func TestSelectorPages(t *testing.T) {
	f := newFixture(t)
	f.serviceAccount(f.ns, "app")
	f.grant(f.ns, "app", []string{"list"})
	const n = 2*maxListPage + 5
	for i := range n {
		f.putLabelled(fmt.Sprintf("s%03d", i), map[string]string{"sel": "yes"}, fmt.Sprint(i))
	}
	f.putLabelled("unlabelled", nil, "x")
	req := f.request("app", "- labelSelector: sel=yes\n")
	req.Limits = provider.Limits{MaxFiles: 1000}
	res, err := f.p.Fetch(f.ctx(), req)
	if err != nil {
		t.Fatal(err)
	}
	files := fileMap(res)
	if len(files) != n || files["s000/k"] != "0" || files[fmt.Sprintf("s%03d/k", n-1)] != fmt.Sprint(n-1) {
		t.Errorf("%d files, want %d (s000/k=%q)", len(files), n, files["s000/k"])
	}
	lists, limits := f.log.listCounts()
	if lists != 3 || fmt.Sprint(limits) != "[100 100 100]" {
		t.Errorf("%d list requests with limits %v, want 3 pages of 100", lists, limits)
	}
}

func TestSelectorOverMaxFilesBeforeContent(t *testing.T) {
	f := newFixture(t)
	f.serviceAccount(f.ns, "app")
	f.grant(f.ns, "app", []string{"get", "list"})
	for i := range 12 {
		f.putLabelled(fmt.Sprintf("s%02d", i), map[string]string{"sel": "yes"}, "v")
	}
	f.putSecret(f.ns, "named", map[string][]byte{"pw": []byte("N")})
	req := f.request("app", "- secretName: named\n- labelSelector: sel=yes\n")
	req.Limits = provider.Limits{MaxFiles: 10}
	_, err := f.p.Fetch(f.ctx(), req)
	wantCode(t, err, codes.ResourceExhausted, "--max-files", `labelSelector "sel=yes"`, "more than 10")
	lists, limits := f.log.listCounts()
	gets, _ := f.log.counts()
	// One page of at most the allowed files plus one, and no GET of the
	// named Secret: the selection failed before any content was fetched.
	if lists != 1 || fmt.Sprint(limits) != "[11]" || gets != 1 {
		t.Errorf("%d lists (limits %v), %d requests in all; want one list of limit 11 and nothing else", lists, limits, gets)
	}
}

func TestSelectorCollisions(t *testing.T) {
	f := newFixture(t)
	f.serviceAccount(f.ns, "app")
	f.grant(f.ns, "app", []string{"get", "list"})
	f.putLabelled("db", map[string]string{"app": "shop", "tier": "db"}, "v")
	f.putSecret(f.ns, "other", map[string][]byte{"pw": []byte("N")})

	// Two selectors that both select db write db/k twice.
	_, err := f.p.Fetch(f.ctx(), f.request("app", "- labelSelector: app=shop\n- labelSelector: tier=db\n"))
	wantCode(t, err, codes.InvalidArgument, `file "db/k"`,
		`Secret `+f.ns+`/db (labelSelector "app=shop") key k`, `Secret `+f.ns+`/db (labelSelector "tier=db") key k`)
	// A named object whose path is a selected file.
	_, err = f.p.Fetch(f.ctx(), f.request("app", "- labelSelector: app=shop\n- secretName: other\n  key: pw\n  path: db/k\n"))
	wantCode(t, err, codes.InvalidArgument, `file "db/k"`, `labelSelector "app=shop"`, "Secret "+f.ns+"/other key pw")
	// With a path each, they coexist.
	if _, err := f.p.Fetch(f.ctx(), f.request("app", "- labelSelector: app=shop\n- labelSelector: tier=db\n  path: tier\n")); err != nil {
		t.Fatal(err)
	}
}

func TestSelectorNeedsListPermission(t *testing.T) {
	f := newFixture(t)
	f.serviceAccount(f.ns, "getonly")
	f.grant(f.ns, "getonly", []string{"get", "watch"}, "db")
	f.putLabelled("db", map[string]string{"app": "shop"}, "v")
	_, err := f.p.Fetch(f.ctx(), f.request("getonly", "- labelSelector: app=shop\n"))
	wantCode(t, err, codes.PermissionDenied, "service account "+f.ns+"/getonly", "may not list Secrets in namespace "+f.ns,
		`labelSelector "app=shop"`, "verbs [list, watch]")
	// Listing another namespace is never attempted: the pod's is the only one.
	other := f.ns + "-other"
	f.createNamespace(other)
	f.grant(other, "getonly", []string{"list"})
	_, err = f.p.Fetch(f.ctx(), f.request("getonly", "- labelSelector: app=shop\n"))
	wantCode(t, err, codes.PermissionDenied, "may not list Secrets in namespace "+f.ns)
}

func TestSelectorWatch(t *testing.T) {
	f := newFixture(t)
	f.serviceAccount(f.ns, "app")
	f.grant(f.ns, "app", []string{"list", "watch"})
	f.putLabelled("a", map[string]string{"app": "shop"}, "A")
	f.putLabelled("b", map[string]string{"app": "shop"}, "B")
	f.putLabelled("later", nil, "L")
	const objects = "- labelSelector: app=shop\n"

	var c counter
	stop, err := f.p.Watch(f.mount("app", objects), c.changed)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	f.eventually("the watch to open", func() bool { return f.p.OpenWatches() == 1 })
	// A Secret that does not match changing is no change of the selection:
	// its event would come before the labelling's on the one stream.
	f.putSecret(f.ns, "unrelated", map[string][]byte{"x": []byte("y")})

	shop := "shop"
	f.label("later", "app", &shop)
	f.eventually("changed after a Secret is labelled", func() bool { return c.get() >= 1 })
	res, err := f.p.Fetch(f.ctx(), f.request("app", objects))
	if err != nil {
		t.Fatal(err)
	}
	if n := c.get(); n != 1 {
		t.Errorf("changed called %d times for one change of the selection (and one of an unselected Secret)", n)
	}
	if got := fileMap(res); len(got) != 3 || got["later/k"] != "L" {
		t.Errorf("after labelling: files %v", got)
	}

	seen := c.get()
	f.label("a", "app", nil)
	f.eventually("changed after a Secret is unlabelled", func() bool { return c.get() > seen })
	res, err = f.p.Fetch(f.ctx(), f.request("app", objects))
	if err != nil {
		t.Fatal(err)
	}
	if got := fileMap(res); len(got) != 2 || got["a/k"] != "" {
		t.Errorf("after unlabelling: files %v", got)
	}

	// Two deletions in a row are two changes.
	seen = c.get()
	for _, name := range []string{"b", "later"} {
		if err := f.s.Client.CoreV1().Secrets(f.ns).Delete(f.ctx(), name, deleteNow); err != nil {
			t.Fatal(err)
		}
	}
	f.eventually("changed after each delete", func() bool { return c.get() >= seen+2 })
	if _, watches := f.log.counts(); watches != 1 {
		t.Errorf("%d watch requests, want 1", watches)
	}
}

func TestSelectorWatchForbidden(t *testing.T) {
	f := newFixture(t)
	f.serviceAccount(f.ns, "listonly")
	f.grant(f.ns, "listonly", []string{"list"})
	f.putLabelled("a", map[string]string{"app": "shop"}, "A")
	var c counter
	stop, err := f.p.Watch(f.mount("listonly", "- labelSelector: app=shop\n"), c.changed)
	wantCode(t, err, codes.PermissionDenied, "may list but not watch Secrets in namespace "+f.ns, `labelSelector "app=shop"`, "add verb watch")
	if stop != nil || f.p.sharedWatches() != 0 {
		t.Errorf("a forbidden selector watch is still held")
	}
}

// A list page is charged to the volume's wire allowance as it streams in:
// Secrets too big for the volume stop the listing, not after it.
func TestSelectorListChargedToWireBudget(t *testing.T) {
	f := newFixture(t)
	f.serviceAccount(f.ns, "app")
	f.grant(f.ns, "app", []string{"list"})
	big := strings.Repeat("x", 600<<10)
	for i := range 3 {
		f.putLabelled(fmt.Sprintf("big%d", i), map[string]string{"sel": "yes"}, big)
	}
	req := f.request("app", "- labelSelector: sel=yes\n")
	req.Limits = provider.Limits{MaxBytes: 64 << 10, MaxFiles: 100}
	_, err := f.p.Fetch(f.ctx(), req)
	wantCode(t, err, codes.ResourceExhausted, "--tmpfs-size", `labelSelector "sel=yes"`)
	f.log.mu.Lock()
	read := f.log.bodyBytes
	f.log.mu.Unlock()
	if limit := req.Limits.WireBytes(); read > limit+64<<10 {
		t.Errorf("read %d bytes of the list, the allowance is %d", read, limit)
	}
}

// A tenant's Secrets without keys make no files, but each one costs the
// list that reads it: they count toward the file limit like a key, so a
// selector over thousands of empty Secrets stops after one page instead of
// paging through all of them on every refresh.
func TestSelectorEmptySecretsCount(t *testing.T) {
	f := newFixture(t)
	f.serviceAccount(f.ns, "app")
	f.grant(f.ns, "app", []string{"list"})
	const n = 300
	for i := range n {
		_, err := f.s.Client.CoreV1().Secrets(f.ns).Create(f.ctx(), &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("e%03d", i), Labels: map[string]string{"sel": "empty"}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
	}
	req := f.request("app", "- labelSelector: sel=empty\n")
	req.Limits = provider.Limits{MaxFiles: 10}
	_, err := f.p.Fetch(f.ctx(), req)
	wantCode(t, err, codes.ResourceExhausted, "--max-files", `labelSelector "sel=empty"`, "more than 10")
	if lists, limits := f.log.listCounts(); lists != 1 || fmt.Sprint(limits) != "[11]" {
		t.Errorf("%d list requests (limits %v) for %d empty Secrets, want one page of 11", lists, limits, n)
	}
}

// Every distinct selector of a class is one list per fetch and one API
// watch per service account on the node, each with its goroutines and
// stream: a class of hundreds of tiny selectors that select nothing (no
// file counts against --max-files) would make hundreds of each. A class
// has at most maxSelectors distinct selectors, refused before any request.
func TestSelectorCountBounded(t *testing.T) {
	f := newFixture(t)
	f.serviceAccount(f.ns, "app")
	f.grant(f.ns, "app", []string{"list", "watch"})
	var items strings.Builder
	for i := range 200 {
		fmt.Fprintf(&items, "- labelSelector: n=%d\n", i)
	}
	_, err := f.p.Fetch(f.ctx(), f.request("app", items.String()))
	wantCode(t, err, codes.InvalidArgument, fmt.Sprintf("more than %d distinct", maxSelectors), "labelSelector")
	_, err = f.p.Watch(f.request("app", items.String()), func() {})
	wantCode(t, err, codes.InvalidArgument, fmt.Sprintf("more than %d distinct", maxSelectors))
	if lists, _ := f.log.listCounts(); lists != 0 {
		t.Errorf("%d list requests for a class refused", lists)
	}
	f.p.mu.Lock()
	watches := len(f.p.watches)
	f.p.mu.Unlock()
	if watches != 0 {
		t.Errorf("%d watches for a class refused", watches)
	}
	// The same selector many times is one selector; maxSelectors distinct
	// ones are served.
	items.Reset()
	for i := range maxSelectors {
		fmt.Fprintf(&items, "- labelSelector: n=%d\n  path: p%d\n- labelSelector: n=%d\n  path: q%d\n", i, i, i, i)
	}
	if _, err := f.p.Fetch(f.ctx(), f.request("app", items.String())); err != nil {
		t.Fatal(err)
	}
	if lists, _ := f.log.listCounts(); lists != maxSelectors {
		t.Errorf("%d list requests for %d distinct selectors", lists, maxSelectors)
	}
}

// Two service accounts of one namespace with the same selector: the one
// that may list and watch opens the node's watch; the other, which may
// not list, joins nothing and reads nothing through it: its fetch and its
// watch are refused, and the node holds one watch (the first's).
func TestSelectorWatchNotSharedAcrossServiceAccounts(t *testing.T) {
	f := newFixture(t)
	f.serviceAccount(f.ns, "app")
	f.grant(f.ns, "app", []string{"list", "watch"})
	f.serviceAccount(f.ns, "intruder")
	f.grant(f.ns, "intruder", []string{"get"}, "unrelated")
	f.putLabelled("a", map[string]string{"app": "shop"}, "A")
	const objects = "- labelSelector: app=shop\n"
	stop, err := f.p.Watch(f.mount("app", objects), func() {})
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	f.eventually("the watch to open", func() bool { return f.p.OpenWatches() == 1 })

	var c counter
	stop2, err := f.p.Watch(f.request("intruder", objects), c.changed)
	wantCode(t, err, codes.PermissionDenied, "service account "+f.ns+"/intruder")
	if stop2 != nil {
		stop2()
	}
	_, err = f.p.Fetch(f.ctx(), f.request("intruder", objects))
	wantCode(t, err, codes.PermissionDenied, "service account "+f.ns+"/intruder", "may not list")
	if n := f.p.sharedWatches(); n != 1 {
		t.Errorf("%d shared watches, want the first service account's only", n)
	}
	shop := "shop"
	f.putLabelled("b", nil, "B")
	f.label("b", "app", &shop)
	f.eventually("the first watch saw the change", func() bool {
		res, err := f.p.Fetch(f.ctx(), f.request("app", objects))
		return err == nil && len(res.Files) == 2
	})
	if n := c.get(); n != 0 {
		t.Errorf("the refused service account was told of %d changes", n)
	}
}
