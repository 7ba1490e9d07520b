package fake

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"sigs.k8s.io/yaml"

	"github.com/secretfs/secretfs/provider"
)

func exampleClassParams(t testing.TB) map[string]string {
	t.Helper()
	raw, err := os.ReadFile("testdata/example-class.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var class struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Metadata   struct {
			Name      string `json:"name"`
			Namespace string `json:"namespace"`
		} `json:"metadata"`
		Spec struct {
			Provider   string            `json:"provider"`
			Parameters map[string]string `json:"parameters"`
		} `json:"spec"`
	}
	if err := yaml.UnmarshalStrict(raw, &class); err != nil {
		t.Fatal(err)
	}
	if class.APIVersion != "secrets-store.csi.x-k8s.io/v1" || class.Kind != "SecretProviderClass" ||
		class.Metadata.Name != "demo" || class.Metadata.Namespace != "default" || class.Spec.Provider != "fake" {
		t.Fatalf("example class header: %+v", class)
	}
	return class.Spec.Parameters
}

func TestExampleClass(t *testing.T) {
	req := request(exampleClassParams(t))
	res := mustFetch(t, New(Options{}), req)
	want := map[string]os.FileMode{
		"db-password": 0o400, "api-key": 0o440, "config/app.yaml": 0o644, "signing-key": 0o600, "greeting": 0o644,
	}
	if len(res.Files) != len(want) {
		t.Fatalf("got %d files, want %d", len(res.Files), len(want))
	}
	for _, f := range res.Files {
		if m, ok := want[f.Path]; !ok || m != f.Mode {
			t.Errorf("file %s mode %o; want %o (known %v)", f.Path, f.Mode, m, ok)
		}
		if len(f.Contents) == 0 {
			t.Errorf("file %s is empty", f.Path)
		}
	}
	if got := string(res.Files[2].Contents); got != "listen: 127.0.0.1:8080\nlogLevel: info\n" {
		t.Errorf("config/app.yaml = %q", got)
	}
	if got := string(res.Files[4].Contents); got != "hello from secretfs\n" {
		t.Errorf("greeting = %q", got)
	}
	if n := len(res.Files[0].Contents); n != 32 {
		t.Errorf("db-password has %d bytes, want 32", n)
	}
}

func TestGenerate(t *testing.T) {
	base := generate("default", "db", "", "", 100)
	if len(base) != 100 {
		t.Fatalf("len = %d", len(base))
	}
	for _, c := range base {
		if !strings.ContainsRune(genAlphabet, rune(c)) {
			t.Fatalf("byte %q is not in the alphabet", c)
		}
	}
	if !bytes.Equal(base, generate("default", "db", "", "", 100)) {
		t.Error("same inputs gave different values")
	}
	if !bytes.HasPrefix(base, generate("default", "db", "", "", 7)) {
		t.Error("a shorter value is not a prefix of a longer one")
	}
	for name, other := range map[string][]byte{
		"namespace": generate("other", "db", "", "", 100),
		"name":      generate("default", "db2", "", "", 100),
		"version":   generate("default", "db", "v2", "", 100),
		"seed":      generate("default", "db", "", "x", 100),
		"ambiguous": generate("default", "d", "b", "", 100),
	} {
		if bytes.Equal(base, other) {
			t.Errorf("changing the %s did not change the value", name)
		}
	}
	// Through Fetch: the same in every Fake, so restarts do not rotate.
	req := request(objects("- {objectName: db, generate: 40}"))
	a := mustFetch(t, New(Options{}), req)
	b := mustFetch(t, New(Options{}), req)
	if !bytes.Equal(a.Files[0].Contents, b.Files[0].Contents) || a.Versions[0] != b.Versions[0] {
		t.Error("two fakes generated different values")
	}
}

func TestVersions(t *testing.T) {
	f := New(Options{})
	res := mustFetch(t, f, request(objects("- {objectName: a, value: one}\n- {objectName: b, objectAlias: d/b, value: one}\n")))
	if len(res.Versions) != 2 || res.Versions[0].ID != "a" || res.Versions[1].ID != "d/b" {
		t.Fatalf("versions = %+v", res.Versions)
	}
	for _, v := range res.Versions {
		if len(v.Version) != 16 || strings.Trim(v.Version, "0123456789abcdef") != "" {
			t.Errorf("version %q is not 16 hex digits", v.Version)
		}
	}
	if res.Versions[0].Version == res.Versions[1].Version {
		t.Error("equal values of different objects have equal versions")
	}
	again := mustFetch(t, f, request(objects("- {objectName: a, value: one}\n")))
	if again.Versions[0] != res.Versions[0] {
		t.Error("version changed without a content change")
	}
	changed := mustFetch(t, f, request(objects("- {objectName: a, value: two}\n")))
	if changed.Versions[0].Version == res.Versions[0].Version {
		t.Error("version did not change with the content")
	}
}

