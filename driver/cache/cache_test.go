package cache

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/secretfs/secretfs/provider"
)

// clock is a settable test clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// backend counts calls and remembers every result it handed out, so tests
// can see that the cache zeroes them.
type backend struct {
	calls   atomic.Int64
	gate    chan struct{} // when set, calls wait for it
	mu      sync.Mutex
	results []*provider.Result
	err     error
}

func (b *backend) fetch(ctx context.Context) (*provider.Result, error) {
	b.calls.Add(1)
	if b.gate != nil {
		select {
		case <-b.gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err != nil {
		return nil, b.err
	}
	res := &provider.Result{Files: []provider.File{{Path: "a", Contents: []byte("secret-a")}, {Path: "b", Contents: []byte("secret-b")}}}
	b.results = append(b.results, res)
	return res, nil
}

func (b *backend) wiped(i int) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, f := range b.results[i].Files {
		for _, c := range f.Contents {
			if c != 0 {
				return false
			}
		}
	}
	return true
}

func newTestCache() (*Cache, *clock) {
	clk := &clock{t: time.Unix(1_000_000, 0)}
	return New(Options{MaxAge: time.Minute, Now: clk.now}), clk
}

var keyer = NewKeyer()

func key(sa string) Key {
	return keyer.Key(Identity{Provider: "fake", Namespace: "ns", ServiceAccount: sa, Parameters: map[string]string{"objects": "a,b"}})
}

func TestHitMissAndRelease(t *testing.T) {
	c, clk := newTestCache()
	b := &backend{}
	ctx := context.Background()
	res, at, out, err := c.Get(ctx, "v1", key("web"), b.fetch)
	if err != nil || out != Miss || string(res.Files[0].Contents) != "secret-a" || !at.Equal(clk.now()) {
		t.Fatalf("first get: %v %v %v", out, err, at)
	}
	res.Wipe() // the caller's copy is its own
	clk.add(30 * time.Second)
	res, at2, out, err := c.Get(ctx, "v2", key("web"), b.fetch)
	if err != nil || out != Hit || string(res.Files[1].Contents) != "secret-b" || !at2.Equal(at) {
		t.Fatalf("second get: %v %v, age from %v", out, err, at2)
	}
	if _, _, out, _ := c.Get(ctx, "v3", key("api"), b.fetch); out != Miss {
		t.Fatalf("another service account was served %v", out)
	}
	if s := c.Stats(); s.Entries != 2 || s.Users != 3 || b.calls.Load() != 2 {
		t.Fatalf("stats %+v calls %d", s, b.calls.Load())
	}
	c.Release("v1")
	if b.wiped(0) {
		t.Fatal("entry wiped while v2 still uses it")
	}
	c.Release("v2")
	if !b.wiped(0) {
		t.Fatal("entry not wiped after its last user left")
	}
	c.Release("v3")
	c.Release("v3") // twice is fine
	if s := c.Stats(); s != (Stats{}) {
		t.Fatalf("stats after all released: %+v", s)
	}
}

func TestExpiry(t *testing.T) {
	c, clk := newTestCache()
	b := &backend{}
	ctx := context.Background()
	c.Get(ctx, "v1", key("web"), b.fetch)
	clk.add(time.Minute) // age == MaxAge: no longer served
	if _, _, out, _ := c.Get(ctx, "v2", key("web"), b.fetch); out != Miss {
		t.Fatalf("expired entry served: %v", out)
	}
	if !b.wiped(0) {
		t.Fatal("replaced result not wiped")
	}
	// A failed refresh of an expired entry keeps nothing servable.
	clk.add(time.Minute)
	b.err = provider.PermissionDenied("revoked")
	if _, _, _, err := c.Get(ctx, "v1", key("web"), b.fetch); provider.CodeOf(err).String() != "PermissionDenied" {
		t.Fatalf("err %v", err)
	}
	if s := c.Stats(); s.Data != 0 || s.Users != 2 || !b.wiped(1) {
		t.Fatalf("after failed refresh: %+v", s)
	}
}

func TestCollapse(t *testing.T) {
	c, _ := newTestCache()
	b := &backend{gate: make(chan struct{})}
	const n = 50
	var wg sync.WaitGroup
	outcomes := make([]Outcome, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, _, out, err := c.Get(context.Background(), string(rune('A'+i)), key("web"), b.fetch)
			if err != nil || string(res.Files[0].Contents) != "secret-a" {
				t.Errorf("get %d: %v", i, err)
			}
			outcomes[i] = out
		}()
	}
	for b.calls.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	// Let the others join the flight (or find the entry) before it ends.
	waitUntil(t, func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		e := c.entries[key("web")]
		return e != nil && e.flight != nil && len(e.flight.waiters) == n
	})
	close(b.gate)
	wg.Wait()
	misses := 0
	for _, o := range outcomes {
		if o == Miss {
			misses++
		}
	}
	if b.calls.Load() != 1 || misses != 1 {
		t.Fatalf("%d backend calls, %d misses for %d concurrent gets", b.calls.Load(), misses, n)
	}
	if s := c.Stats(); s.Users != n || s.Entries != 1 || s.Data != 1 {
		t.Fatalf("stats %+v", s)
	}
}

