package driver

import (
	"context"
	"fmt"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/secretfs/secretfs/driver/budget"
	"github.com/secretfs/secretfs/provider"
)

// watchProvider is a testProvider that also implements provider.Watcher and
// records every watch.
// withWatchProvider wraps the env's test provider in a watchProvider, made
// on first use and stored in *wp.
func withWatchProvider(wp **watchProvider) func(*Config) {
	return func(c *Config) {
		inner := c.Providers
		c.Providers = func(name string) (provider.Provider, error) {
			p, err := inner(name)
			if err != nil {
				return nil, err
			}
			if *wp == nil {
				*wp = &watchProvider{testProvider: p.(*testProvider)}
			}
			return *wp, nil
		}
	}
}

type watchProvider struct {
	*testProvider
	mu      sync.Mutex
	watches []*testWatch
}

type testWatch struct {
	token   string
	changed func()
	stopped bool
}

func (w *watchProvider) Watch(req *provider.Request, changed func()) (func(), error) {
	// The parameters are decoded in the volume's turn, as every backend does.
	end, err := req.TakeTurn()
	if err != nil {
		return nil, err
	}
	end()
	w.mu.Lock()
	defer w.mu.Unlock()
	tw := &testWatch{token: req.Tokens["api"].Token, changed: changed}
	if req.Parameters["objects"] == "" {
		return nil, fmt.Errorf("watch without parameters")
	}
	w.watches = append(w.watches, tw)
	return func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		tw.stopped = true
	}, nil
}

func (w *watchProvider) snapshot() []testWatch {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([]testWatch, len(w.watches))
	for i, tw := range w.watches {
		out[i] = *tw
	}
	return out
}

