package kubernetes

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/secretfs/secretfs/provider"
)

// heldWatch returns the shared watch of the Secret name for sa, or nil.
func (f *fixture) heldWatch(name, sa string) *sharedWatch {
	f.p.mu.Lock()
	defer f.p.mu.Unlock()
	return f.p.watches[watchKey{f.ns, name, "", sa}]
}

// A publish costs the API server one request per Secret: the fetch reads the
// Secret from the start of the watch, and the volume's Watch joins that same
// stream. The fetch's copy of the Secret is gone once the volume subscribed.
func TestFetchReadsTheWatchTheVolumeKeeps(t *testing.T) {
	f := newFixture(t)
	f.p.holdFor = time.Hour // only the volume's Watch ends the hold
	f.serviceAccount(f.ns, "app")
	f.grant(f.ns, "app", []string{"get", "watch"}, "db")
	f.putSecret(f.ns, "db", map[string][]byte{"k": []byte("v0")})

	req := f.mount("app", "- secretName: db\n")
	if len(req.CurrentVersions) != 1 || req.CurrentVersions[0].Version == "" {
		t.Fatalf("versions %+v", req.CurrentVersions)
	}
	if gets, watches := f.log.counts(); gets != 0 || watches != 1 {
		t.Fatalf("fetch made %d GETs and %d watches, want 0 and 1", gets, watches)
	}
	w := f.heldWatch("db", "app")
	if w == nil {
		t.Fatal("no watch held after the fetch")
	}
	var c counter
	stop, err := f.p.Watch(req, c.changed)
	if err != nil {
		t.Fatal(err)
	}
	if gets, watches := f.log.counts(); gets != 0 || watches != 1 || f.p.OpenWatches() != 1 {
		t.Errorf("after Watch: %d GETs, %d watch requests, %d open; want 0, 1, 1", gets, watches, f.p.OpenWatches())
	}
	w.mu.Lock()
	holds, latest, subs := w.holds, w.initial, len(w.subs)
	w.mu.Unlock()
	if holds != 0 || latest != nil || subs != 1 {
		t.Errorf("after the volume subscribed: %d holds, Secret kept %v, %d subscribers; want 0, false, 1", holds, latest != nil, subs)
	}
	if c.get() != 0 {
		t.Errorf("changed called %d times before any change", c.get())
	}
	f.putSecret(f.ns, "db", map[string][]byte{"k": []byte("v1")})
	f.eventually("changed after update", func() bool { return c.get() >= 1 })
	stop()
	if f.p.OpenWatches() != 0 || f.p.sharedWatches() != 0 {
		t.Errorf("watch still open after the volume's stop")
	}
}

// Fetches of one Secret for the same service account at once (two classes):
// the one that opened the watch reads it, the other GETs. An absent Secret
// is known from the bookmark that ends the initial events, without a GET;
// the fetch that failed so lets go of its watch at once.
func TestFetchesOfOneSecretAtOnceAndAbsence(t *testing.T) {
	f := newFixture(t)
	f.serviceAccount(f.ns, "app")
	f.grant(f.ns, "app", []string{"get", "watch"}, "db", "absent")
	f.putSecret(f.ns, "db", map[string][]byte{"a": []byte("1"), "b": []byte("2")})

	var wg sync.WaitGroup
	errs := make([]error, 2)
	files := make([]int, 2)
	for i, objects := range []string{"- secretName: db\n", "- secretName: db\n  key: a\n"} {
		wg.Go(func() {
			res, err := f.p.Fetch(f.ctx(), f.request("app", objects))
			errs[i] = err
			if err == nil {
				files[i] = len(res.Files)
			}
		})
	}
	wg.Wait()
	if errs[0] != nil || errs[1] != nil || files[0] != 2 || files[1] != 1 {
		t.Fatalf("fetches: %v %v, files %v", errs[0], errs[1], files)
	}
	if gets, watches := f.log.counts(); gets != 1 || watches != 1 {
		t.Errorf("two fetches made %d GETs and %d watches, want 1 and 1", gets, watches)
	}

	before, _ := f.log.counts()
	_, err := f.p.Fetch(f.ctx(), f.request("app", "- secretName: absent\n"))
	wantCode(t, err, codes.NotFound, "Secret "+f.ns+"/absent not found")
	if f.heldWatch("absent", "app") != nil {
		t.Error("a failed fetch still holds its watch")
	}
	res, err := f.p.Fetch(f.ctx(), f.request("app", "- secretName: absent\n  optional: true\n"))
	if err != nil || len(res.Files) != 0 {
		t.Fatalf("optional absent: %v", err)
	}
	if gets, _ := f.log.counts(); gets != before {
		t.Errorf("%d GETs for an absent Secret, want 0", gets-before)
	}
}

