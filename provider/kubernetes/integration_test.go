package kubernetes

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/secretfs/secretfs/provider"
	"github.com/secretfs/secretfs/test/kubeapi"
)

// One API server for the package, started by the first test that needs it.
var (
	serverOnce sync.Once
	server     *kubeapi.Server
	serverErr  error
	nsCounter  atomic.Int64
)

func TestMain(m *testing.M) {
	code := m.Run()
	if server != nil {
		server.Stop()
	}
	os.Exit(code)
}

func apiServer(t testing.TB) *kubeapi.Server {
	t.Helper()
	serverOnce.Do(func() { server, serverErr = kubeapi.Start() })
	return kubeapi.Require(t, server, serverErr)
}

// requestLog counts the requests the provider sends, and which token each
// watch used. It is test code: tokens stay in memory and are never printed.
type requestLog struct {
	mu          sync.Mutex
	gets        int // every request but watches, lists included
	watches     int
	lists       int      // list requests (GET of the collection)
	listLimits  []string // the limit parameter of each list request
	watchTokens []string
	// GETs whose response body is not closed yet, the most at once, and
	// the bytes read from the network by the provider's client.
	inFlight, maxInFlight int
	bodyBytes             int64
	watchBytes            int64 // read from watch streams
}

func (l *requestLog) wrap(next http.RoundTripper) http.RoundTripper {
	return roundTripFunc(func(req *http.Request) (*http.Response, error) {
		l.mu.Lock()
		if req.URL.Query().Get("watch") == "true" {
			l.watches++
			l.watchTokens = append(l.watchTokens, strings.TrimPrefix(req.Header.Get("Authorization"), "Bearer "))
			l.mu.Unlock()
			resp, err := next.RoundTrip(req)
			if err == nil && resp.Body != nil {
				resp.Body = &countingBody{ReadCloser: resp.Body, l: l, watch: true}
			}
			return resp, err
		}
		if strings.HasSuffix(req.URL.Path, "/secrets") {
			l.lists++
			l.listLimits = append(l.listLimits, req.URL.Query().Get("limit"))
		}
		l.gets++
		l.inFlight++
		l.maxInFlight = max(l.maxInFlight, l.inFlight)
		l.mu.Unlock()
		resp, err := next.RoundTrip(req)
		if err != nil || resp.Body == nil {
			l.mu.Lock()
			l.inFlight--
			l.mu.Unlock()
			return resp, err
		}
		resp.Body = &countingBody{ReadCloser: resp.Body, l: l}
		return resp, nil
	})
}

// countingBody counts what is read and ends the GET's flight on Close.
type countingBody struct {
	io.ReadCloser
	l     *requestLog
	done  bool
	watch bool
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.l.mu.Lock()
	if b.watch {
		b.l.watchBytes += int64(n)
	} else {
		b.l.bodyBytes += int64(n)
	}
	b.l.mu.Unlock()
	return n, err
}

func (b *countingBody) Close() error {
	b.l.mu.Lock()
	if !b.watch && !b.done {
		b.done = true
		b.l.inFlight--
	}
	b.l.mu.Unlock()
	return b.ReadCloser.Close()
}

