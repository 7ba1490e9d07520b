// A provider watch for one volume: each burst of change
// notifications folds into one refresh, run once the burst has settled.

package driver

import (
	"maps"
	"time"

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