// A service account that may get but not watch: the first fetch learns it
// from a refused watch and GETs; later fetches GET without asking again.
func TestFetchGetOnlyAsksTheWatchOnce(t *testing.T) {
	f := newFixture(t)
	f.serviceAccount(f.ns, "getonly")
	f.grant(f.ns, "getonly", []string{"get"}, "db")
	f.putSecret(f.ns, "db", map[string][]byte{"k": []byte("v")})
	for i := range 3 {
		res, err := f.p.Fetch(f.ctx(), f.request("getonly", "- secretName: db\n"))
		if err != nil || len(res.Files) != 1 || string(res.Files[0].Contents) != "v" {
			t.Fatalf("fetch %d: %v", i, err)
		}
	}
	if gets, watches := f.log.counts(); gets != 3 || watches != 1 {
		t.Errorf("3 fetches made %d GETs and %d watches, want 3 and 1", gets, watches)
	}
	// No volume asked for the watch: the fetch's refusal is not the
	// Warning a volume gets (the service account might not even get).
	if n := strings.Count(f.logs.String(), "may get but not watch"); n != 0 {
		t.Errorf("a refused watch that only a fetch held logged %d times", n)
	}
	// A volume's Watch is refused and says so once.
	for range 2 {
		stop, err := f.p.Watch(f.mount("getonly", "- secretName: db\n"), func() {})
		wantCode(t, err, codes.PermissionDenied, "may get but not watch")
		if stop != nil {
			t.Error("stop returned with an error")
		}
	}
	if n := strings.Count(f.logs.String(), "may get but not watch"); n != 1 {
		t.Errorf("refused volume watch logged %d times, want once", n)
	}
}

// Secrets over the volume's allowance fail the fetch ResourceExhausted
// having read about the allowance from the streams (at most
// maxConcurrentGets of them), and the fetch's watches close at once instead
// of reading the Secrets again.
func TestFetchFromWatchWithinBudget(t *testing.T) {
	f := newFixture(t)
	f.serviceAccount(f.ns, "app")
	names := f.bigSecrets("app", "big", 12, 500<<10)
	req := f.request("app", classOf(names))
	req.Limits = provider.Limits{MaxBytes: 1 << 20, MaxFiles: 100}
	start := time.Now()
	_, err := f.p.Fetch(f.ctx(), req)
	t.Logf("failed in %v", time.Since(start))
	wantCode(t, err, codes.ResourceExhausted, "--tmpfs-size")
	if f.p.OpenWatches() != 0 || f.p.sharedWatches() != 0 {
		t.Errorf("the failed fetch left %d streams, %d watches", f.p.OpenWatches(), f.p.sharedWatches())
	}
	f.log.mu.Lock()
	watches, streamed, read := f.log.watches, f.log.watchBytes, f.log.bodyBytes
	f.log.mu.Unlock()
	t.Logf("%d watches read %d bytes, GETs %d bytes", watches, streamed, read)
	// Each stream the fetch opened, and its reconnect once a large Secret
	// was taken from it.
	if watches > 2*maxConcurrentGets {
		t.Errorf("%d watches for one fetch, want at most %d", watches, 2*maxConcurrentGets)
	}
	// The allowance, plus one read of each stream that ran past it (the
	// watch decoder reads into a buffer that doubles as the frame grows).
	if allowance := req.Limits.WireBytes(); streamed > 2*allowance {
		t.Errorf("streams read %d bytes for an allowance of %d", streamed, allowance)
	}
	// Within the budget the same Secrets mount from the watches.
	req = f.request("app", classOf(names[:2]))
	req.Limits = provider.Limits{MaxBytes: 2 << 20, MaxFiles: 100}
	res, err := f.p.Fetch(f.ctx(), req)
	if err != nil || len(res.Files) != 2 {
		t.Fatalf("2 Secrets: %v", err)
	}
}