// A caller that gives up does not cancel the call others wait for; when
// the last one gives up the call is cancelled and nothing is kept.
func TestWaiterLeaves(t *testing.T) {
	c, _ := newTestCache()
	b := &backend{gate: make(chan struct{})}
	ctx1, cancel1 := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { _, _, _, err := c.Get(ctx1, "v1", key("web"), b.fetch); errc <- err }()
	got := make(chan error, 1)
	waitUntil(t, func() bool { return b.calls.Load() == 1 })
	go func() { _, _, _, err := c.Get(context.Background(), "v2", key("web"), b.fetch); got <- err }()
	waitUntil(t, func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return len(c.entries[key("web")].flight.waiters) == 2
	})
	cancel1()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("leaving caller: %v", err)
	}
	close(b.gate)
	if err := <-got; err != nil {
		t.Fatalf("remaining caller failed: %v", err)
	}
	if s := c.Stats(); s.Users != 1 {
		t.Fatalf("stats %+v", s)
	}

	// Everyone leaves: the call is cancelled, nothing remains.
	c.Release("v2")
	b2 := &backend{gate: make(chan struct{})}
	ctx3, cancel3 := context.WithCancel(context.Background())
	go func() { _, _, _, err := c.Get(ctx3, "v3", key("web"), b2.fetch); errc <- err }()
	waitUntil(t, func() bool { return b2.calls.Load() == 1 })
	cancel3()
	<-errc
	waitUntil(t, func() bool { return c.Stats() == Stats{} })
}

func TestInvalidate(t *testing.T) {
	c, clk := newTestCache()
	b := &backend{}
	ctx := context.Background()
	c.Get(ctx, "v1", key("web"), b.fetch)
	c.Get(ctx, "v2", key("web"), b.fetch)
	c.Invalidate("v1", clk.now().Add(-time.Second)) // announced before the fetch: already in it
	if _, _, out, _ := c.Get(ctx, "v2", key("web"), b.fetch); out != Hit {
		t.Fatalf("older change invalidated a newer entry: %v", out)
	}
	clk.add(time.Second)
	c.Invalidate("v1", clk.now())
	if !b.wiped(0) {
		t.Fatal("invalidated entry not wiped")
	}
	if _, _, out, _ := c.Get(ctx, "v2", key("web"), b.fetch); out != Miss || b.calls.Load() != 2 {
		t.Fatalf("invalidated entry served: %v", out)
	}
	// A change announced during a call: its answer is given but not kept.
	b.gate = make(chan struct{})
	clk.add(time.Minute)
	done := make(chan struct{})
	go func() { c.Get(ctx, "v1", key("web"), b.fetch); close(done) }()
	waitUntil(t, func() bool { return b.calls.Load() == 3 })
	clk.add(time.Second)
	c.Invalidate("v2", clk.now())
	close(b.gate)
	<-done
	if s := c.Stats(); s.Data != 0 || !b.wiped(2) {
		t.Fatalf("stale answer kept: %+v", s)
	}
}

