package kubernetes

import (
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/secretfs/secretfs/provider"
)

// counter is a changed callback that counts its calls.
type counter struct{ n atomic.Int64 }

func (c *counter) changed()   { c.n.Add(1) }
func (c *counter) get() int64 { return c.n.Load() }

// mount fetches like the driver does on publish and returns the request with
// CurrentVersions set, ready for Watch.
func (f *fixture) mount(sa, objects string) *provider.Request {
	f.t.Helper()
	req := f.request(sa, objects)
	res, err := f.p.Fetch(f.ctx(), req)
	if err != nil {
		f.t.Fatal(err)
	}
	req.CurrentVersions = res.Versions
	return req
}

func (f *fixture) serverWatches() int {
	f.t.Helper()
	n, err := f.s.OpenSecretWatches(f.ctx())
	if err != nil {
		f.t.Fatal(err)
	}
	return n
}

func TestWatchRotation(t *testing.T) {
	f := newFixture(t)
	f.serviceAccount(f.ns, "app")
	f.grant(f.ns, "app", []string{"get", "watch"}, "db")
	f.putSecret(f.ns, "db", map[string][]byte{"k": []byte("v0")})
	baseline := f.serverWatches()

	// Two volumes of pods of the same service account share one API watch.
	var a, b counter
	stopA, err := f.p.Watch(f.mount("app", "- secretName: db\n"), a.changed)
	if err != nil {
		t.Fatal(err)
	}
	stopB, err := f.p.Watch(f.mount("app", "- secretName: db\n  key: k\n"), b.changed)
	if err != nil {
		t.Fatal(err)
	}
	f.eventually("one open watch", func() bool { return f.p.OpenWatches() == 1 })
	if _, watches := f.log.counts(); watches != 1 {
		t.Errorf("%d watch requests for two volumes of one Secret, want 1", watches)
	}
	if a.get() != 0 || b.get() != 0 {
		t.Errorf("changed called before any change: %d, %d", a.get(), b.get())
	}

	for i := 1; i <= 3; i++ {
		f.putSecret(f.ns, "db", map[string][]byte{"k": []byte(fmt.Sprint("v", i))})
		f.eventually("changed after update", func() bool { return a.get() >= int64(i) && b.get() >= int64(i) })
	}
	res, err := f.p.Fetch(f.ctx(), f.request("app", "- secretName: db\n"))
	if err != nil || string(res.Files[0].Contents) != "v3" {
		t.Fatalf("after rotation: %v %+v", err, res)
	}
	// A deletion is a change too.
	if err := f.s.Client.CoreV1().Secrets(f.ns).Delete(f.ctx(), "db", deleteNow); err != nil {
		t.Fatal(err)
	}
	f.eventually("changed after delete", func() bool { return a.get() >= 4 })

	stopA()
	if f.p.sharedWatches() != 1 {
		t.Errorf("watch dropped while volume B still uses it")
	}
	// A's token opened the stream, so it reconnects with B's.
	f.eventually("the watch to stay open for B", func() bool { return f.p.OpenWatches() == 1 })
	stopB()
	stopB() // idempotent
	// Only the hold of the last bare Fetch may keep it, for holdFor.
	f.eventually("the watch to close after the last stop", func() bool { return f.p.OpenWatches() == 0 && f.p.sharedWatches() == 0 })
	f.eventually("the API server to close the watch", func() bool { return f.serverWatches() == baseline })
}

func TestWatchForbiddenFallsBack(t *testing.T) {
	f := newFixture(t)
	f.serviceAccount(f.ns, "getonly")
	f.grant(f.ns, "getonly", []string{"get"}, "db")
	f.putSecret(f.ns, "db", map[string][]byte{"k": []byte("v")})

	for range 2 {
		var c counter
		stop, err := f.p.Watch(f.mount("getonly", "- secretName: db\n"), c.changed)
		wantCode(t, err, codes.PermissionDenied, "may get but not watch", "add verb watch")
		if stop != nil {
			t.Errorf("stop returned with an error")
		}
	}
	if n := strings.Count(f.logs.String(), "may get but not watch"); n != 1 {
		t.Errorf("fallback logged %d times, want once", n)
	}
	if f.p.OpenWatches() != 0 || f.p.sharedWatches() != 0 {
		t.Errorf("a forbidden watch is still held")
	}
	// Fetch still works: refresh on republish.
	if _, err := f.p.Fetch(f.ctx(), f.request("getonly", "- secretName: db\n")); err != nil {
		t.Fatal(err)
	}
}

