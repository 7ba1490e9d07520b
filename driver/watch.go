package driver

import (
	"context"
	"maps"
	"time"

	"github.com/secretfs/secretfs/driver/content"
	"github.com/secretfs/secretfs/provider"
)

// watch is a running provider watch for one volume.
type watch struct {
	provider string
	tokens   map[string]provider.Token // the tokens it was started with
	stop     func()
	done     chan struct{} // closed to end the loop
	exited   chan struct{} // closed when the loop has ended
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
	req := v.req
	if req.Parameters == nil {
		// Recovered volume that was not refreshed yet: the watch needs the
		// class parameters to know what to watch.
		cls, err := d.classes.Get(ctx, v.pod.Namespace, v.class)
		if err != nil {
			d.log.Warn("cannot start provider watch", "volume_id", v.id, "err", err.Error())
			d.metrics.watches.WithLabelValues("failed").Inc()
			return
		}
		plan, err := content.ForClass(cls)
		if err != nil {
			d.log.Warn("cannot start provider watch", "volume_id", v.id, "err", err.Error())
			d.metrics.watches.WithLabelValues("failed").Inc()
			return
		}
		req = withClass(req, plan.Parameters(cls.Parameters), v.versions)
		v.req = req
	}
	kick := make(chan struct{}, 1)
	stop, err := wp.Watch(req, func() {
		// The cached answer predates the change: the refresh this kicks
		// (and any other volume's fetch) must go to the backend.
		if d.cache != nil {
			d.cache.Invalidate(v.id, time.Now())
		}
		select {
		case kick <- struct{}{}:
		default: // a refresh is already pending
		}
	})
	if err != nil {
		d.log.Warn("cannot start provider watch; rotation relies on republish", "volume_id", v.id,
			"provider", v.provider, "code", provider.CodeOf(err).String(), "err", err.Error())
		d.metrics.watches.WithLabelValues("failed").Inc()
		return
	}
	d.metrics.watches.WithLabelValues("started").Inc()
	w := &watch{provider: v.provider, tokens: maps.Clone(req.Tokens), stop: stop, done: make(chan struct{}), exited: make(chan struct{})}
	go d.watchLoop(v, w, kick)
	old := v.watch
	v.watch = w
	if old != nil {
		closeWatch(old)
	}
}

// stopWatch ends v's watch. The caller holds the volume lock.
func (d *Driver) stopWatch(v *volume) {
	if v.watch != nil {
		closeWatch(v.watch)
		v.watch = nil
	}
}

func closeWatch(w *watch) {
	if w.stop != nil {
		w.stop()
	}
	close(w.done)
	<-w.exited
}

// watchLoop refreshes v after each burst of change notifications: it waits
// for the burst to settle (debounce), then refreshes under the volume lock.
func (d *Driver) watchLoop(v *volume, w *watch, kick <-chan struct{}) {
	defer close(w.exited)
	for {
		select {
		case <-w.done:
			return
		case <-kick:
		}
		if d.rotation.Debounce > 0 {
			t := time.After(d.rotation.Debounce)
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
		if !d.locks.Lock(v.id, w.done) {
			return
		}
		if d.volume(v.id) == v && v.watch == w && v.req != nil {
			ctx, cancel := context.WithTimeout(context.Background(), d.rotation.Timeout)
			d.refresh(ctx, v, "watch")
			cancel()
		}
		d.locks.Unlock(v.id)
	}
}

func sameTokens(a, b map[string]provider.Token) bool {
	return maps.EqualFunc(a, b, func(x, y provider.Token) bool {
		return x.Token == y.Token && x.ExpirationTimestamp.Equal(y.ExpirationTimestamp)
	})
}