// An API server without streamed initial events (WatchList off, or before
// Kubernetes 1.32) refuses sendInitialEvents: the provider says so once,
// watches from the current state without it, and fetches GET.
func TestNoInitialEventsFallsBackToGet(t *testing.T) {
	var gets, initialWatches, plainWatches atomic.Int64
	secret := &corev1.Secret{TypeMeta: metav1.TypeMeta{Kind: "Secret", APIVersion: "v1"},
		ObjectMeta: metav1.ObjectMeta{Name: "db", Namespace: "ns", ResourceVersion: "7"}, Data: map[string][]byte{"k": []byte("v")}}
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		q := r.URL.Query()
		switch {
		case q.Get("watch") == "true" && q.Get("sendInitialEvents") == "true":
			initialWatches.Add(1)
			w.WriteHeader(http.StatusUnprocessableEntity)
			_ = json.NewEncoder(w).Encode(metav1.Status{TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"}, Status: metav1.StatusFailure,
				Reason: metav1.StatusReasonInvalid, Code: http.StatusUnprocessableEntity, Message: "sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled"})
		case q.Get("watch") == "true":
			plainWatches.Add(1)
			w.WriteHeader(http.StatusOK)
			w.(http.Flusher).Flush()
			<-r.Context().Done()
		default:
			gets.Add(1)
			_ = json.NewEncoder(w).Encode(secret)
		}
	}))
	defer srv.Close()
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	p, err := New(Options{Host: srv.URL, CAData: ca, QPS: 1e6, Burst: 1e6})
	if err != nil {
		t.Fatal(err)
	}
	p.holdFor = 50 * time.Millisecond
	req := &provider.Request{Pod: provider.Pod{Namespace: "ns", ServiceAccount: "app"},
		Tokens: map[string]provider.Token{"": {Token: "pod-token"}}, Parameters: map[string]string{"objects": "- secretName: db\n"}}
	for range 2 {
		res, err := p.Fetch(context.Background(), req)
		if err != nil || len(res.Files) != 1 {
			t.Fatalf("fetch: %v", err)
		}
	}
	if gets.Load() != 2 || initialWatches.Load() != 1 || plainWatches.Load() < 1 {
		t.Errorf("%d GETs, %d watches with initial events, %d plain; want 2, 1, at least 1", gets.Load(), initialWatches.Load(), plainWatches.Load())
	}
	deadline := time.Now().Add(5 * time.Second)
	for p.OpenWatches() != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if p.OpenWatches() != 0 {
		t.Errorf("%d watches open after the holds ended", p.OpenWatches())
	}
}

// Only the fetch whose token opened the stream reads its initial events: a
// fetch of the same service account while the watch is held GETs with its
// own token, so a token the API server rejects (a deleted pod's) reads
// nothing, and every read has its own audit entry.
func TestOnlyTheOpenerReadsTheWatch(t *testing.T) {
	f := newFixture(t)
	f.p.holdFor = 2 * time.Second
	f.serviceAccount(f.ns, "app")
	f.grant(f.ns, "app", []string{"get", "watch"}, "db")
	f.putSecret(f.ns, "db", map[string][]byte{"k": []byte("s3cr3t")})
	if _, err := f.p.Fetch(f.ctx(), f.request("app", "- secretName: db\n")); err != nil {
		t.Fatal(err)
	}
	bad := f.request("app", "- secretName: db\n")
	bad.Tokens[""] = provider.Token{Token: "not-a-token", ExpirationTimestamp: time.Now().Add(time.Hour)}
	res, err := f.p.Fetch(f.ctx(), bad)
	if err == nil {
		t.Fatalf("a rejected token read %d files from another fetch's stream", len(res.Files))
	}
	wantCode(t, err, codes.Unauthenticated)
	if _, err := f.p.Fetch(f.ctx(), f.request("app", "- secretName: db\n  key: k\n")); err != nil {
		t.Fatal(err)
	}
	if gets, watches := f.log.counts(); gets != 2 || watches != 1 {
		t.Errorf("%d GETs and %d watches, want 2 (the fetches that did not open the watch) and 1", gets, watches)
	}
}

// bigData returns n random (incompressible) bytes.
func bigData(n int) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(uint64(n), uint64(time.Now().UnixNano())))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// heapInuse is the heap in use after two collections.
func heapInuse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// bigSecrets creates n Secrets of size random bytes named prefix-i, grants
// sa get and watch on them, and returns their names.
func (f *fixture) bigSecrets(sa, prefix string, n, size int) []string {
	var names []string
	for i := range n {
		name := fmt.Sprintf("%s-%d", prefix, i)
		f.putSecret(f.ns, name, map[string][]byte{"k": bigData(size)})
		names = append(names, name)
	}
	f.grant(f.ns, sa, []string{"get", "watch"}, names...)
	return names
}

