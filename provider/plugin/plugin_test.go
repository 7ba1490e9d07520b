package plugin

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"

	pb "github.com/secretfs/secretfs/proto/v1alpha1"
	"github.com/secretfs/secretfs/provider"
)

func binary() []byte {
	b := make([]byte, 256)
	for i := range b {
		b[i] = byte(i)
	}
	return b
}

func TestRoundTrip(t *testing.T) {
	dir := t.TempDir()
	exp := time.Date(2031, 5, 6, 7, 8, 9, 0, time.UTC)
	var got *provider.Request
	var authority []string
	p := &funcProvider{fetch: func(ctx context.Context, req *provider.Request) (*provider.Result, error) {
		got = req
		md, _ := metadata.FromIncomingContext(ctx)
		authority = md.Get(":authority")
		return &provider.Result{
			Files: []provider.File{
				{Path: "db/password", Mode: 0o600, Contents: []byte("hunter2")},
				{Path: "blob.bin", Contents: binary()}, // mode 0: the request's default
				{Path: "empty", Mode: 0o444},
			},
			Versions: []provider.ObjectVersion{{ID: "secret/db", Version: "7"}, {ID: "secret/blob", Version: "v2"}},
		}, nil
	}}
	serve(t, sockPath(dir, "vault"), p, WithRuntime("secretfs-fake", "1.2.3"))
	c := New(Options{SocketDirs: []string{dir}})
	defer c.Close()

	req := &provider.Request{
		Pod:   provider.Pod{Namespace: "team-a", Name: "web-0", UID: "0d3a-11", ServiceAccount: "web"},
		Class: "db-creds",
		Tokens: map[string]provider.Token{
			"vault":                      {Token: "eyJ.a.b", ExpirationTimestamp: exp},
			"api://AzureADTokenExchange": {Token: "eyJ.c.d", ExpirationTimestamp: exp.Add(time.Hour)},
		},
		Parameters: map[string]string{
			"roleName": "web",
			"objects":  "- objectName: db\n",
			// A class cannot pose as kubelet or rename itself.
			"csi.storage.k8s.io/pod.namespace": "kube-system",
			"secretProviderClass":              "other",
		},
		Secrets:         map[string]string{"clientid": "id", "clientsecret": "s3cr3t"},
		TargetPath:      "/var/lib/kubelet/pods/0d3a-11/volumes/kubernetes.io~csi/creds/mount",
		DefaultMode:     0o640,
		CurrentVersions: []provider.ObjectVersion{{ID: "secret/db", Version: "6"}},
	}
	pr, err := c.Provider("vault")
	if err != nil {
		t.Fatal(err)
	}
	res, err := pr.Fetch(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}

	if !reflect.DeepEqual(authority, []string{"localhost"}) {
		t.Errorf(":authority %q, want localhost", authority)
	}
	want := *req
	want.Parameters = map[string]string{"roleName": "web", "objects": "- objectName: db\n"}
	// By default "vault" receives its own audience only (DefaultAudiences).
	want.Tokens = map[string]provider.Token{"vault": req.Tokens["vault"]}
	if !reflect.DeepEqual(got, &want) {
		t.Fatalf("provider got\n%+v\nwant\n%+v", got, &want)
	}
	wantFiles := []provider.File{
		{Path: "db/password", Mode: 0o600, Contents: []byte("hunter2")},
		{Path: "blob.bin", Mode: 0o640, Contents: binary()},
		{Path: "empty", Mode: 0o444, Contents: nil},
	}
	if len(res.Files) != len(wantFiles) {
		t.Fatalf("files: %+v", res.Files)
	}
	for i, f := range res.Files {
		w := wantFiles[i]
		if f.Path != w.Path || f.Mode != w.Mode || !bytes.Equal(f.Contents, w.Contents) {
			t.Errorf("file %d: got %q %v %q, want %q %v %q", i, f.Path, f.Mode, f.Contents, w.Path, w.Mode, w.Contents)
		}
	}
	if want := []provider.ObjectVersion{{ID: "secret/db", Version: "7"}, {ID: "secret/blob", Version: "v2"}}; !reflect.DeepEqual(res.Versions, want) {
		t.Errorf("versions %+v, want %+v", res.Versions, want)
	}

	v, err := c.Version(context.Background(), "vault")
	if err != nil {
		t.Fatal(err)
	}
	if v != (VersionInfo{Protocol: "v1alpha1", RuntimeName: "secretfs-fake", RuntimeVersion: "1.2.3"}) {
		t.Errorf("version %+v", v)
	}
	if n := p.calls.Load(); n != 1 {
		t.Errorf("provider called %d times, want 1", n)
	}
}