func (l *requestLog) counts() (gets, watches int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.gets, l.watches
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

type fixture struct {
	t    testing.TB
	s    *kubeapi.Server
	p    *Provider
	log  *requestLog
	logs *syncBuffer
	ns   string
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	s := apiServer(t)
	f := &fixture{t: t, s: s, log: &requestLog{}, logs: &syncBuffer{}}
	// The client-side limit is off: tests count requests, not throttling.
	opts := Options{Host: s.Host, CAData: s.CAData, WrapTransport: f.log.wrap, QPS: 1e6, Burst: 1e6,
		Logger: slog.New(slog.NewTextHandler(f.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	p, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	// A fetch holds the watch it read from for its volume's Watch; tests
	// that fetch without one wait this long for it to close.
	p.holdFor = 300 * time.Millisecond
	f.p = p
	f.ns = fmt.Sprintf("t%d-%d", time.Now().UnixNano()%1e6, nsCounter.Add(1))
	f.createNamespace(f.ns)
	t.Cleanup(func() {
		deadline := time.Now().Add(p.holdFor + 5*time.Second)
		for p.OpenWatches() != 0 && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if n := p.OpenWatches(); n != 0 {
			t.Errorf("%d API watches still open at the end of the test", n)
		}
		if strings.Contains(f.logs.String(), "eyJ") {
			t.Errorf("a token-like string was logged")
		}
	})
	return f
}

func (f *fixture) ctx() context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	f.t.Cleanup(cancel)
	return ctx
}

func (f *fixture) createNamespace(ns string) {
	f.t.Helper()
	c := f.s.Client.CoreV1()
	if _, err := c.Namespaces().Create(f.ctx(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) serviceAccount(ns, name string) {
	f.t.Helper()
	_, err := f.s.Client.CoreV1().ServiceAccounts(ns).Create(f.ctx(), &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		f.t.Fatal(err)
	}
}

// grant binds ns/sa to a Role in ns with verbs on the named Secrets.
func (f *fixture) grant(ns, sa string, verbs []string, secrets ...string) {
	f.t.Helper()
	name := sa + "-" + strings.Join(verbs, "-")
	rbac := f.s.Client.RbacV1()
	_, err := rbac.Roles(ns).Create(f.ctx(), &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: verbs, ResourceNames: secrets}},
	}, metav1.CreateOptions{})
	if err != nil {
		f.t.Fatal(err)
	}
	_, err = rbac.RoleBindings(ns).Create(f.ctx(), &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: name},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: sa, Namespace: f.ns}},
	}, metav1.CreateOptions{})
	if err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) putSecret(ns, name string, data map[string][]byte) *corev1.Secret {
	f.t.Helper()
	secrets := f.s.Client.CoreV1().Secrets(ns)
	s, err := secrets.Get(f.ctx(), name, metav1.GetOptions{})
	if err == nil {
		s.Data = data
		s, err = secrets.Update(f.ctx(), s, metav1.UpdateOptions{})
	} else {
		s, err = secrets.Create(f.ctx(), &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name}, Data: data}, metav1.CreateOptions{})
	}
	if err != nil {
		f.t.Fatal(err)
	}
	return s
}

// request builds what the driver passes for a pod of service account sa in
// the fixture namespace, with a token minted like kubelet mints it for the
// CSIDriver item `audience: ""` (no audiences: the API server's own).
func (f *fixture) request(sa, objects string) *provider.Request {
	f.t.Helper()
	tok, exp, err := f.s.Token(f.ctx(), f.ns, sa, nil, nil)
	if err != nil {
		f.t.Fatal(err)
	}
	return &provider.Request{
		Pod:        provider.Pod{Namespace: f.ns, Name: "pod", UID: "uid", ServiceAccount: sa},
		Class:      "class",
		Tokens:     map[string]provider.Token{"": {Token: tok, ExpirationTimestamp: exp}},
		Parameters: map[string]string{"objects": objects},
	}
}