func classOf(names []string) string {
	var objs []string
	for _, n := range names {
		objs = append(objs, "- {secretName: "+n+", path: "+n+"}")
	}
	return strings.Join(objs, "\n")
}

// A fetch whose volume never subscribes (its publish fails after the fetch:
// a template that does not render, the node's tmpfs budget; kubelet
// retries) leaves nothing of its Secrets in the driver's heap while the
// watches it opened are held: the node's --fetch-bytes bound was given
// back when the fetch returned, so anything kept would be charged to
// nothing. Measured against the same fetches by GET.
func TestHeldWatchesKeepNoSecret(t *testing.T) {
	f := newFixture(t)
	f.p.holdFor = defaultHoldFor
	f.serviceAccount(f.ns, "app")
	const perFetch, fetches, size = maxConcurrentGets, 5, 1000 << 10
	names := f.bigSecrets("app", "big", perFetch*fetches*2, size)
	flights := provider.NewInFlight(provider.Limits{MaxBytes: provider.DefaultMaxBytes}.WireBytes())
	run := func(names []string) (retained uint64) {
		base := heapInuse()
		for i := range fetches {
			req := f.request("app", classOf(names[i*perFetch:(i+1)*perFetch]))
			req.Flight = flights.Flight()
			res, err := f.p.Fetch(f.ctx(), req)
			req.Flight.Done() // as apply does; the publish then fails
			if err != nil {
				t.Fatalf("fetch %d: %v", i, err)
			}
			for _, file := range res.Files {
				clear(file.Contents)
			}
		}
		if now := heapInuse(); now > base {
			retained = now - base
		}
		return retained
	}
	retained := run(names[:perFetch*fetches])
	held := f.p.OpenWatches()
	f.eventually("the holds to end", func() bool { return f.p.OpenWatches() == 0 })
	f.p.noInitialEvents.Store(true) // the GET path, for comparison
	getRetained := run(names[perFetch*fetches:])
	f.p.noInitialEvents.Store(false)
	t.Logf("%d fetches of %d x %d KiB: %.1f MiB retained with %d watches held, %.1f MiB by GET",
		fetches, perFetch, size>>10, float64(retained)/(1<<20), held, float64(getRetained)/(1<<20))
	// A held stream keeps its goroutines and a small decoder buffer.
	if retained > getRetained+uint64(held)*(128<<10) {
		t.Errorf("%d held watches retain %.1f MiB (GET path %.1f MiB): more than their streams",
			held, float64(retained)/(1<<20), float64(getRetained)/(1<<20))
	}
}

// A volume whose fetch read a large Secret from the watch's initial events
// keeps the watch, but not a decoder buffer of the Secret's size for the
// stream's life: the stream reconnects from the bookmark once the fetch
// took the Secret.
func TestSubscribedWatchGivesBackTheInitialBuffer(t *testing.T) {
	f := newFixture(t)
	f.serviceAccount(f.ns, "app")
	const n, size = 16, 1000 << 10
	names := f.bigSecrets("app", "vol", n, size)
	base := heapInuse()
	var stops []func()
	for _, name := range names {
		req := f.request("app", classOf([]string{name}))
		res, err := f.p.Fetch(f.ctx(), req)
		if err != nil {
			t.Fatal(err)
		}
		req.CurrentVersions = res.Versions
		for _, file := range res.Files {
			clear(file.Contents)
		}
		stop, err := f.p.Watch(req, func() {})
		if err != nil {
			t.Fatal(err)
		}
		stops = append(stops, stop)
	}
	f.eventually("the streams to reconnect", func() bool {
		_, watches := f.log.counts()
		return watches == 2*n && f.p.OpenWatches() == n
	})
	var retained uint64
	if now := heapInuse(); now > base {
		retained = now - base
	}
	t.Logf("%d volumes of one %d KiB Secret each: %.1f MiB retained, %d streams", n, size>>10, float64(retained)/(1<<20), f.p.OpenWatches())
	for _, stop := range stops {
		stop()
	}
	if retained > n*(256<<10) {
		t.Errorf("%d subscribed watches retain %.1f MiB (%.2f MiB each)", n, float64(retained)/(1<<20), float64(retained)/n/(1<<20))
	}
}