func TestSocketModeAndCleanup(t *testing.T) {
	for _, mode := range []os.FileMode{0, 0o660} {
		dir := t.TempDir()
		path := sockPath(dir, "p")
		var opts []ServeOption
		want := os.FileMode(0o600)
		if mode != 0 {
			opts, want = append(opts, WithSocketMode(mode)), mode
		}
		stop := serve(t, path, staticProvider(), opts...)
		fi, err := os.Lstat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("socket mode %v, want %v", fi.Mode().Perm(), want)
		}
		stop()
		if _, err := os.Lstat(path); !os.IsNotExist(err) {
			t.Errorf("socket left behind after stop: %v", err)
		}
		entries, _ := os.ReadDir(dir)
		if len(entries) != 0 {
			t.Errorf("left in socket dir: %v", entries)
		}
	}
}

func TestServeReplacesStaleSocketOnly(t *testing.T) {
	dir := t.TempDir()
	path := sockPath(dir, "p")

	// A server that died without cleaning up leaves its socket behind.
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
	serve(t, path, staticProvider(provider.File{Path: "a", Contents: []byte("x")}))

	// A live server is not displaced.
	err = Serve(context.Background(), path, staticProvider(), WithLogger(quiet))
	if err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("second server on a live socket: %v", err)
	}
	// Nor is a file that is not a socket.
	file := sockPath(dir, "file")
	os.WriteFile(file, []byte("keep"), 0o600)
	if err := Serve(context.Background(), file, staticProvider(), WithLogger(quiet)); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("serving on a regular file: %v", err)
	}
	if b, _ := os.ReadFile(file); string(b) != "keep" {
		t.Error("regular file was touched")
	}
	if err := Serve(context.Background(), "tcp://127.0.0.1:1", staticProvider()); err == nil {
		t.Error("tcp endpoint accepted")
	}
}