func TestResultIsACopy(t *testing.T) {
	f := New(Options{})
	req := request(objects("- {objectName: a, value: secret}"))
	res := mustFetch(t, f, req)
	for i := range res.Files[0].Contents {
		res.Files[0].Contents[i] = 0 // the driver may wipe buffers after writing
	}
	if got := string(mustFetch(t, f, req).Files[0].Contents); got != "secret" {
		t.Errorf("after wiping a result, the next Fetch returned %q", got)
	}
}

// writeAtomic replaces a data file the way the package documentation says.
func writeAtomic(t *testing.T, path, contents string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(filepath.Dir(path), ".tmp-"+filepath.Base(path))
	if err := os.WriteFile(tmp, []byte(contents), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func TestDataDirOverrideAndRotation(t *testing.T) {
	dir := t.TempDir()
	f := New(Options{DataDir: dir})
	req := request(objects("- {objectName: db, value: from-class}\n- {objectName: api, generate: 8}\n- {objectName: only-file, objectAlias: sub/f}\n"))

	_, err := f.Fetch(context.Background(), req)
	if provider.CodeOf(err) != codes.NotFound || !strings.Contains(err.Error(), "only-file") {
		t.Fatalf("object without value and data file: got %v, want NotFound naming it", err)
	}

	writeAtomic(t, filepath.Join(dir, "default", "only-file"), "v1")
	res := mustFetch(t, f, req)
	if got := string(res.Files[0].Contents); got != "from-class" {
		t.Errorf("db without data file = %q, want the class value", got)
	}
	if got := string(res.Files[2].Contents); got != "v1" {
		t.Errorf("only-file = %q, want v1", got)
	}

	writeAtomic(t, filepath.Join(dir, "default", "db"), "rotated-1")
	writeAtomic(t, filepath.Join(dir, "default", "api"), "api-from-file")
	rotated := mustFetch(t, f, req)
	if got := string(rotated.Files[0].Contents); got != "rotated-1" {
		t.Errorf("db = %q, want the data file", got)
	}
	if got := string(rotated.Files[1].Contents); got != "api-from-file" {
		t.Errorf("api = %q, want the data file over generate", got)
	}
	if rotated.Versions[0].Version == res.Versions[0].Version || rotated.Versions[2] != res.Versions[2] {
		t.Errorf("versions: before %+v after %+v; want only db and api to change", res.Versions, rotated.Versions)
	}

	writeAtomic(t, filepath.Join(dir, "default", "db"), "rotated-2")
	if got := string(mustFetch(t, f, req).Files[0].Contents); got != "rotated-2" {
		t.Errorf("db after second rotation = %q", got)
	}
	if err := os.Remove(filepath.Join(dir, "default", "db")); err != nil {
		t.Fatal(err)
	}
	if got := string(mustFetch(t, f, req).Files[0].Contents); got != "from-class" {
		t.Errorf("db after removing the data file = %q, want the class value again", got)
	}

	// Another namespace does not see default's files.
	other := request(req.Parameters)
	other.Pod.Namespace = "other"
	if _, err := f.Fetch(context.Background(), other); provider.CodeOf(err) != codes.NotFound {
		t.Errorf("namespace other read default's data file: %v", err)
	}
	// A missing data directory means no overrides.
	gone := New(Options{DataDir: filepath.Join(dir, "missing")})
	if got := string(mustFetch(t, gone, request(objects("- {objectName: db, value: c}"))).Files[0].Contents); got != "c" {
		t.Errorf("missing data dir: %q", got)
	}
}

func TestDataDirRefusesUnsafeFiles(t *testing.T) {
	dir := t.TempDir()
	outside := t.TempDir()
	if err := os.WriteFile(filepath.Join(outside, "secret"), []byte(canary), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(outside, "ns"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(outside, "ns", "a"), []byte(canary), 0o600); err != nil {
		t.Fatal(err)
	}
	nsDir := filepath.Join(dir, "default")
	if err := os.MkdirAll(nsDir, 0o700); err != nil {
		t.Fatal(err)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.Symlink(filepath.Join(outside, "secret"), filepath.Join(nsDir, "link")))
	must(syscall.Mkfifo(filepath.Join(nsDir, "fifo"), 0o600))
	must(os.Mkdir(filepath.Join(nsDir, "adir"), 0o700))
	must(os.WriteFile(filepath.Join(nsDir, "huge"), make([]byte, maxDataFile+1), 0o600))
	must(os.Symlink(filepath.Join(outside, "ns"), filepath.Join(dir, "linked")))
	must(os.WriteFile(filepath.Join(dir, "filens"), nil, 0o600))

	f := New(Options{DataDir: dir})
	for _, tc := range []struct{ ns, object, want string }{
		{"default", "link", "symbolic link"},
		{"default", "fifo", "not a regular file"},
		{"default", "adir", "not a regular file"},
		{"default", "huge", "larger than"},
		{"linked", "a", "not a directory"},
		{"filens", "a", "not a directory"},
	} {
		req := request(objects("- {objectName: " + tc.object + ", value: class}"))
		req.Pod.Namespace = tc.ns
		res, err := f.Fetch(context.Background(), req)
		if provider.CodeOf(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s/%s: got %v, want FailedPrecondition %q", tc.ns, tc.object, err, tc.want)
		}
		if res != nil {
			t.Errorf("%s/%s: got a result with an error", tc.ns, tc.object)
		}
	}
}

// TestTraversalNeverReadsOutside tries every input a class author or pod
// controls to reach a file outside <dataDir>/<namespace>/.
func TestTraversalNeverReadsOutside(t *testing.T) {
	base := t.TempDir()
	dataDir := filepath.Join(base, "data")
	if err := os.MkdirAll(filepath.Join(dataDir, "default"), 0o700); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"secret", "data/secret", "data/other-secret"} {
		if err := os.WriteFile(filepath.Join(base, p), []byte(canary), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	f := New(Options{DataDir: dataDir})
	for _, tc := range []struct{ ns, name, alias string }{
		{"default", "../secret", ""},
		{"default", "../../secret", ""},
		{"default", "..", ""},
		{"default", "/etc/passwd", ""},
		{"default", "a", "../../secret"},
		{"default", "a", "/secret"},
		{"..", "secret", ""},
		{"../..", "secret", ""},
		{".", "secret", ""},
		{"default/..", "secret", ""},
		{"", "secret", ""},
	} {
		spec := fmt.Sprintf("- {objectName: %q, generate: 4", tc.name)
		if tc.alias != "" {
			spec += fmt.Sprintf(", objectAlias: %q", tc.alias)
		}
		req := request(objects(spec + "}"))
		req.Pod.Namespace = tc.ns
		res, err := f.Fetch(context.Background(), req)
		if provider.CodeOf(err) != codes.InvalidArgument {
			t.Errorf("%+v: got %v, want InvalidArgument", tc, err)
		}
		if res != nil {
			t.Errorf("%+v: returned files", tc)
		}
	}
}

func TestFailFirst(t *testing.T) {
	f := New(Options{})
	params := objects("- {objectName: a, value: x}")
	params["failFirst"] = "3"
	for i := 1; i <= 3; i++ {
		_, err := f.Fetch(context.Background(), request(params))
		if provider.CodeOf(err) != codes.Unavailable || !strings.Contains(err.Error(), fmt.Sprintf("%d of 3", i)) {
			t.Fatalf("call %d: got %v, want injected Unavailable", i, err)
		}
	}
	if n := f.ObjectFetches("default", "a"); n != 0 {
		t.Errorf("ObjectFetches during failures = %d, want 0", n)
	}
	mustFetch(t, f, request(params))
	mustFetch(t, f, request(params))
	if f.Calls() != 5 || f.ObjectFetches("default", "a") != 2 {
		t.Errorf("Calls = %d, ObjectFetches = %d; want 5, 2", f.Calls(), f.ObjectFetches("default", "a"))
	}

	// The count is per namespace and class.
	other := request(params)
	other.Pod.Namespace = "other"
	if _, err := f.Fetch(context.Background(), other); provider.CodeOf(err) != codes.Unavailable {
		t.Errorf("first call in another namespace: %v", err)
	}
	otherClass := request(params)
	otherClass.Class = "demo2"
	if _, err := f.Fetch(context.Background(), otherClass); provider.CodeOf(err) != codes.Unavailable {
		t.Errorf("first call of another class: %v", err)
	}

	for name, want := range map[string]codes.Code{
		"PermissionDenied": codes.PermissionDenied, "NotFound": codes.NotFound, "DEADLINE_EXCEEDED": codes.DeadlineExceeded,
	} {
		p := objects("- {objectName: a, value: x}")
		p["failFirst"], p["failCode"] = "1", name
		if _, err := New(Options{}).Fetch(context.Background(), request(p)); provider.CodeOf(err) != want {
			t.Errorf("failCode %s: got %v", name, err)
		}
	}
	zero := objects("- {objectName: a, value: x}")
	zero["failFirst"] = "0"
	mustFetch(t, New(Options{}), request(zero))
}

func TestDeny(t *testing.T) {
	f := New(Options{})
	params := objects("- {objectName: a, value: x}")
	params["deny"] = " revoked , also-revoked,"
	for _, sa := range []string{"revoked", "also-revoked"} {
		req := request(params)
		req.Pod.ServiceAccount = sa
		_, err := f.Fetch(context.Background(), req)
		if provider.CodeOf(err) != codes.PermissionDenied || !strings.Contains(err.Error(), sa) {
			t.Errorf("%s: got %v, want PermissionDenied naming it", sa, err)
		}
	}
	if n := f.ObjectFetches("default", "a"); n != 0 {
		t.Errorf("denied identities read the object %d times", n)
	}
	mustFetch(t, f, request(params)) // service account "app"
	empty := objects("- {objectName: a, value: x}")
	empty["deny"] = ""
	mustFetch(t, f, request(empty))
}

// fakeClock is a settable clock for rateLimit.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func TestRateLimit(t *testing.T) {
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	f := New(Options{Now: clock.Now})
	params := objects("- {objectName: a, value: x}")
	params["rateLimit"] = "2"
	fetch := func() error { _, err := f.Fetch(context.Background(), request(params)); return err }

	for i := 0; i < 2; i++ {
		if err := fetch(); err != nil {
			t.Fatalf("call %d within the limit: %v", i, err)
		}
	}
	err := fetch()
	if provider.CodeOf(err) != codes.Unavailable || !strings.Contains(err.Error(), "throttled (429)") {
		t.Fatalf("over the limit: got %v, want Unavailable throttled (429)", err)
	}
	clock.Add(500 * time.Millisecond) // one token back at 2/s
	if err := fetch(); err != nil {
		t.Errorf("after 500ms: %v", err)
	}
	if err := fetch(); provider.CodeOf(err) != codes.Unavailable {
		t.Errorf("second call after 500ms: %v", err)
	}
	other := request(params)
	other.Pod.Namespace = "other"
	if _, err := f.Fetch(context.Background(), other); err != nil {
		t.Errorf("another namespace has its own bucket: %v", err)
	}

	// A new rate applies to the existing bucket.
	clock.Add(time.Hour)
	params["rateLimit"] = "0.5"
	if err := fetch(); err != nil {
		t.Errorf("at 0.5/s, first call: %v", err)
	}
	if err := fetch(); provider.CodeOf(err) != codes.Unavailable {
		t.Errorf("at 0.5/s, second call: %v", err)
	}
	clock.Add(2 * time.Second)
	if err := fetch(); err != nil {
		t.Errorf("at 0.5/s after 2s: %v", err)
	}
	if got := f.ObjectFetches("default", "a"); got != 5 {
		t.Errorf("ObjectFetches = %d, want 5 (throttled calls read nothing)", got)
	}
}

func TestLatencyHonoursContext(t *testing.T) {
	params := objects("- {objectName: a, value: x}")
	params["latency"] = "9m"
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := New(Options{}).Fetch(ctx, request(params)); provider.CodeOf(err) != codes.DeadlineExceeded {
		t.Errorf("deadline during latency: got %v", err)
	}
	ctx, cancel = context.WithCancel(context.Background())
	cancel()
	params["latency"] = "0s"
	if _, err := New(Options{}).Fetch(ctx, request(params)); provider.CodeOf(err) != codes.Canceled {
		t.Errorf("canceled context: got %v", err)
	}
	params["latency"] = "1ms"
	mustFetch(t, New(Options{}), request(params))
}

func TestConcurrentFetches(t *testing.T) {
	dir := t.TempDir()
	writeAtomic(t, filepath.Join(dir, "ns-1", "b"), "from-file")
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	f := New(Options{DataDir: dir, Now: clock.Now})
	plain := objects("- {objectName: a, generate: 16}\n- {objectName: b, value: x}\n")
	flaky := objects("- {objectName: c, value: x}")
	flaky["failFirst"] = "7"
	limited := objects("- {objectName: d, value: x}")
	limited["rateLimit"] = "10" // the clock stands still: exactly 10 pass

	const workers, perWorker = 16, 25
	var failed, throttled atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < perWorker; i++ {
				req := request(plain)
				req.Pod.Namespace = fmt.Sprintf("ns-%d", w%2)
				res, err := f.Fetch(context.Background(), req)
				if err != nil {
					t.Error(err)
					return
				}
				if want := map[bool]string{true: "from-file", false: "x"}[w%2 == 1]; string(res.Files[1].Contents) != want {
					t.Errorf("b = %q, want %q", res.Files[1].Contents, want)
				}
				flakyReq := request(flaky)
				flakyReq.Class = "flaky"
				if _, err := f.Fetch(context.Background(), flakyReq); err != nil {
					failed.Add(1)
				}
				limitedReq := request(limited)
				limitedReq.Class = "limited"
				if _, err := f.Fetch(context.Background(), limitedReq); err != nil {
					throttled.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	total := int64(workers * perWorker)
	if f.Calls() != 3*total {
		t.Errorf("Calls = %d, want %d", f.Calls(), 3*total)
	}
	if got := f.ObjectFetches("ns-0", "a") + f.ObjectFetches("ns-1", "a"); got != total {
		t.Errorf("ObjectFetches(a) = %d, want %d", got, total)
	}
	if failed.Load() != 7 || f.ObjectFetches("default", "c") != total-7 {
		t.Errorf("failFirst 7: %d failures, %d reads; want 7, %d", failed.Load(), f.ObjectFetches("default", "c"), total-7)
	}
	if throttled.Load() != total-10 || f.ObjectFetches("default", "d") != 10 {
		t.Errorf("rateLimit 10: %d throttled, %d reads; want %d, 10", throttled.Load(), f.ObjectFetches("default", "d"), total-10)
	}
}

func TestParsedCacheIsBounded(t *testing.T) {
	f := New(Options{})
	for i := 0; i < 3*maxParsed; i++ {
		mustFetch(t, f, request(objects(fmt.Sprintf("- {objectName: a%d, value: x}", i))))
	}
	n := 0
	f.parsed.Range(func(any, any) bool { n++; return true })
	if n > maxParsed {
		t.Errorf("parse cache holds %d entries, bound is %d", n, maxParsed)
	}
}

func BenchmarkFetch5(b *testing.B) {
	f := New(Options{})
	req := request(exampleClassParams(b))
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := f.Fetch(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkFetch5DataDir(b *testing.B) {
	dir := b.TempDir()
	for _, name := range []string{"db-password", "api-key"} {
		if err := os.MkdirAll(filepath.Join(dir, "default"), 0o700); err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "default", name), []byte("from-file"), 0o600); err != nil {
			b.Fatal(err)
		}
	}
	f := New(Options{DataDir: dir})
	req := request(exampleClassParams(b))
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := f.Fetch(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkFetch5Parallel(b *testing.B) {
	f := New(Options{})
	req := request(exampleClassParams(b))
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := f.Fetch(context.Background(), req); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// The class's parameters are decoded in the volume's turn among the node's
// computations (Request.Turn), taken once per fetch and ended before the
// backend is read; a turn that cannot be had fails the fetch with its error.
func TestFetchDecodesInTurn(t *testing.T) {
	f := New(Options{})
	req := request(objects("- {objectName: a, value: x}\n"))
	turns, ended := 0, 0
	req.Turn = func() (func(), error) { turns++; return func() { ended++ }, nil }
	if _, err := f.Fetch(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	if turns != 1 || ended != 1 {
		t.Errorf("%d turns taken, %d ended; want 1 and 1", turns, ended)
	}
	req.Turn = func() (func(), error) { return nil, provider.Errorf(codes.DeadlineExceeded, "no turn") }
	if _, err := f.Fetch(context.Background(), req); provider.CodeOf(err) != codes.DeadlineExceeded {
		t.Errorf("%v, want the turn's error", err)
	}
}