func TestKeyCoversIdentity(t *testing.T) {
	base := Identity{Provider: "azure", Namespace: "ns", ServiceAccount: "web",
		Tokens:     map[string]provider.Token{"api://AzureADTokenExchange": {Token: "t1"}},
		Secrets:    map[string]string{"clientid": "x", "clientsecret": "y"},
		Parameters: map[string]string{"keyvaultName": "kv", "clientID": "c1", "objects": "o"}}
	k := NewKeyer()
	want := k.Key(base)
	same := base
	same.Tokens = map[string]provider.Token{"api://AzureADTokenExchange": {Token: "another pod's token"}}
	if k.Key(same) != want {
		t.Fatal("token value changed the key")
	}
	variants := map[string]func(*Identity){
		"provider":  func(i *Identity) { i.Provider = "fake" },
		"namespace": func(i *Identity) { i.Namespace = "ns2" },
		"sa":        func(i *Identity) { i.ServiceAccount = "api" },
		"audience":  func(i *Identity) { i.Tokens = nil },
		"secret":    func(i *Identity) { i.Secrets = map[string]string{"clientid": "x", "clientsecret": "z"} },
		"param": func(i *Identity) {
			i.Parameters = map[string]string{"keyvaultName": "kv", "clientID": "c2", "objects": "o"}
		},
		"shift": func(i *Identity) { i.Namespace, i.ServiceAccount = "nsw", "eb" },
		"moved": func(i *Identity) { i.Secrets, i.Parameters = i.Parameters, i.Secrets },
	}
	for name, change := range variants {
		v := base
		change(&v)
		if k.Key(v) == want {
			t.Errorf("%s: same key", name)
		}
	}
	if NewKeyer().Key(base) == want {
		t.Error("two keyers derive the same key: the HMAC key is not random")
	}
}

func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("timed out")
		}
		time.Sleep(time.Millisecond)
	}
}

// A class's own interval is the entry's max age for its Gets.
func TestPolicyMaxAge(t *testing.T) {
	c, clk := newTestCache()
	b := &backend{}
	ctx := context.Background()
	pol := Policy{MaxAge: 10 * time.Second}
	c.GetWith(ctx, "v1", key("web"), pol, b.fetch)
	clk.add(9 * time.Second)
	if _, _, out, _ := c.GetWith(ctx, "v2", key("web"), pol, b.fetch); out != Hit {
		t.Fatalf("young entry: %v", out)
	}
	clk.add(time.Second)
	if _, _, out, _ := c.GetWith(ctx, "v2", key("web"), pol, b.fetch); out != Miss {
		t.Fatalf("entry older than the class's interval served: %v", out)
	}
}

// Stale-if-error: a new volume of the same key gets the last good result
// when the backend is down, within the age bound, never on a refusal and
// never without ServeStale; it is wiped with the last holder as always.
func TestStaleIfError(t *testing.T) {
	c, clk := newTestCache()
	b := &backend{}
	ctx := context.Background()
	keep := Policy{StaleIfError: 5 * time.Minute}
	serve := keep
	serve.ServeStale = true
	if _, _, _, err := c.GetWith(ctx, "v1", key("web"), keep, b.fetch); err != nil {
		t.Fatal(err)
	}
	clk.add(2 * time.Minute) // expired (MaxAge 1m), within 5m
	b.err = provider.Unavailable("vault down")
	// A refresh of a mounted volume (no ServeStale) just fails.
	if res, _, out, err := c.GetWith(ctx, "v1", key("web"), keep, b.fetch); res != nil || out == Stale || err == nil {
		t.Fatalf("refresh without ServeStale: %v %v %v", res, out, err)
	}
	if b.wiped(0) {
		t.Fatal("the kept result was wiped by a failed refresh")
	}
	res, at, out, err := c.GetWith(ctx, "new", key("web"), serve, b.fetch)
	if out != Stale || res == nil || string(res.Files[0].Contents) != "secret-a" || provider.CodeOf(err).String() != "Unavailable" {
		t.Fatalf("new pod: %v %v %v", res, out, err)
	}
	if got := clk.now().Sub(at); got != 2*time.Minute {
		t.Fatalf("stale age %v", got)
	}
	// Another identity never sees it.
	if res, _, out, _ := c.GetWith(ctx, "other", key("api"), serve, b.fetch); res != nil || out == Stale {
		t.Fatalf("another identity was served %v", out)
	}
	// A refusal is not "down": no stale content.
	b.err = provider.PermissionDenied("revoked")
	if res, _, out, _ := c.GetWith(ctx, "new2", key("web"), serve, b.fetch); res != nil || out == Stale {
		t.Fatalf("served stale content after PermissionDenied: %v", out)
	}
	// Too old.
	b.err = provider.Unavailable("vault down")
	clk.add(4 * time.Minute)
	if res, _, out, _ := c.GetWith(ctx, "new3", key("web"), serve, b.fetch); res != nil || out == Stale {
		t.Fatalf("served content older than StaleIfError: %v", out)
	}
	if !b.wiped(0) {
		t.Fatal("content older than StaleIfError is still kept")
	}
	for _, u := range []string{"v1", "new", "other", "new2", "new3"} {
		c.Release(u)
	}
	if s := c.Stats(); s != (Stats{}) {
		t.Fatalf("stats after all released: %+v", s)
	}
}