// A stream of the fetch that opened the watch ran past that fetch's
// allowance (here: the node's bound, filled by other tenants' fetches), and
// a volume of the same service account subscribed meanwhile: the watch
// goes on for that volume instead of waiting for a fresher token.
func TestChargeFailureLeavesTheVolumesWatch(t *testing.T) {
	f := newFixture(t)
	f.serviceAccount(f.ns, "app")
	f.grant(f.ns, "app", []string{"get", "watch"}, "db")
	f.putSecret(f.ns, "db", map[string][]byte{"k": bigData(1000 << 10)})
	// Watch responses a little slow (a loaded API server), so the volume's
	// Watch lands while the fetch's stream connects.
	p, err := New(Options{Host: f.s.Host, CAData: f.s.CAData, QPS: 1e6, Burst: 1e6,
		WrapTransport: func(next http.RoundTripper) http.RoundTripper {
			return roundTripFunc(func(r *http.Request) (*http.Response, error) {
				if r.URL.Query().Get("watch") == "true" {
					time.Sleep(500 * time.Millisecond)
				}
				return next.RoundTrip(r)
			})
		}})
	if err != nil {
		t.Fatal(err)
	}
	p.holdFor = 300 * time.Millisecond
	limit := provider.Limits{MaxBytes: provider.DefaultMaxBytes}.WireBytes()
	flights := provider.NewInFlight(limit)
	others := flights.Flight()
	if err := others.Charge(limit + provider.FreeBytes); err != nil {
		t.Fatal(err)
	}
	reqA := f.request("app", "- secretName: db\n")
	reqA.Flight = flights.Flight()
	errA := make(chan error, 1)
	go func() { _, err := p.Fetch(f.ctx(), reqA); errA <- err }()
	f.eventually("the fetch to open its watch", func() bool { p.mu.Lock(); defer p.mu.Unlock(); return len(p.watches) == 1 })
	// Another pod of the service account, mounted a moment ago.
	cur, err := f.s.Client.CoreV1().Secrets(f.ns).Get(f.ctx(), "db", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	reqB := f.request("app", "- secretName: db\n")
	reqB.CurrentVersions = []provider.ObjectVersion{{ID: versionID("db"), Version: cur.ResourceVersion}}
	var c counter
	stop, err := p.Watch(reqB, c.changed)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	wantCode(t, <-errA, codes.Unavailable, provider.InFlightFlag)
	reqA.Flight.Done()
	others.Done()
	f.eventually("the volume's stream to open", func() bool { return p.OpenWatches() == 1 })
	time.Sleep(time.Second) // its initial events (a change for the volume, or not)
	c0 := c.get()
	f.putSecret(f.ns, "db", map[string][]byte{"k": []byte("rotated")})
	f.eventually("the volume to be told of the rotation", func() bool { return c.get() > c0 })
}

// Watch opens wait for the same client-side limit as GETs (client-go never
// limits watches itself): fetches that each open 8 watches of absent
// Secrets and fail, in a loop, stay within Options.QPS and Burst.
func TestWatchOpensWaitForTheRateLimit(t *testing.T) {
	f := newFixture(t)
	p, err := New(Options{Host: f.s.Host, CAData: f.s.CAData, WrapTransport: f.log.wrap, QPS: 5, Burst: 10})
	if err != nil {
		t.Fatal(err)
	}
	f.serviceAccount(f.ns, "evil")
	var names []string
	for i := range maxConcurrentGets {
		names = append(names, fmt.Sprintf("a-%d", i))
	}
	f.grant(f.ns, "evil", []string{"get", "watch"}, names...)
	reqs := make([]*provider.Request, 8)
	for i := range reqs {
		reqs[i] = f.request("evil", classOf(names))
	}
	const window = 3 * time.Second
	deadline := time.Now().Add(window)
	var wg sync.WaitGroup
	for _, req := range reqs[:4] {
		wg.Go(func() {
			for time.Now().Before(deadline) {
				ctx, cancel := context.WithDeadline(f.ctx(), deadline)
				_, _ = p.Fetch(ctx, req)
				cancel()
			}
		})
	}
	wg.Wait()
	gets, watches := f.log.counts()
	t.Logf("%d GETs and %d watches in %v, limit 5/s burst 10", gets, watches, window)
	if allowed := 10 + 5*window.Seconds(); float64(gets+watches) > allowed+5 {
		t.Errorf("%d requests in %v with a client-side limit of 5/s, burst 10", gets+watches, window)
	}
}

// Publishes that fail after their fetch (the volume never subscribes) hold
// at most maxHeld watches on the node; past it, fetches GET.
func TestHeldWatchesAreBounded(t *testing.T) {
	f := newFixture(t)
	f.p.holdFor = time.Hour // only the bound ends this
	f.serviceAccount(f.ns, "app")
	var names []string
	for i := range 2 * maxHeld {
		names = append(names, fmt.Sprintf("o-%d", i))
	}
	f.grant(f.ns, "app", []string{"get", "watch"}, names...)
	for i := 0; i < len(names); i += maxConcurrentGets {
		var objects strings.Builder
		for _, n := range names[i : i+maxConcurrentGets] {
			fmt.Fprintf(&objects, "- {secretName: %s, optional: true}\n", n)
		}
		if _, err := f.p.Fetch(f.ctx(), f.request("app", objects.String())); err != nil {
			t.Fatal(err)
		}
	}
	gets, watches := f.log.counts()
	t.Logf("%d fetches of %d absent Secrets: %d watches held, %d GETs", len(names)/maxConcurrentGets, maxConcurrentGets, f.p.OpenWatches(), gets)
	if watches != maxHeld || f.p.OpenWatches() != maxHeld || gets != len(names)-maxHeld {
		t.Errorf("%d watch requests, %d open, %d GETs; want %d, %d, %d", watches, f.p.OpenWatches(), gets, maxHeld, maxHeld, len(names)-maxHeld)
	}
	// Let them go (the test's holdFor would keep them an hour).
	f.p.mu.Lock()
	var held []*sharedWatch
	for _, w := range f.p.watches {
		held = append(held, w)
	}
	f.p.mu.Unlock()
	for _, w := range held {
		w.mu.Lock()
		var ids []uint64
		for id := range w.subs {
			ids = append(ids, id)
		}
		w.mu.Unlock()
		for _, id := range ids {
			f.p.unsubscribe(w, id)
		}
	}
	if n := f.p.held.Load(); n != 0 {
		t.Errorf("%d holds counted after all were released", n)
	}
}

// A subscribed stream that decoded a large event (the initial one, or a
// change of a Secret that grew after it was mounted) reconnects from it, so
// it does not keep a decoder buffer of that size for its life.
func TestLargeEventsDoNotStayInTheStream(t *testing.T) {
	f := newFixture(t)
	f.serviceAccount(f.ns, "app")
	const n = 24
	var names []string
	for i := range n {
		name := fmt.Sprintf("m-%d", i)
		f.putSecret(f.ns, name, map[string][]byte{"tiny": []byte("x")})
		names = append(names, name)
	}
	f.grant(f.ns, "app", []string{"get", "watch"}, names...)
	var c counter
	var stops []func()
	for _, name := range names {
		stop, err := f.p.Watch(f.mount("app", "- secretName: "+name+"\n  key: tiny\n"), c.changed)
		if err != nil {
			t.Fatal(err)
		}
		stops = append(stops, stop)
	}
	defer func() {
		for _, stop := range stops {
			stop()
		}
	}()
	f.eventually("the streams", func() bool { return f.p.OpenWatches() == n })
	base := heapInuse()
	_, before := f.log.counts()
	for _, name := range names {
		f.putSecret(f.ns, name, map[string][]byte{"tiny": []byte("x"), "pad": bigData(1000 << 10)})
	}
	f.eventually("every change seen and the streams reconnected", func() bool {
		_, watches := f.log.counts()
		return c.get() >= n && watches-before >= n && f.p.OpenWatches() == n
	})
	var retained uint64
	if now := heapInuse(); now > base {
		retained = now - base
	}
	t.Logf("%d streams after a 1000 KiB change each: %.1f MiB retained", n, float64(retained)/(1<<20))
	if retained > n*(256<<10) {
		t.Errorf("%d subscribed streams retain %.1f MiB after one large change each", n, float64(retained)/(1<<20))
	}
}

// A class naming more than maxSecretNames distinct Secrets is refused
// before any request: each would be a watch on every node.
func TestSecretNamesBounded(t *testing.T) {
	f := newFixture(t)
	f.serviceAccount(f.ns, "app")
	var objects strings.Builder
	for i := range maxSecretNames + 1 {
		fmt.Fprintf(&objects, "- {secretName: o-%d, optional: true}\n", i)
	}
	_, err := f.p.Fetch(f.ctx(), f.request("app", objects.String()))
	wantCode(t, err, codes.InvalidArgument, fmt.Sprintf("more than %d allowed", maxSecretNames))
	_, err = f.p.Watch(f.request("app", objects.String()), func() {})
	wantCode(t, err, codes.InvalidArgument)
	if gets, watches := f.log.counts(); gets+watches != 0 {
		t.Errorf("%d requests for a class refused", gets+watches)
	}
}