func TestWatchRecoversWithFresherToken(t *testing.T) {
	f := newFixture(t)
	f.serviceAccount(f.ns, "app")
	f.grant(f.ns, "app", []string{"get", "watch"}, "db")
	f.putSecret(f.ns, "db", map[string][]byte{"k": []byte("v0")})

	// The first volume's token is rejected (as a token of a deleted pod is):
	// the watch waits for a fresher one instead of failing the volume.
	stale := f.mount("app", "- secretName: db\n")
	f.eventually("the fetch's hold on the watch to end", func() bool { return f.p.OpenWatches() == 0 })
	f.log.mu.Lock()
	mountWatches := len(f.log.watchTokens) // the mount's fetch read from a watch
	f.log.mu.Unlock()
	stale.Tokens[""] = provider.Token{Token: "rejected-token", ExpirationTimestamp: time.Now().Add(time.Minute)}
	var a counter
	stopA, err := f.p.Watch(stale, a.changed)
	if err != nil {
		t.Fatal(err)
	}
	defer stopA()
	if f.p.OpenWatches() != 0 {
		t.Fatal("a watch opened with a rejected token")
	}
	// Republish brings a fresh token: the watch restarts with it at once.
	var b counter
	stopB, err := f.p.Watch(f.mount("app", "- secretName: db\n"), b.changed)
	if err != nil {
		t.Fatal(err)
	}
	defer stopB()
	f.eventually("the watch to open with the fresh token", func() bool { return f.p.OpenWatches() == 1 })
	f.log.mu.Lock()
	tokens := slices.Clone(f.log.watchTokens[mountWatches:])
	f.log.mu.Unlock()
	if len(tokens) != 2 || tokens[0] != "rejected-token" || tokens[1] == "rejected-token" {
		t.Errorf("watch requests used %d tokens, want the rejected then the fresh one", len(tokens))
	}
	f.putSecret(f.ns, "db", map[string][]byte{"k": []byte("v1")})
	f.eventually("both volumes notified", func() bool { return a.get() >= 1 && b.get() >= 1 })
}

func TestWatchNoticesChangeBeforeWatch(t *testing.T) {
	f := newFixture(t)
	f.serviceAccount(f.ns, "app")
	f.grant(f.ns, "app", []string{"get", "watch"}, "db", "later")
	f.putSecret(f.ns, "db", map[string][]byte{"k": []byte("v0")})

	// Changed between mount and Watch: resuming at the mounted version
	// reports it.
	req := f.mount("app", "- secretName: db\n- secretName: later\n  optional: true\n")
	f.putSecret(f.ns, "db", map[string][]byte{"k": []byte("v1")})
	var c counter
	stop, err := f.p.Watch(req, c.changed)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	f.eventually("change before watch reported", func() bool { return c.get() >= 1 })
	// An optional Secret that appears later is a change too.
	seen := c.get()
	f.putSecret(f.ns, "later", map[string][]byte{"x": []byte("y")})
	f.eventually("creation reported", func() bool { return c.get() > seen })
	f.eventually("two streams", func() bool { return f.p.OpenWatches() == 2 })
}

func TestWatchesComeAndGo(t *testing.T) {
	f := newFixture(t)
	baseline := f.serverWatches()
	const secrets, volumes = 5, 100
	var names []string
	for i := range secrets {
		names = append(names, fmt.Sprint("s", i))
		f.putSecret(f.ns, names[i], map[string][]byte{"k": []byte("v")})
	}
	f.serviceAccount(f.ns, "app")
	f.grant(f.ns, "app", []string{"get", "watch"}, names...)
	var stops []func()
	var c counter
	for i := range volumes {
		stop, err := f.p.Watch(f.mount("app", "- secretName: "+names[i%secrets]+"\n"), c.changed)
		if err != nil {
			t.Fatal(err)
		}
		stops = append(stops, stop)
	}
	f.eventually("one stream per Secret", func() bool { return f.p.OpenWatches() == secrets })
	if _, watches := f.log.counts(); watches != secrets {
		t.Errorf("%d watch requests for %d volumes of %d Secrets", watches, volumes, secrets)
	}
	t.Logf("%d volumes of %d Secrets: %d API watches open (server: %d)", volumes, secrets, f.p.OpenWatches(), f.serverWatches()-baseline)
	for _, stop := range stops {
		stop()
	}
	if f.p.OpenWatches() != 0 || f.p.sharedWatches() != 0 {
		t.Errorf("after all volumes left: %d streams, %d shared", f.p.OpenWatches(), f.p.sharedWatches())
	}
	f.eventually("the API server to close every watch", func() bool { return f.serverWatches() == baseline })
	t.Logf("after all %d volumes left: %d API watches open", volumes, f.p.OpenWatches())
}

