package driver

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/sys/unix"

	"github.com/secretfs/secretfs/driver/class"
	"github.com/secretfs/secretfs/provider"
	"github.com/secretfs/secretfs/provider/fake"
)

// fakeObjects is class "shared" of the fake backend: three objects.
var fakeObjects = []string{"db-password", "api-key", "tls-key"}

const fakeObjectsParam = `
- objectName: db-password
  generate: 32
- objectName: api-key
  value: key-1
- objectName: tls-key
  generate: 64
`

// fakeEnv is newEnv plus the real fake backend as provider "fake" and
// class "shared" (namespace team-a) over it.
type fakeEnv struct {
	*env
	fake *countingProvider
}

// countingProvider counts the backend calls it passes on and, per
// namespace and file, the reads that succeeded.
type countingProvider struct {
	provider.Provider
	calls atomic.Int64
	mu    sync.Mutex
	reads map[string]int64 // "namespace/path"
}

func (c *countingProvider) Fetch(ctx context.Context, req *provider.Request) (*provider.Result, error) {
	c.calls.Add(1)
	res, err := c.Provider.Fetch(ctx, req)
	if err == nil {
		c.mu.Lock()
		for _, f := range res.Files {
			c.reads[req.Pod.Namespace+"/"+f.Path]++
		}
		c.mu.Unlock()
	}
	return res, err
}

// Calls is the number of backend calls, failed ones included.
func (c *countingProvider) Calls() int64 { return c.calls.Load() }

// ObjectFetches is how often the file of objectName was read for namespace.
func (c *countingProvider) ObjectFetches(namespace, objectName string) int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.reads[namespace+"/"+objectName]
}

func newFakeEnv(t *testing.T, tweak func(*Config)) *fakeEnv {
	f := &countingProvider{Provider: fake.New(fake.Options{}), reads: map[string]int64{}}
	e := newEnv(t, func(c *Config) {
		inner := c.Providers
		c.Providers = func(name string) (provider.Provider, error) {
			if name == "fake" {
				return f, nil
			}
			return inner(name)
		}
		if tweak != nil {
			tweak(c)
		}
	})
	e.classes["team-a/shared"] = &class.Class{Name: "shared", Namespace: "team-a", Provider: "fake",
		Parameters: map[string]string{"objects": fakeObjectsParam}}
	return &fakeEnv{env: e, fake: f}
}

// publishAs publishes volume i of class shared for service account sa.
func (e *fakeEnv) publishAs(i int, sa string) error {
	req := publishReq(fmt.Sprintf("vol-%d", i), e.target(fmt.Sprintf("t%d", i)), "shared", "team-a")
	req.VolumeContext[provider.AttrServiceAccount] = sa
	req.VolumeContext[provider.AttrPodName] = fmt.Sprintf("pod-%d", i)
	req.VolumeContext[provider.AttrTokens] = fmt.Sprintf(`{"vault":{"token":"token-of-pod-%d","expirationTimestamp":"2030-01-01T00:00:00Z"}}`, i)
	_, err := e.node.NodePublishVolume(context.Background(), req)
	return err
}