// A watch started at a republish that did not fetch decodes the class's
// parameters in the volume's turn too (before, its request had no turn and
// the kubernetes backend parsed the objects outside turns).
func TestWatchStartsInTurn(t *testing.T) {
	var wp *watchProvider
	node := budget.New(64 << 20)
	e := newEnv(t, func(c *Config) {
		withWatchProvider(&wp)(c)
		c.Budget = node
	})
	target := e.target("vol")
	req := publishReq("vol-1", target, "app", "team-a")
	req.VolumeContext[provider.AttrTokens] = `{"api":{"token":"t1","expirationTimestamp":"2030-01-01T00:00:00Z"}}`
	if _, err := e.node.NodePublishVolume(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	// Every turn taken: the republish with new tokens (rotation not due, so
	// no fetch) cannot start its watch before the request ends.
	holder := node.Work(context.Background(), "v0", "team-b", 1<<20, 1000)
	var ends []func()
	for range runtime.GOMAXPROCS(0) {
		end, err := holder.Turn()
		if err != nil {
			t.Fatal(err)
		}
		ends = append(ends, end)
	}
	req.VolumeContext[provider.AttrTokens] = `{"api":{"token":"t2","expirationTimestamp":"2030-01-01T00:00:00Z"}}`
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := e.d.NodePublishVolume(ctx, req); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(e.d.metrics.Watches.WithLabelValues("failed")); got != 1 {
		t.Fatalf("%v watches failed, want 1: the watch waits for a turn that does not come", got)
	}
	for _, end := range ends {
		end()
	}
	if _, err := e.node.NodePublishVolume(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	if ws := wp.snapshot(); len(ws) != 2 || ws[1].token != "t2" {
		t.Fatalf("watches after the turns were free: %+v", ws)
	}
}

func TestWatcher(t *testing.T) {
	// A debounce far longer than the burst below takes, so the burst is
	// always folded into one refresh however slow the machine is.
	testDebounce = 300 * time.Millisecond
	defer func() { testDebounce = 10 * time.Millisecond }()
	var wp *watchProvider
	e := newEnv(t, withWatchProvider(&wp))
	target := e.target("vol")
	req := publishReq("vol-1", target, "app", "team-a")
	req.VolumeContext[provider.AttrTokens] = `{"api":{"token":"t1","expirationTimestamp":"2030-01-01T00:00:00Z"}}`
	if _, err := e.node.NodePublishVolume(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	ws := wp.snapshot()
	if len(ws) != 1 || ws[0].token != "t1" || ws[0].stopped {
		t.Fatalf("watches after publish: %+v", ws)
	}

	// A burst of notifications: one refresh (debounced), new content.
	e.prov.set(func(p *testProvider) { p.gen = 1 })
	for i := 0; i < 20; i++ {
		ws[0].changed()
	}
	waitFor(t, "watch refresh", func() bool {
		return testutil.ToFloat64(e.d.metrics.Refresh.WithLabelValues("watch", "rotated")) == 1
	})
	if got := readFile(t, filepath.Join(target, "a")); got != "a=v#1" {
		t.Fatalf("content after watch refresh %q", got)
	}
	if n := e.prov.callCount(); n != 2 {
		t.Fatalf("burst caused %d fetches, want 2 in all", n)
	}

	// Same tokens on republish: the watch stays.
	if _, err := e.node.NodePublishVolume(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	if ws := wp.snapshot(); len(ws) != 1 {
		t.Fatalf("watch restarted without a token change: %+v", ws)
	}
	// New tokens: a new watch with them, the old one stopped.
	req.VolumeContext[provider.AttrTokens] = `{"api":{"token":"t2","expirationTimestamp":"2030-01-01T00:00:00Z"}}`
	if _, err := e.node.NodePublishVolume(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	ws = wp.snapshot()
	if len(ws) != 2 || !ws[0].stopped || ws[1].stopped || ws[1].token != "t2" {
		t.Fatalf("watches after token change: %+v", ws)
	}
	// The old watch's notifications no longer do anything; the new one's do.
	e.prov.set(func(p *testProvider) { p.gen = 2 })
	ws[1].changed()
	waitFor(t, "second watch refresh", func() bool { return readFile(t, filepath.Join(target, "a")) == "a=v#2" })

	if err := e.unpublish("vol-1", target); err != nil {
		t.Fatal(err)
	}
	if ws := wp.snapshot(); !ws[1].stopped {
		t.Fatal("watch not stopped at unpublish")
	}
	calls := e.prov.callCount()
	ws[1].changed() // late notification after unpublish: ignored
	e.d.Close()
	if e.prov.callCount() != calls {
		t.Fatal("refresh after unpublish")
	}
	if got := testutil.ToFloat64(e.d.metrics.Watches.WithLabelValues("started")); got != 2 {
		t.Fatalf("watches started %v", got)
	}
}

// A volume keeps its last request for refreshes and its watch, but not the
// call's turn and flight: they hold the call's context, and through it the
// gRPC state of a connection kubelet closed long ago (about 8 KiB for each
// mounted volume).
func TestVolumeKeepsNoCallState(t *testing.T) {
	var wp *watchProvider
	e := newEnv(t, withWatchProvider(&wp))
	req := publishReq("vol-1", e.target("vol"), "app", "team-a")
	for _, token := range []string{"t1", "t2"} { // the second starts a new watch
		req.VolumeContext[provider.AttrTokens] = `{"api":{"token":"` + token + `","expirationTimestamp":"2030-01-01T00:00:00Z"}}`
		if _, err := e.node.NodePublishVolume(context.Background(), req); err != nil {
			t.Fatal(err)
		}
		v := e.d.volume("vol-1")
		if v == nil || v.req == nil {
			t.Fatal("no volume or no kept request after publish")
		}
		if v.req.Turn != nil || v.req.Flight != nil {
			t.Errorf("token %s: the volume keeps the call's turn (%v) or flight (%v)", token, v.req.Turn != nil, v.req.Flight != nil)
		}
	}
	if ws := wp.snapshot(); len(ws) != 2 {
		t.Fatalf("%d watches, want 2", len(ws))
	}
}