// BenchmarkRotationLatency measures the time from a Secret update (the API
// call starting) to the changed callback, over b.N updates on a real API
// server; it reports p50-ns/op and p99-ns/op besides the mean.
func BenchmarkRotationLatency(b *testing.B) {
	f := newFixture(b)
	f.serviceAccount(f.ns, "app")
	f.grant(f.ns, "app", []string{"get", "watch"}, "db")
	f.putSecret(f.ns, "db", map[string][]byte{"k": []byte("v")})
	notified := make(chan time.Time, 100)
	stop, err := f.p.Watch(f.mount("app", "- secretName: db\n"), func() { notified <- time.Now() })
	if err != nil {
		b.Fatal(err)
	}
	defer stop()
	var lat []time.Duration
	for i := 0; b.Loop(); i++ {
		start := time.Now()
		f.putSecret(f.ns, "db", map[string][]byte{"k": []byte(fmt.Sprint(i))})
		select {
		case at := <-notified:
			lat = append(lat, at.Sub(start))
		case <-time.After(20 * time.Second):
			b.Fatalf("update %d not reported", i)
		}
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds()), "p50-ns/op")
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds()), "p99-ns/op")
}

func TestWatchReconnectsWithCurrentToken(t *testing.T) {
	f := newFixture(t)
	f.serviceAccount(f.ns, "app")
	f.grant(f.ns, "app", []string{"get", "watch"}, "db")
	f.putSecret(f.ns, "db", map[string][]byte{"k": []byte("v0")})

	var old, fresh counter
	oldReq := f.mount("app", "- secretName: db\n")
	stopOld, err := f.p.Watch(oldReq, old.changed)
	if err != nil {
		t.Fatal(err)
	}
	f.eventually("the watch to open", func() bool { return f.p.OpenWatches() == 1 })
	// Republish with a fresh token: the driver watches again, then stops the
	// old subscription. The stream must not stay on the old volume's token.
	freshReq := f.mount("app", "- secretName: db\n")
	stopFresh, err := f.p.Watch(freshReq, fresh.changed)
	if err != nil {
		t.Fatal(err)
	}
	defer stopFresh()
	if _, watches := f.log.counts(); watches != 1 {
		t.Errorf("a healthy watch was reopened when a volume joined (%d requests)", watches)
	}
	stopOld()
	f.eventually("a second watch request", func() bool { _, w := f.log.counts(); return w == 2 })
	f.log.mu.Lock()
	used := slices.Clone(f.log.watchTokens)
	f.log.mu.Unlock()
	if used[0] != oldReq.Tokens[""].Token || used[1] != freshReq.Tokens[""].Token {
		t.Errorf("watch tokens: want the old volume's, then the fresh volume's")
	}
	f.eventually("the watch to reopen", func() bool { return f.p.OpenWatches() == 1 })
	f.putSecret(f.ns, "db", map[string][]byte{"k": []byte("v1")})
	f.eventually("the fresh volume notified", func() bool { return fresh.get() >= 1 })
	if old.get() != 0 {
		t.Errorf("a stopped subscription was notified")
	}
}

// The keys remembered to log a forbidden watch once stay bounded however many
// service accounts and Secrets come and go.
func TestLogForbiddenOnceIsBounded(t *testing.T) {
	p := &Provider{forbidden: map[watchKey]bool{}}
	var logged int
	log := warnFunc(func(string, ...any) { logged++ })
	for i := range 2 * maxLoggedForbidden {
		p.logForbiddenOnce(watchKey{"ns", fmt.Sprint("s", i), "", "sa"}, true, log)
	}
	p.logForbiddenOnce(watchKey{"ns", fmt.Sprint("s", 2*maxLoggedForbidden-1), "", "sa"}, true, log)
	if logged != 2*maxLoggedForbidden {
		t.Errorf("logged %d times, want once per key (%d)", logged, 2*maxLoggedForbidden)
	}
	if n := len(p.forbidden); n > maxLoggedForbidden {
		t.Errorf("%d keys remembered, want at most %d", n, maxLoggedForbidden)
	}
}

