// A provider watch for one volume: each burst of change
// notifications folds into one refresh, run once the burst has settled.

package driver

import (
	"context"
	"maps"
	"time"

	"github.com/secretfs/secretfs/driver/content"
	"github.com/secretfs/secretfs/provider"
)

// providerWatch is a running provider watch for one volume.
type providerWatch struct {
	provider string
	tokens   map[string]provider.Token // the tokens it was started with
	stop     func()
	done     chan struct{} // closed to end the loop
	exited   chan struct{} // closed when the loop has ended
}

// startProviderWatch starts wp's watch (the provider named name) for req. Each
// notification calls changed at once; refresh runs after a burst of them
// has settled for debounce, never twice at a time, and not after Close.
func startProviderWatch(wp provider.Watcher, name string, req *provider.Request, debounce time.Duration, changed func(), refresh func(*providerWatch)) (*providerWatch, error) {
	kick := make(chan struct{}, 1)
	stop, err := wp.Watch(req, func() {
		changed()
		select {
		case kick <- struct{}{}:
		default: // a refresh is already pending
		}
	})
	if err != nil {
		return nil, err
	}
	w := &providerWatch{provider: name, tokens: maps.Clone(req.Tokens), stop: stop, done: make(chan struct{}), exited: make(chan struct{})}
	go w.loop(kick, debounce, refresh)
	return w, nil
}

// Same reports whether w is a watch of the provider named name with
// these very tokens.
func (w *providerWatch) Same(name string, tokens map[string]provider.Token) bool {
	return w.provider == name && maps.EqualFunc(w.tokens, tokens, func(x, y provider.Token) bool {
		return x.Token == y.Token && x.ExpirationTimestamp.Equal(y.ExpirationTimestamp)
	})
}

// Done is closed when w is closed.
func (w *providerWatch) Done() <-chan struct{} { return w.done }

// Close stops the provider's watch and waits for a refresh in progress.
func (w *providerWatch) Close() {
	if w.stop != nil {
		w.stop()
	}
	close(w.done)
	<-w.exited
}

// loop refreshes after each burst of change notifications: it waits for the
// burst to settle (debounce), then calls refresh.
func (w *providerWatch) loop(kick <-chan struct{}, debounce time.Duration, refresh func(*providerWatch)) {
	defer close(w.exited)
	for {
		select {
		case <-w.done:
			return
		case <-kick:
		}
		if debounce > 0 {
			t := time.After(debounce)
			select {
			case <-w.done:
				return
			case <-t:
			}
		}
		select {
		case <-kick: // folded into this refresh
		default:
		}
		refresh(w)
	}
}

// startWatch starts a provider watch for v if its provider is a
// provider.Watcher, replacing any running one: the new watch starts before
// the old one stops, so no change falls in between. A watch that cannot be
// started is logged and counted; republish rotation still works without it.
// The caller holds the volume lock.
func (d *Driver) startWatch(ctx context.Context, v *volume) {
	if d.closed.Load() || v.req == nil {
		return
	}
	p, err := d.providerFor(v)
	if err != nil {
		return
	}
	wp, ok := p.(provider.Watcher)
	if !ok {
		return
	}
	// The provider decodes the class's parameters to know what to watch: a
	// computation over tenant input, in the volume's turn (the request's
	// own Turn belongs to the call that fetched, which may have ended).
	work := d.work(ctx, v)
	defer work.Done()
	req := v.req
	if req.Parameters == nil {
		// Recovered volume that was not refreshed yet: the watch needs the
		// class parameters to know what to watch.
		cls, err := d.classes.Get(ctx, v.pod.Namespace, v.class)
		var plan *content.Plan
		if err == nil {
			plan, err = content.ForClass(cls, work)
		}
		if err != nil {
			d.log.Warn("cannot start provider watch", "volume_id", v.id, "err", err.Error())
			d.metrics.Watches.WithLabelValues("failed").Inc()
			return
		}
		req = withClass(req, plan.Parameters(cls.Parameters), v.versions)
		v.req = req
	}
	inTurn := *req // v keeps req without this call's turn
	inTurn.Turn = work.Turn
	w, err := startProviderWatch(wp, v.provider, &inTurn, d.rotation.Debounce, func() {
		// The cached answer predates the change: the refresh this kicks
		// (and any other volume's fetch) must go to the backend.
		if d.cache != nil {
			d.cache.Invalidate(v.id, d.now())
		}
	}, func(w *providerWatch) {
		if !d.locks.Lock(v.id, w.Done()) {
			return
		}
		if d.volume(v.id) == v && v.watch == w && v.req != nil {
			ctx, cancel := context.WithTimeout(context.Background(), d.rotation.Timeout)
			d.locks.SetCancel(v.id, cancel)
			d.refresh(ctx, v, "watch")
			cancel()
		}
		d.locks.Unlock(v.id)
	})
	if err != nil {
		d.log.Warn("cannot start provider watch; rotation relies on republish", "volume_id", v.id,
			"provider", v.provider, "code", provider.CodeOf(err).String(), "err", err.Error())
		d.metrics.Watches.WithLabelValues("failed").Inc()
		return
	}
	d.metrics.Watches.WithLabelValues("started").Inc()
	old := v.watch
	v.watch = w
	if old != nil {
		old.Close()
	}
}

// stopWatch ends v's watch. The caller holds the volume lock.
func (d *Driver) stopWatch(v *volume) {
	if v.watch != nil {
		v.watch.Close()
		v.watch = nil
	}
}