// Every endpoint form serves the same socket; other forms are refused.
func TestServeEndpointForms(t *testing.T) {
	dir := t.TempDir()
	path := sockPath(dir, "vault")
	c := New(Options{SocketDirs: []string{dir}})
	defer c.Close()
	for _, endpoint := range []string{"unix://" + path, "unix:" + path, path} {
		ctx, cancel := context.WithCancel(context.Background())
		errc := make(chan error, 1)
		go func() { errc <- Serve(ctx, endpoint, staticProvider(), WithLogger(quiet)) }()
		var err error
		for range 1000 {
			if _, err = c.Version(context.Background(), "vault"); err == nil {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		if err != nil {
			t.Errorf("Serve(%q): Version: %v", endpoint, err)
		}
		cancel()
		if err := <-errc; err != nil {
			t.Fatalf("Serve(%q): %v", endpoint, err)
		}
	}
	for endpoint, want := range map[string]string{
		"unix://vault.sock":     "three slashes",
		"vault.sock":            "must be absolute",
		"unix:vault.sock":       "must be absolute",
		"tcp://127.0.0.1:10000": `scheme "tcp" is not supported`,
	} {
		if err := Serve(context.Background(), endpoint, staticProvider(), WithLogger(quiet)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Serve(%q): %v, want an error containing %q", endpoint, err, want)
		}
	}
}

func TestDeadline(t *testing.T) {
	dir := t.TempDir()
	canceled := make(chan struct{}, 2)
	p := &funcProvider{fetch: func(ctx context.Context, _ *provider.Request) (*provider.Result, error) {
		<-ctx.Done() // a backend that hangs until the caller gives up
		canceled <- struct{}{}
		return nil, ctx.Err()
	}}
	serve(t, sockPath(dir, "slow"), p)

	// The client's own timeout.
	c := New(Options{SocketDirs: []string{dir}, Timeout: 100 * time.Millisecond})
	defer c.Close()
	pr, _ := c.Provider("slow")
	_, err := pr.Fetch(context.Background(), &provider.Request{})
	wantCode(t, err, codes.DeadlineExceeded)
	if !strings.Contains(err.Error(), `"slow"`) {
		t.Errorf("error does not name the provider: %v", err)
	}
	<-canceled // the deadline reached the server, which stopped waiting

	// The caller's deadline, when shorter.
	c2 := New(Options{SocketDirs: []string{dir}, Timeout: time.Hour})
	defer c2.Close()
	pr2, _ := c2.Provider("slow")
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err = pr2.Fetch(ctx, &provider.Request{})
	wantCode(t, err, codes.DeadlineExceeded)
	<-canceled
	if n := p.calls.Load(); n != 2 {
		t.Errorf("provider called %d times, want 2 (no retry after a deadline)", n)
	}
}

func TestServerRestart(t *testing.T) {
	dir := t.TempDir()
	path := sockPath(dir, "vault")
	c := New(Options{SocketDirs: []string{dir}})
	defer c.Close()
	stop := serve(t, path, staticProvider(provider.File{Path: "a", Contents: []byte("first")}))
	pr, err := c.Provider("vault")
	if err != nil {
		t.Fatal(err)
	}
	fetch := func() (*provider.Result, error) { return pr.Fetch(context.Background(), &provider.Request{}) }

	if res, err := fetch(); err != nil || string(res.Files[0].Contents) != "first" {
		t.Fatalf("first server: %v %v", res, err)
	}
	stop()

	_, err = fetch()
	wantCode(t, err, codes.Unavailable)
	if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), `"vault"`) {
		t.Errorf("error should name the socket and the provider: %v", err)
	}

	second := staticProvider(provider.File{Path: "a", Contents: []byte("second")})
	stop = serve(t, path, second)
	if res, err := fetch(); err != nil || string(res.Files[0].Contents) != "second" {
		t.Fatalf("restarted server: %v %v", res, err)
	}

	// A restart between two calls, unseen by the client, is found by the
	// socket's identity, not by a failed call.
	stop()
	third := staticProvider(provider.File{Path: "a", Contents: []byte("third")})
	serve(t, path, third)
	if res, err := fetch(); err != nil || string(res.Files[0].Contents) != "third" {
		t.Fatalf("server restarted between calls: %v %v", res, err)
	}
	if n := third.calls.Load(); n != 1 {
		t.Errorf("third server called %d times, want 1", n)
	}
}

func TestSocketSearchOrder(t *testing.T) {
	first, second := t.TempDir(), t.TempDir()
	serve(t, sockPath(second, "aws"), staticProvider(provider.File{Path: "a", Contents: []byte("second")}))
	c := New(Options{SocketDirs: []string{first, second}})
	defer c.Close()
	pr, _ := c.Provider("aws")
	res, err := pr.Fetch(context.Background(), &provider.Request{})
	if err != nil || string(res.Files[0].Contents) != "second" {
		t.Fatalf("socket in the second dir: %v %v", res, err)
	}
	// A socket in an earlier directory wins once it exists.
	serve(t, sockPath(first, "aws"), staticProvider(provider.File{Path: "a", Contents: []byte("first")}))
	res, err = pr.Fetch(context.Background(), &provider.Request{})
	if err != nil || string(res.Files[0].Contents) != "first" {
		t.Fatalf("socket in the first dir: %v %v", res, err)
	}
}

func TestProviderUnavailableIsRetriedOnce(t *testing.T) {
	dir := t.TempDir()
	p := &funcProvider{fetch: func(context.Context, *provider.Request) (*provider.Result, error) {
		return nil, provider.Unavailable("key vault is throttling")
	}}
	serve(t, sockPath(dir, "azure2"), p)
	c := New(Options{SocketDirs: []string{dir}})
	defer c.Close()
	pr, _ := c.Provider("azure2")
	_, err := pr.Fetch(context.Background(), &provider.Request{})
	wantCode(t, err, codes.Unavailable)
	if !strings.Contains(err.Error(), "key vault is throttling") {
		t.Errorf("provider's message lost: %v", err)
	}
	if n := p.calls.Load(); n != 2 {
		t.Errorf("provider called %d times, want 2 (one retry on a fresh connection)", n)
	}
}