// publishAll publishes volumes from..to-1 for sa, concurrently.
func (e *fakeEnv) publishAll(t *testing.T, from, to int, sa string) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, to-from)
	for i := from; i < to; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := e.publishAs(i, sa); err != nil {
				errs <- fmt.Errorf("volume %d: %w", i, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func (e *fakeEnv) unpublishAll(t *testing.T, from, to int) {
	t.Helper()
	for i := from; i < to; i++ {
		if err := e.unpublish(fmt.Sprintf("vol-%d", i), e.target(fmt.Sprintf("t%d", i))); err != nil {
			t.Fatal(err)
		}
	}
}

// objectFetches returns the fake's read count of each object of "shared".
func (e *fakeEnv) objectFetches() []int64 {
	out := make([]int64, len(fakeObjects))
	for i, o := range fakeObjects {
		out[i] = e.fake.ObjectFetches("team-a", o)
	}
	return out
}

func (e *fakeEnv) wantObjectFetches(t *testing.T, what string, want int64) {
	t.Helper()
	for i, n := range e.objectFetches() {
		if n != want {
			t.Fatalf("%s: object %s fetched %d times, want %d", what, fakeObjects[i], n, want)
		}
	}
}

func (d *Driver) cacheEntries() int {
	if d.cache == nil {
		return 0
	}
	return d.cache.Len()
}

// runningWatches counts volumes with a provider watch.
func (d *Driver) runningWatches() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := 0
	for _, v := range d.vols {
		if v.watch != nil {
			n++
		}
	}
	return n
}

func TestCacheConcurrentPublishesFetchOnce(t *testing.T) {
	e := newFakeEnv(t, nil)
	e.publishAll(t, 0, 50, "web")
	e.wantObjectFetches(t, "50 concurrent publishes, one identity", 1)
	if e.fake.Calls() != 1 {
		t.Fatalf("%d backend calls", e.fake.Calls())
	}
	if n := e.d.cacheEntries(); n != 1 {
		t.Fatalf("%d cache entries", n)
	}
	hits := testutil.ToFloat64(e.d.metrics.CacheGets[1]) + testutil.ToFloat64(e.d.metrics.CacheGets[2])
	if miss := testutil.ToFloat64(e.d.metrics.CacheGets[0]); miss != 1 || hits != 49 {
		t.Fatalf("cache misses %v, hits+collapsed %v", miss, hits)
	}
	if got := testutil.ToFloat64(e.d.metrics.Fetches.WithLabelValues("fake", "OK")); got != 1 {
		t.Fatalf("backend requests metric %v", got)
	}
	// Every volume has the same, complete content.
	want := readFile(t, filepath.Join(e.target("t0"), "db-password"))
	for i := 0; i < 50; i++ {
		if got := readFile(t, filepath.Join(e.target(fmt.Sprintf("t%d", i)), "db-password")); got != want || len(got) != 32 {
			t.Fatalf("volume %d: %q", i, got)
		}
	}
	e.unpublishAll(t, 0, 50)
	if n := e.d.cacheEntries(); n != 0 {
		t.Fatalf("%d cache entries after the last unpublish", n)
	}
	if got := testutil.ToFloat64(e.d.metrics.CacheEntries); got != 0 {
		t.Fatalf("cache_entries gauge %v", got)
	}
}

func TestCacheOffFetchesPerVolume(t *testing.T) {
	e := newFakeEnv(t, func(c *Config) { c.DisableCache = true })
	e.publishAll(t, 0, 50, "web")
	e.wantObjectFetches(t, "cache off", 50)
	if e.d.cacheEntries() != 0 {
		t.Fatal("cache used although disabled")
	}
}

func TestCacheNeverSharedBetweenServiceAccounts(t *testing.T) {
	e := newFakeEnv(t, nil)
	e.publishAll(t, 0, 10, "web")
	e.publishAll(t, 10, 20, "api")
	e.wantObjectFetches(t, "two service accounts", 2)
	if n := e.d.cacheEntries(); n != 2 {
		t.Fatalf("%d cache entries for two identities", n)
	}
	// Another namespace's pod of the same service-account name and the same
	// parameters is another identity too.
	e.classes["team-b/shared"] = &class.Class{Name: "shared", Namespace: "team-b", Provider: "fake",
		Parameters: map[string]string{"objects": fakeObjectsParam}}
	req := publishReq("vol-b", e.target("tb"), "shared", "team-b")
	if _, err := e.node.NodePublishVolume(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	if n := e.fake.ObjectFetches("team-b", "api-key"); n != 1 || e.d.cacheEntries() != 3 {
		t.Fatalf("team-b fetches %d, entries %d", n, e.d.cacheEntries())
	}
	// Other nodePublishSecretRef data: another identity.
	req = publishReq("vol-s", e.target("ts"), "shared", "team-a")
	req.VolumeContext[provider.AttrServiceAccount] = "web"
	req.Secrets = map[string]string{"clientsecret": "other"}
	if _, err := e.node.NodePublishVolume(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	e.wantObjectFetches(t, "other secret-ref data", 3)
	e.unpublishAll(t, 0, 10)
	if n := e.d.cacheEntries(); n != 3 {
		t.Fatalf("web's last volume left: %d entries, want 3", n)
	}
	e.unpublishAll(t, 10, 20)
	e.unpublish("vol-b", e.target("tb"))
	e.unpublish("vol-s", e.target("ts"))
	if n := e.d.cacheEntries(); n != 0 {
		t.Fatalf("%d entries left", n)
	}
}

// N volumes of one identity cost one backend call per rotation interval,
// and the republishes after the interval go through the cache too.
func TestCacheRotationOneFetchPerInterval(t *testing.T) {
	const interval = time.Second
	clock := newClock()
	e := newFakeEnv(t, func(c *Config) { c.RotationInterval, c.Now = interval, clock.Now })
	e.publishAll(t, 0, 20, "web")
	e.wantObjectFetches(t, "publish", 1)
	e.publishAll(t, 0, 20, "web") // not due
	e.wantObjectFetches(t, "republish before the interval", 1)
	for round := int64(2); round <= 3; round++ {
		clock.Advance(interval)
		e.publishAll(t, 0, 20, "web")
		e.wantObjectFetches(t, fmt.Sprintf("rotation %d", round-1), round)
	}
	if got := testutil.ToFloat64(e.d.metrics.Refresh.WithLabelValues("republish", "unchanged")); got != 40 {
		t.Fatalf("unchanged refreshes %v, want 40", got)
	}
}

// A revoked identity is refused at its next refresh although another
// identity holds a fresh entry for the same objects; the revoked volumes
// keep their last good content and the failure is counted.
func TestCacheRevokedIdentityDenied(t *testing.T) {
	const interval = 300 * time.Millisecond
	clock := newClock()
	e := newFakeEnv(t, func(c *Config) { c.RotationInterval, c.Now = interval, clock.Now })
	e.publishAll(t, 0, 3, "web")
	e.publishAll(t, 3, 6, "api")
	before := readFile(t, filepath.Join(e.target("t0"), "api-key"))

	e.classes["team-a/shared"].Parameters = map[string]string{"objects": strings.Replace(fakeObjectsParam, "key-1", "key-2", 1), "deny": "web"}
	clock.Advance(interval)
	e.publishAll(t, 3, 6, "api") // api refreshes first and caches the new content
	if got := readFile(t, filepath.Join(e.target("t3"), "api-key")); got != "key-2" {
		t.Fatalf("api not rotated: %q", got)
	}
	fetches := e.fake.Calls()
	e.publishAll(t, 0, 3, "web") // republish succeeds; the refresh is denied
	if e.fake.Calls() == fetches {
		t.Fatal("the revoked identity was served from another identity's entry")
	}
	for i := 0; i < 3; i++ {
		if got := readFile(t, filepath.Join(e.target(fmt.Sprintf("t%d", i)), "api-key")); got != before {
			t.Fatalf("revoked volume %d lost its last good content: %q", i, got)
		}
	}
	if got := testutil.ToFloat64(e.d.metrics.Refresh.WithLabelValues("republish", "failed")); got != 3 {
		t.Fatalf("failed refreshes %v, want 3", got)
	}
	if got := testutil.ToFloat64(e.d.metrics.Fetches.WithLabelValues("fake", "PermissionDenied")); got < 1 {
		t.Fatalf("denied backend requests %v", got)
	}
	// A new pod of the revoked identity cannot mount at all.
	req := publishReq("vol-new", e.target("tnew"), "shared", "team-a")
	if _, err := e.node.NodePublishVolume(context.Background(), req); err == nil || !strings.Contains(err.Error(), "PermissionDenied") && !strings.Contains(err.Error(), "may not read") {
		t.Fatalf("new pod of revoked identity: %v", err)
	}
	e.unpublishAll(t, 0, 6)
	if n := e.d.cacheEntries(); n != 0 {
		t.Fatalf("%d entries left", n)
	}
}

// The same with a backend that revokes on its own (not through the class):
// api's fresh entry is never served to web.
func TestCacheRevokedInBackend(t *testing.T) {
	const interval = 300 * time.Millisecond
	clock := newClock()
	e := newEnv(t, func(c *Config) { c.RotationInterval, c.Now = interval, clock.Now })
	var revoked atomic.Bool
	e.prov.set(func(p *testProvider) {
		p.files = func(req *provider.Request) []provider.File {
			if revoked.Load() && req.Pod.ServiceAccount == "web" {
				return nil
			}
			return []provider.File{{Path: "a", Contents: []byte("secret")}}
		}
	})
	pub := func(id, sa string) {
		req := publishReq(id, e.target(id), "app", "team-a")
		req.VolumeContext[provider.AttrServiceAccount] = sa
		if _, err := e.node.NodePublishVolume(context.Background(), req); err != nil {
			t.Fatal(err)
		}
	}
	pub("w", "web")
	pub("a", "api")
	revoked.Store(true)
	clock.Advance(interval)
	pub("a", "api")
	pub("w", "web")
	if n := e.prov.callCount(); n != 4 {
		t.Fatalf("%d backend calls, want 4 (no sharing between identities)", n)
	}
	// The backend returned no files for web: the volume now has none.
	if _, err := os.Stat(filepath.Join(e.target("w"), "a")); !os.IsNotExist(err) {
		t.Fatalf("web still sees the file: %v", err)
	}
}

// Watch notifications invalidate the shared entry, so the refresh they
// trigger reads the backend, once for all volumes of the identity.
func TestCacheWatchInvalidates(t *testing.T) {
	testDebounce = 100 * time.Millisecond
	defer func() { testDebounce = 10 * time.Millisecond }()
	var wp *watchProvider
	e := newEnv(t, withWatchProvider(&wp))
	const n = 5
	for i := 0; i < n; i++ {
		if err := e.publish(fmt.Sprintf("vol-%d", i), e.target(fmt.Sprintf("t%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	if c := e.prov.callCount(); c != 1 {
		t.Fatalf("%d fetches for %d volumes", c, n)
	}
	e.prov.set(func(p *testProvider) { p.gen = 1 })
	for _, w := range wp.snapshot() {
		w.changed() // a shared backend watch notifies every subscriber
	}
	for i := 0; i < n; i++ {
		waitFor(t, "watch refresh", func() bool { return readFile(t, filepath.Join(e.target(fmt.Sprintf("t%d", i)), "a")) == "a=v#1" })
	}
	if c := e.prov.callCount(); c != 2 {
		t.Fatalf("%d fetches after one change, want 2", c)
	}
	for i := 0; i < n; i++ {
		e.unpublish(fmt.Sprintf("vol-%d", i), e.target(fmt.Sprintf("t%d", i)))
	}
	for _, w := range wp.snapshot() {
		if !w.stopped {
			t.Fatal("watch left running")
		}
	}
}

// When the last pod leaves nothing remains: no mount, no cache entry, no
// watch, also when the driver restarted in between.
func TestLastPodLeavesNothing(t *testing.T) {
	const interval = 500 * time.Millisecond
	var wp *watchProvider
	var providers func(string) (provider.Provider, error)
	clock := newClock()
	e := newEnv(t, func(c *Config) {
		c.RotationInterval, c.Now = interval, clock.Now
		withWatchProvider(&wp)(c)
		providers = c.Providers
	})
	const n = 4
	publish := func(i int) {
		req := publishReq(fmt.Sprintf("vol-%d", i), e.target(fmt.Sprintf("t%d", i)), "app", "team-a")
		req.VolumeContext[provider.AttrTokens] = `{"api":{"token":"tok","expirationTimestamp":"2030-01-01T00:00:00Z"}}`
		if _, err := e.node.NodePublishVolume(context.Background(), req); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < n; i++ {
		publish(i)
	}
	activeWatches := func() int {
		k := 0
		for _, w := range wp.snapshot() {
			if !w.stopped {
				k++
			}
		}
		return k
	}
	if e.d.cacheEntries() != 1 || e.d.runningWatches() != n || activeWatches() != n || len(mountsUnder(t, e.dir)) != n {
		t.Fatalf("after publish: entries %d, watches %d/%d, mounts %d", e.d.cacheEntries(), e.d.runningWatches(), activeWatches(), len(mountsUnder(t, e.dir)))
	}
	// Half leave: the entry stays for the others.
	for i := 0; i < n/2; i++ {
		e.unpublish(fmt.Sprintf("vol-%d", i), e.target(fmt.Sprintf("t%d", i)))
	}
	if e.d.cacheEntries() != 1 || activeWatches() != n/2 {
		t.Fatalf("after half left: entries %d, watches %d", e.d.cacheEntries(), activeWatches())
	}

	// Restart: watches end with the old driver, the new one starts empty.
	cfg := Config{NodeID: "node-1", Classes: e.classes, RotationInterval: interval, Now: clock.Now, RecoverUnder: e.dir,
		Providers: providers, Logger: e.d.log, Registerer: e.reg}
	e.stop()
	if activeWatches() != 0 {
		t.Fatal("watches survive Close")
	}
	e.start(cfg)
	if e.d.cacheEntries() != 0 || len(e.d.vols) != n/2 {
		t.Fatalf("restarted driver: entries %d, volumes %d", e.d.cacheEntries(), len(e.d.vols))
	}
	// Recovered volumes re-populate the cache on their next refresh: one
	// backend call for both.
	calls := e.prov.callCount()
	clock.Advance(interval)
	for i := n / 2; i < n; i++ {
		publish(i)
	}
	if e.d.cacheEntries() != 1 || e.prov.callCount() != calls+1 || activeWatches() != n/2 {
		t.Fatalf("after recovery refresh: entries %d, calls %d (was %d), watches %d", e.d.cacheEntries(), e.prov.callCount(), calls, activeWatches())
	}
	for i := n / 2; i < n; i++ {
		if err := e.unpublish(fmt.Sprintf("vol-%d", i), e.target(fmt.Sprintf("t%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	// No entry left means no result left in memory either (data lives in entries;
	// package cache tests that an entry wipes its data).
	if e.d.cacheEntries() != 0 || e.d.runningWatches() != 0 || activeWatches() != 0 || len(mountsUnder(t, e.dir)) != 0 {
		t.Fatalf("after the last pod left: entries %d, watches %d/%d, mounts %d", e.d.cacheEntries(), e.d.runningWatches(), activeWatches(), len(mountsUnder(t, e.dir)))
	}
	if entries, _ := os.ReadDir(e.dir); len(entries) != 0 {
		t.Fatalf("targets left: %v", entries)
	}
}

// Readers never see a missing, partial or mixed file set while volumes of
// one identity rotate together through the cache.
func TestRotationAtomicUnderReaders(t *testing.T) {
	const interval = 20 * time.Millisecond
	clock := newClock()
	e := newEnv(t, func(c *Config) { c.RotationInterval, c.Now = interval, clock.Now })
	e.classes["team-a/app"].Parameters = map[string]string{"objects": "a,b,sub/c", "value": strings.Repeat("x", 3000)}
	const vols = 3
	for i := 0; i < vols; i++ {
		if err := e.publish(fmt.Sprintf("vol-%d", i), e.target(fmt.Sprintf("t%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var snapshots, bad atomic.Int64
	// passes[i] counts reader i's finished passes. The writer keeps one
	// generation besides the current one (as kubelet's volumes keep none),
	// so a reader that stalled across two whole rotations could find its
	// generation gone; real rotations are minutes apart, these are
	// back to back. Before each rotation the writer waits until every reader
	// has made a whole pass since the last one.
	passes := make([]atomic.Int64, vols)
	var badMsg atomic.Value
	fail := func(format string, args ...any) {
		bad.Add(1)
		badMsg.Store(fmt.Sprintf(format, args...))
	}
	for i := 0; i < vols; i++ {
		dir := e.target(fmt.Sprintf("t%d", i))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ; ; passes[i].Add(1) {
				select {
				case <-stop:
					return
				default:
				}
				// Each file alone: always there and complete.
				for _, name := range []string{"a", "b", "sub/c"} {
					b, err := os.ReadFile(filepath.Join(dir, name))
					if err != nil || !complete(name, string(b)) {
						fail("%s: %d bytes, %v", name, len(b), err)
					}
				}
				// The set through one ..data lookup: one generation.
				fd, err := unix.Open(filepath.Join(dir, "..data"), unix.O_RDONLY|unix.O_DIRECTORY, 0)
				if err != nil {
					fail("..data: %v", err)
					continue
				}
				gens := map[string]bool{}
				ok := true
				for _, name := range []string{"a", "b", "sub/c"} {
					b, err := readAt(fd, name)
					if err != nil {
						ok = false // the old generation was removed under us: fine
						break
					}
					if !complete(name, string(b)) {
						fail("%s in a generation: %d bytes", name, len(b))
						ok = false
						break
					}
					gens[string(b[strings.LastIndexByte(string(b), '#'):])] = true
				}
				unix.Close(fd)
				if ok {
					snapshots.Add(1)
					if len(gens) != 1 {
						fail("mixed generations %v", gens)
					}
				}
			}
		}()
	}
	for gen := 1; gen <= 15; gen++ {
		for i := range passes {
			for seen := passes[i].Load(); passes[i].Load() < seen+2; {
				runtime.Gosched()
			}
		}
		e.prov.set(func(p *testProvider) { p.gen = gen })
		clock.Advance(interval)
		for i := 0; i < vols; i++ {
			if err := e.publish(fmt.Sprintf("vol-%d", i), e.target(fmt.Sprintf("t%d", i))); err != nil {
				t.Fatal(err)
			}
		}
	}
	close(stop)
	wg.Wait()
	if bad.Load() > 0 {
		t.Fatalf("%d bad reads, last: %v", bad.Load(), badMsg.Load())
	}
	if snapshots.Load() == 0 {
		t.Fatal("no consistent snapshot read")
	}
	if got := readFile(t, filepath.Join(e.target("t0"), "a")); !strings.HasSuffix(got, "#15") {
		t.Fatalf("final content %q", got[len(got)-4:])
	}
	if got := testutil.ToFloat64(e.d.metrics.Refresh.WithLabelValues("republish", "rotated")); got != 15*vols {
		t.Fatalf("rotations %v, want %d", got, 15*vols)
	}
}

// complete reports whether b is the whole content of file name: the test
// provider's "<name>=<value>#<gen>".
func complete(name, b string) bool {
	gen, ok := strings.CutPrefix(b, name+"="+strings.Repeat("x", 3000)+"#")
	if !ok || gen == "" {
		return false
	}
	return strings.Trim(gen, "0123456789") == ""
}

func readAt(dirfd int, name string) ([]byte, error) {
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	var b strings.Builder
	buf := make([]byte, 8192)
	for {
		n, err := f.Read(buf)
		b.Write(buf[:n])
		if err != nil || n == 0 {
			return []byte(b.String()), nil
		}
	}
}