type warnFunc func(string, ...any)

func (f warnFunc) Warn(msg string, args ...any) { f(msg, args...) }

// When the volumes sharing a watch leave together (their pods deleted at
// once), the stream does not reconnect for each departure of the volume
// whose token it uses: it goes on for restartDelay and stops with the last.
func TestVolumesLeavingTogetherDoNotReconnect(t *testing.T) {
	f := newFixture(t)
	f.serviceAccount(f.ns, "app")
	f.grant(f.ns, "app", []string{"get", "watch"}, "db")
	f.putSecret(f.ns, "db", map[string][]byte{"k": []byte("v")})
	var reqs []*provider.Request
	var stops []func()
	for range 3 {
		req := f.mount("app", "- secretName: db\n")
		stop, err := f.p.Watch(req, func() {})
		if err != nil {
			t.Fatal(err)
		}
		reqs, stops = append(reqs, req), append(stops, stop)
	}
	f.eventually("one open watch", func() bool { return f.p.OpenWatches() == 1 })
	w := f.heldWatch("db", "app")
	w.mu.Lock()
	inUse := w.inUse
	w.mu.Unlock()
	_, before := f.log.counts()
	// The volume whose token the stream uses leaves first, then the others,
	// a tenth of a second apart (kubelet unmounting deleted pods).
	for i, req := range reqs {
		if req.Tokens[""].Token == inUse {
			stops[i]()
		}
	}
	for _, stop := range stops {
		time.Sleep(100 * time.Millisecond)
		stop()
	}
	if _, after := f.log.counts(); after != before {
		t.Errorf("%d watch requests while the volumes left together, want none", after-before)
	}
	if f.p.OpenWatches() != 0 || f.p.sharedWatches() != 0 {
		t.Errorf("watch still open after the last volume left")
	}
}

// The node keeps at most Options.MaxWatches API watches: past it a volume's
// Watch fails ResourceExhausted naming the flag (the volume rotates at its
// interval) and a fetch GETs; once a watch closes, the next volume gets one.
func TestWatchesPerNodeBounded(t *testing.T) {
	f := newFixture(t)
	p, err := New(Options{Host: f.s.Host, CAData: f.s.CAData, WrapTransport: f.log.wrap, QPS: 1e6, Burst: 1e6, MaxWatches: 3})
	if err != nil {
		t.Fatal(err)
	}
	p.holdFor = 50 * time.Millisecond
	f.serviceAccount(f.ns, "app")
	var names []string
	for i := range 5 {
		name := fmt.Sprintf("s-%d", i)
		f.putSecret(f.ns, name, map[string][]byte{"k": []byte("v")})
		names = append(names, name)
	}
	f.grant(f.ns, "app", []string{"get", "watch"}, names...)
	mount := func(name string) *provider.Request {
		req := f.request("app", "- secretName: "+name+"\n")
		res, err := p.Fetch(f.ctx(), req)
		if err != nil {
			t.Fatal(err)
		}
		req.CurrentVersions = res.Versions
		return req
	}
	var stops []func()
	for _, name := range names[:3] {
		stop, err := p.Watch(mount(name), func() {})
		if err != nil {
			t.Fatal(err)
		}
		stops = append(stops, stop)
	}
	gets, _ := f.log.counts()
	req := mount(names[3])
	if after, _ := f.log.counts(); after != gets+1 {
		t.Errorf("a fetch past the bound made %d GETs, want 1 (no watch)", after-gets)
	}
	_, err = p.Watch(req, func() {})
	wantCode(t, err, codes.ResourceExhausted, "--kubernetes-max-watches", "Secret "+f.ns+"/s-3")
	if p.OpenWatches() != 3 {
		t.Errorf("%d watches open, want the bound, 3", p.OpenWatches())
	}
	stops[0]()
	stop, err := p.Watch(req, func() {})
	if err != nil {
		t.Fatalf("after a watch closed: %v", err)
	}
	for _, s := range append(stops[1:], stop) {
		s()
	}
}