func TestOversizedResponse(t *testing.T) {
	dir := t.TempDir()
	serve(t, sockPath(dir, "big"), staticProvider(provider.File{Path: "huge", Contents: make([]byte, 2<<20)}))
	c := New(Options{SocketDirs: []string{dir}, MaxRecvMsgSize: 1 << 20})
	defer c.Close()
	pr, _ := c.Provider("big")
	_, err := pr.Fetch(context.Background(), &provider.Request{})
	wantCode(t, err, codes.ResourceExhausted)
	for _, s := range []string{`"big"`, "response of 2097", "at most 1048576 bytes"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error lacks %q: %v", s, err)
		}
	}
}

func TestErrorCodesKept(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		err  error
		code codes.Code
	}{
		{provider.PermissionDenied("identity web may not read secret db"), codes.PermissionDenied},
		{provider.NotFound("secret db not found in vault kv"), codes.NotFound},
		{provider.InvalidArgument("parameter objects is empty"), codes.InvalidArgument},
		{context.DeadlineExceeded, codes.DeadlineExceeded},
	} {
		p := &funcProvider{fetch: func(context.Context, *provider.Request) (*provider.Result, error) { return nil, tc.err }}
		name := strings.ToLower(tc.code.String())
		serve(t, sockPath(dir, name), p)
		c := New(Options{SocketDirs: []string{dir}})
		pr, _ := c.Provider(name)
		_, err := pr.Fetch(context.Background(), &provider.Request{})
		c.Close()
		wantCode(t, err, tc.code)
		if !strings.Contains(err.Error(), tc.err.Error()) || !strings.Contains(err.Error(), name) {
			t.Errorf("%v: message %q should carry %q and the provider name", tc.code, err, tc.err)
		}
	}
}

// legacyProvider speaks the protocol directly, as providers other than ours
// do: it reports failures in MountResponse.error and may return no files.
type legacyProvider struct {
	pb.UnimplementedCSIDriverProviderServer
	resp *pb.MountResponse
}

func (l *legacyProvider) Mount(context.Context, *pb.MountRequest) (*pb.MountResponse, error) {
	return l.resp, nil
}

func serveLegacy(t *testing.T, path string, resp *pb.MountResponse) {
	t.Helper()
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	pb.RegisterCSIDriverProviderServer(s, &legacyProvider{resp: resp})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); s.Serve(l) }()
	t.Cleanup(func() { s.Stop(); wg.Wait() })
}

func TestLegacyResponses(t *testing.T) {
	dir := t.TempDir()
	serveLegacy(t, sockPath(dir, "nofiles"), &pb.MountResponse{ObjectVersion: []*pb.ObjectVersion{{Id: "a", Version: "1"}}})
	serveLegacy(t, sockPath(dir, "coded"), &pb.MountResponse{Error: &pb.Error{Code: "PERMISSION_DENIED"}})
	serveLegacy(t, sockPath(dir, "metric"), &pb.MountResponse{Error: &pb.Error{Code: "GRPCProviderError"}})
	serveLegacy(t, sockPath(dir, "badmode"), &pb.MountResponse{Files: []*pb.File{{Path: "a", Mode: 0o1777}}})
	c := New(Options{SocketDirs: []string{dir}})
	defer c.Close()
	for name, tc := range map[string]struct {
		code codes.Code
		msg  string
	}{
		"coded":   {codes.PermissionDenied, `error code "PERMISSION_DENIED"`},
		"metric":  {codes.Unknown, `error code "GRPCProviderError"`},
		"badmode": {codes.Internal, "mode 1023"},
	} {
		pr, _ := c.Provider(name)
		_, err := pr.Fetch(context.Background(), &provider.Request{})
		if provider.CodeOf(err) != tc.code || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%s: got %v (%v), want %v with %q", name, provider.CodeOf(err), err, tc.code, tc.msg)
		}
	}
}