func (f *fixture) eventually(what string, cond func() bool) {
	f.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			f.t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func wantCode(t testing.TB, err error, code codes.Code, contains ...string) {
	t.Helper()
	if provider.CodeOf(err) != code {
		t.Fatalf("want %v, got %v (%v)", code, provider.CodeOf(err), err)
	}
	for _, s := range contains {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not mention %q", err, s)
		}
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func allBytes() []byte {
	b := make([]byte, 256)
	for i := range b {
		b[i] = byte(i)
	}
	return b
}

func TestFetchAsPod(t *testing.T) {
	f := newFixture(t)
	f.serviceAccount(f.ns, "app")
	f.grant(f.ns, "app", []string{"get", "watch"}, "db", "tls")
	db := f.putSecret(f.ns, "db", map[string][]byte{"password": allBytes(), "user": []byte("admin")})
	f.putSecret(f.ns, "tls", map[string][]byte{"tls.crt": []byte("CERT"), "tls.key": []byte("KEY")})

	req := f.request("app", "- secretName: db\n  key: password\n  path: db/pw\n  filePermission: \"0400\"\n- secretName: tls\n  path: tls\n- secretName: db\n  key: user\n")
	res, err := f.p.Fetch(f.ctx(), req)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]struct {
		data string
		mode os.FileMode
	}{
		"db/pw":       {string(allBytes()), 0o400},
		"tls/tls.crt": {"CERT", provider.DefaultFileMode},
		"tls/tls.key": {"KEY", provider.DefaultFileMode},
		"user":        {"admin", provider.DefaultFileMode},
	}
	if len(res.Files) != len(want) {
		t.Fatalf("got %d files, want %d", len(res.Files), len(want))
	}
	for _, file := range res.Files {
		w, ok := want[file.Path]
		if !ok || string(file.Contents) != w.data || file.Mode != w.mode {
			t.Errorf("file %s: mode %o, %d bytes; want %+v", file.Path, file.Mode, len(file.Contents), ok)
		}
	}
	if len(res.Versions) != 2 || res.Versions[0].ID != "secret/db" || res.Versions[0].Version != db.ResourceVersion {
		t.Errorf("versions %+v, want secret/db at %s first", res.Versions, db.ResourceVersion)
	}
	// One request per distinct Secret, whatever the number of objects: the
	// watch the node keeps for it anyway, read from its initial events.
	if gets, watches := f.log.counts(); gets != 0 || watches != 2 {
		t.Errorf("Fetch made %d GETs and %d watches, want 0 and 2", gets, watches)
	}
	// The API server saw the pod's service account, not any other identity.
	user := "system:serviceaccount:" + f.ns + ":app"
	f.eventually("audit entries", func() bool { return len(f.audit(f.ns)) >= 2 })
	for _, ev := range f.audit(f.ns) {
		if ev.User.Username != user || ev.Verb != "watch" || ev.ResponseStatus.Code != 200 {
			t.Errorf("audited %s %s/%s as %s -> %d", ev.Verb, ev.ObjectRef.Namespace, ev.ObjectRef.Name, ev.User.Username, ev.ResponseStatus.Code)
		}
	}
}

// audit returns audited Secret requests made by service accounts of the
// fixture namespace and touching namespace ns.
func (f *fixture) audit(ns string) []kubeapi.AuditEvent {
	f.t.Helper()
	evs, err := f.s.AuditEvents()
	if err != nil {
		f.t.Fatal(err)
	}
	var out []kubeapi.AuditEvent
	for _, ev := range evs {
		if strings.HasPrefix(ev.User.Username, "system:serviceaccount:"+f.ns+":") && ev.ObjectRef.Namespace == ns {
			out = append(out, ev)
		}
	}
	return out
}

func TestFetchDeniedWithoutRole(t *testing.T) {
	f := newFixture(t)
	f.serviceAccount(f.ns, "norole")
	f.putSecret(f.ns, "db", map[string][]byte{"password": []byte("x")})
	res, err := f.p.Fetch(f.ctx(), f.request("norole", "- secretName: db\n"))
	wantCode(t, err, codes.PermissionDenied, "service account "+f.ns+"/norole", "Secret "+f.ns+"/db", "verbs [get, watch]", "resourceNames [db]")
	if res != nil {
		t.Errorf("got a result with the error: %d files", len(res.Files))
	}
	// A Role for another Secret does not help.
	f.grant(f.ns, "norole", []string{"get"}, "other")
	_, err = f.p.Fetch(f.ctx(), f.request("norole", "- secretName: db\n"))
	wantCode(t, err, codes.PermissionDenied)
}

func TestNamespaceScoping(t *testing.T) {
	f := newFixture(t)
	other := f.ns + "-other"
	f.createNamespace(other)
	f.serviceAccount(f.ns, "app")
	f.putSecret(f.ns, "shared", map[string][]byte{"v": []byte("mine")})
	f.putSecret(other, "shared", map[string][]byte{"v": []byte("theirs")})
	// Even with read access to the other namespace, only the pod's own is read.
	f.grant(f.ns, "app", []string{"get", "watch"}, "shared")
	f.grant(other, "app", []string{"get", "watch"}, "shared")

	req := f.request("app", "- secretName: shared\n  key: v\n")
	res, err := f.p.Fetch(f.ctx(), req)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Files) != 1 || string(res.Files[0].Contents) != "mine" {
		t.Fatalf("got %+v", res.Files)
	}
	f.eventually("audit entry of the read", func() bool { return len(f.audit(f.ns)) >= 1 })
	if evs := f.audit(other); len(evs) != 0 {
		t.Errorf("the pod's identity touched namespace %s %d times", other, len(evs))
	}
	// A namespace field is rejected, not ignored.
	req.Parameters["objects"] = "- secretName: shared\n  namespace: " + other + "\n"
	_, err = f.p.Fetch(f.ctx(), req)
	wantCode(t, err, codes.InvalidArgument, "namespace")
}