// A response without files means the provider wrote them into the target
// itself: the result says so and keeps the versions.
func TestProviderWrittenResponse(t *testing.T) {
	dir := t.TempDir()
	serveLegacy(t, sockPath(dir, "nofiles"), &pb.MountResponse{ObjectVersion: []*pb.ObjectVersion{{Id: "a", Version: "1"}}})
	c := New(Options{SocketDirs: []string{dir}})
	defer c.Close()
	pr, _ := c.Provider("nofiles")
	if _, ok := pr.(provider.External); !ok {
		t.Fatal("an external provider is not a provider.External")
	}
	res, err := pr.Fetch(context.Background(), &provider.Request{})
	if err != nil {
		t.Fatal(err)
	}
	if !res.WrittenByProvider || len(res.Files) != 0 || !reflect.DeepEqual(res.Versions, []provider.ObjectVersion{{ID: "a", Version: "1"}}) {
		t.Errorf("result %+v", res)
	}
}

func TestProviderNames(t *testing.T) {
	c := New(Options{SocketDirs: []string{t.TempDir()}})
	defer c.Close()
	for _, name := range []string{"", "../x", "a/b", "..", ".", ".hidden", "x..y", "a\x00b", "/abs", strings.Repeat("a", 64)} {
		_, err := c.Provider(name)
		wantCode(t, err, codes.InvalidArgument)
		_, err = c.Version(context.Background(), name)
		wantCode(t, err, codes.InvalidArgument)
	}
	// Valid names pass the name check: with no socket they are Unavailable
	// (not running), never InvalidArgument.
	for _, name := range []string{"vault", "azure", "gcp", "AWS", "my-provider_1.2", strings.Repeat("a", 63)} {
		if _, err := c.Provider(name); provider.CodeOf(err) != codes.Unavailable {
			t.Errorf("%q: want Unavailable (no socket), got %v", name, err)
		}
	}
}

func TestMissingSocket(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	c := New(Options{SocketDirs: []string{a, b}})
	defer c.Close()
	// Resolving the name or fetching: either says the provider is not there.
	fetch := func() error {
		pr, err := c.Provider("vault")
		if err != nil {
			return err
		}
		_, err = pr.Fetch(context.Background(), &provider.Request{})
		return err
	}
	err := fetch()
	wantCode(t, err, codes.Unavailable)
	for _, s := range []string{`"vault"`, sockPath(a, "vault"), sockPath(b, "vault")} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error lacks %q: %v", s, err)
		}
	}
	// A regular file where the socket should be is not a provider either.
	os.WriteFile(sockPath(a, "vault"), nil, 0o600)
	err = fetch()
	wantCode(t, err, codes.Unavailable)

	// Nor is the socket a crashed provider left behind.
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sockPath(b, "vault"), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
	err = fetch()
	wantCode(t, err, codes.Unavailable)
	if !strings.Contains(err.Error(), sockPath(b, "vault")) || !strings.Contains(err.Error(), `"vault"`) {
		t.Errorf("error should name the socket and the provider: %v", err)
	}
}

// Provider names come from classes: a tenant naming ever new providers
// without sockets must not grow the client's table.
func TestUnknownNamesAreNotRemembered(t *testing.T) {
	dir := t.TempDir()
	serve(t, sockPath(dir, "real"), staticProvider(provider.File{Path: "a"}))
	c := New(Options{SocketDirs: []string{dir}})
	defer c.Close()
	for i := range 1000 {
		_, err := c.Provider(fmt.Sprintf("made-up-%d", i))
		wantCode(t, err, codes.Unavailable)
	}
	if _, err := c.Provider("real"); err != nil {
		t.Fatal(err)
	}
	if n := c.knownProviders(); n != 1 {
		t.Fatalf("%d providers remembered after 1000 made-up names and one real one, want 1", n)
	}
}

func TestClosedClient(t *testing.T) {
	dir := t.TempDir()
	serve(t, sockPath(dir, "p"), staticProvider(provider.File{Path: "a"}))
	c := New(Options{SocketDirs: []string{dir}})
	pr, _ := c.Provider("p")
	if _, err := pr.Fetch(context.Background(), &provider.Request{}); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	_, err := pr.Fetch(context.Background(), &provider.Request{})
	wantCode(t, err, codes.Unavailable)
	_, err = c.Provider("p")
	wantCode(t, err, codes.Unavailable)
}

func TestConcurrentFetches(t *testing.T) {
	dir := t.TempDir()
	p := staticProvider(provider.File{Path: "a", Contents: []byte("x")})
	serve(t, sockPath(dir, "p"), p)
	c := New(Options{SocketDirs: []string{dir}})
	defer c.Close()
	pr, _ := c.Provider("p")
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := pr.Fetch(context.Background(), &provider.Request{Pod: provider.Pod{Namespace: "ns"}})
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := p.calls.Load(); n != 64 {
		t.Errorf("provider called %d times, want 64", n)
	}
}

func BenchmarkMountRoundTrip(b *testing.B) {
	pr, req := benchSetup(b)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := pr.Fetch(context.Background(), req); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkMountRoundTripParallel measures throughput of concurrent mounts
// over one connection.
func BenchmarkMountRoundTripParallel(b *testing.B) {
	pr, req := benchSetup(b)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := pr.Fetch(context.Background(), req); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// benchSetup serves 5 objects of 1 KiB and returns a client for them and a
// request shaped like a real one (a 900-byte token, an objects parameter).
func benchSetup(b *testing.B) (provider.Provider, *provider.Request) {
	dir := b.TempDir()
	files := make([]provider.File, 5)
	for i := range files {
		files[i] = provider.File{Path: "secret-" + string(rune('a'+i)), Mode: 0o440, Contents: bytes.Repeat([]byte{'s'}, 1024)}
	}
	serve(b, sockPath(dir, "bench"), staticProvider(files...))
	c := New(Options{SocketDirs: []string{dir}})
	b.Cleanup(func() { c.Close() })
	pr, _ := c.Provider("bench")
	req := &provider.Request{
		Pod:        provider.Pod{Namespace: "ns", Name: "pod", UID: "uid", ServiceAccount: "sa"},
		Class:      "class",
		Tokens:     map[string]provider.Token{"aud": {Token: strings.Repeat("t", 900), ExpirationTimestamp: time.Now()}},
		Parameters: map[string]string{"objects": "- objectName: a\n- objectName: b\n", "keyvaultName": "kv"},
		TargetPath: "/var/lib/kubelet/pods/uid/volumes/kubernetes.io~csi/v/mount",
	}
	return pr, req
}

// The volume's limits bound an external provider's response before gRPC
// receives it (the wire allowance, below -provider-max-message-size), and
// its files as they are taken over.
func TestResponseBoundedByTheVolumeLimits(t *testing.T) {
	dir := t.TempDir()
	serve(t, sockPath(dir, "big"), staticProvider(provider.File{Path: "huge", Contents: make([]byte, 4<<20)}))
	serve(t, sockPath(dir, "many"), staticProvider(
		provider.File{Path: "a", Contents: make([]byte, 600<<10)}, provider.File{Path: "b", Contents: make([]byte, 600<<10)}))
	c := New(Options{SocketDirs: []string{dir}})
	defer c.Close()
	limits := provider.Limits{MaxBytes: 1 << 20, MaxFiles: 10}
	pr, _ := c.Provider("big")
	_, err := pr.Fetch(context.Background(), &provider.Request{Limits: limits})
	wantCodeText(t, err, codes.ResourceExhausted, "at most 3145728 bytes", "--tmpfs-size")
	pr, _ = c.Provider("many")
	_, err = pr.Fetch(context.Background(), &provider.Request{Limits: limits})
	wantCodeText(t, err, codes.ResourceExhausted, `provider "many"`, "1048576 bytes")
	_, err = pr.Fetch(context.Background(), &provider.Request{Limits: provider.Limits{MaxBytes: 8 << 20, MaxFiles: 1}})
	wantCodeText(t, err, codes.ResourceExhausted, "--max-files")
}

func wantCodeText(t *testing.T, err error, code codes.Code, contains ...string) {
	t.Helper()
	wantCode(t, err, code)
	for _, s := range contains {
		if !strings.Contains(err.Error(), s) {
			t.Fatalf("error lacks %q: %v", s, err)
		}
	}
}