func TestMissingAndOptional(t *testing.T) {
	f := newFixture(t)
	f.serviceAccount(f.ns, "app")
	f.grant(f.ns, "app", []string{"get"}, "db", "absent")
	f.putSecret(f.ns, "db", map[string][]byte{"user": []byte("u")})

	_, err := f.p.Fetch(f.ctx(), f.request("app", "- secretName: absent\n"))
	wantCode(t, err, codes.NotFound, "Secret "+f.ns+"/absent")
	_, err = f.p.Fetch(f.ctx(), f.request("app", "- secretName: db\n  key: password\n"))
	wantCode(t, err, codes.NotFound, `no key "password"`, "user")

	res, err := f.p.Fetch(f.ctx(), f.request("app", "- secretName: absent\n  optional: true\n- secretName: db\n  key: password\n  optional: true\n- secretName: db\n  key: user\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Files) != 1 || res.Files[0].Path != "user" {
		t.Errorf("files %+v, want only user", res.Files)
	}
	if len(res.Versions) != 2 || res.Versions[0] != (provider.ObjectVersion{ID: "secret/absent"}) {
		t.Errorf("versions %+v", res.Versions)
	}
}

func TestTokenProblems(t *testing.T) {
	f := newFixture(t)
	f.serviceAccount(f.ns, "app")
	f.grant(f.ns, "app", []string{"get"}, "db")
	f.putSecret(f.ns, "db", map[string][]byte{"k": []byte("v")})
	const objects = "- secretName: db\n"

	t.Run("no token for the audience", func(t *testing.T) {
		req := f.request("app", objects)
		req.Tokens = map[string]provider.Token{"vault": req.Tokens[""]}
		_, err := f.p.Fetch(f.ctx(), req)
		wantCode(t, err, codes.FailedPrecondition, "tokenRequests", `audience: ""`)
	})
	t.Run("expired token is not sent", func(t *testing.T) {
		req := f.request("app", objects)
		tok := req.Tokens[""]
		tok.ExpirationTimestamp = time.Now().Add(-time.Minute)
		req.Tokens[""] = tok
		before, _ := f.log.counts()
		_, err := f.p.Fetch(f.ctx(), req)
		wantCode(t, err, codes.Unauthenticated, "expired", "requiresRepublish")
		if after, _ := f.log.counts(); after != before {
			t.Errorf("an expired token was sent to the API server")
		}
	})
	t.Run("rejected token", func(t *testing.T) {
		req := f.request("app", objects)
		req.Tokens[""] = provider.Token{Token: "not-a-token", ExpirationTimestamp: time.Now().Add(time.Hour)}
		_, err := f.p.Fetch(f.ctx(), req)
		wantCode(t, err, codes.Unauthenticated, "rejected", "--api-audiences")
	})
	t.Run("token for another audience is rejected", func(t *testing.T) {
		tok, exp, err := f.s.Token(f.ctx(), f.ns, "app", []string{"vault"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		req := f.request("app", objects)
		req.Tokens[""] = provider.Token{Token: tok, ExpirationTimestamp: exp}
		_, err = f.p.Fetch(f.ctx(), req)
		wantCode(t, err, codes.Unauthenticated)
	})
	t.Run("token for the issuer audience works with Options.Audience", func(t *testing.T) {
		tok, exp, err := f.s.Token(f.ctx(), f.ns, "app", []string{kubeapi.Issuer}, nil)
		if err != nil {
			t.Fatal(err)
		}
		p, err := New(Options{Host: f.s.Host, CAData: f.s.CAData, Audience: kubeapi.Issuer})
		if err != nil {
			t.Fatal(err)
		}
		req := f.request("app", objects)
		req.Tokens = map[string]provider.Token{kubeapi.Issuer: {Token: tok, ExpirationTimestamp: exp}}
		if _, err := p.Fetch(f.ctx(), req); err != nil {
			t.Fatal(err)
		}
	})
}

func TestAPIServerUnreachable(t *testing.T) {
	s := apiServer(t)
	addr := boundNotListening(t)
	p, err := New(Options{Host: "https://" + addr, CAData: s.CAData})
	if err != nil {
		t.Fatal(err)
	}
	req := &provider.Request{
		Pod:        provider.Pod{Namespace: "ns", ServiceAccount: "app"},
		Tokens:     map[string]provider.Token{"": {Token: "t"}},
		Parameters: map[string]string{"objects": "- secretName: db\n"},
	}
	_, err = p.Fetch(context.Background(), req)
	wantCode(t, err, codes.Unavailable, "unreachable")
}

var deleteNow = metav1.DeleteOptions{}

// BenchmarkFetch measures one Fetch of a class naming two Secrets (three
// objects) against the real API server, and reports API requests per Fetch.
func BenchmarkFetch(b *testing.B) {
	f := newFixture(b)
	f.serviceAccount(f.ns, "app")
	f.grant(f.ns, "app", []string{"get"}, "db", "tls")
	f.putSecret(f.ns, "db", map[string][]byte{"password": allBytes(), "user": []byte("admin")})
	f.putSecret(f.ns, "tls", map[string][]byte{"tls.crt": make([]byte, 2048), "tls.key": make([]byte, 256)})
	req := f.request("app", "- secretName: db\n  key: password\n- secretName: db\n  key: user\n- secretName: tls\n")
	ctx := f.ctx()
	before, _ := f.log.counts()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := f.p.Fetch(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	after, _ := f.log.counts()
	b.ReportMetric(float64(after-before)/float64(b.N), "requests/op")
}

// boundNotListening returns a loopback address whose port this test holds,
// bound but not listening, until it ends: connecting there is refused, and
// no other process can take the port meanwhile (as it could after a
// listen-and-close).
func boundNotListening(t *testing.T) string {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(sa.(*unix.SockaddrInet4).Port))
}
