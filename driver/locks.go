// The per-volume locks: one CSI call (or refresh) at a time per volume.

package driver

import (
	"context"
	"errors"
	"sync"

	"google.golang.org/grpc/codes"

	"github.com/secretfs/secretfs/provider"
)

// volumeLocks is a set of per-key locks; the zero volumeLocks is ready to use. A gRPC call
// that finds its volume locked by another call fails fast with Aborted and
// kubelet retries; one that finds it locked by a background refresh (a
// provider watch) waits for it, since that is no conflicting request, just
// a short piece of work.
type volumeLocks struct {
	mu   sync.Mutex
	held map[string]*lockEntry
}

type lockEntry struct {
	released   chan struct{} // closed on unlock
	background bool
	cancel     context.CancelFunc // stops the holder's work (SetCancel); may be nil
}

func (l *volumeLocks) take(key string, background bool) {
	if l.held == nil {
		l.held = map[string]*lockEntry{}
	}
	l.held[key] = &lockEntry{released: make(chan struct{}), background: background}
}

// LockForCall takes the lock for a gRPC call: Aborted if another call holds
// it, waiting (until ctx ends) while a background refresh holds it.
func (l *volumeLocks) LockForCall(ctx context.Context, key string) error {
	return l.acquire(key, false, func(e *lockEntry, _ context.CancelFunc) error {
		if !e.background {
			return provider.Errorf(codes.Aborted, "an operation on volume %s is already in progress", key)
		}
		select {
		case <-e.released:
			return nil
		case <-ctx.Done():
			return provider.Errorf(codes.Aborted, "volume %s is being refreshed: %v", key, ctx.Err())
		}
	})
}

// acquire takes key for a call (background false) or background work. While
// another holds it, busy is asked with the holder and its cancel: nil to
// try again once the holder has let go (busy waits for e.released), or an
// error to give up with.
func (l *volumeLocks) acquire(key string, background bool, busy func(e *lockEntry, cancel context.CancelFunc) error) error {
	for {
		l.mu.Lock()
		e, held := l.held[key]
		if !held {
			l.take(key, background)
			l.mu.Unlock()
			return nil
		}
		cancel := e.cancel
		l.mu.Unlock()
		if err := busy(e, cancel); err != nil {
			return err
		}
	}
}

// Lock waits for the lock for key on behalf of background work; it gives up
// and returns false when cancel is closed first.
func (l *volumeLocks) Lock(key string, cancel <-chan struct{}) bool {
	return l.acquire(key, true, func(e *lockEntry, _ context.CancelFunc) error {
		select {
		case <-e.released:
			return nil
		case <-cancel:
			return errGaveUp
		}
	}) == nil
}

var errGaveUp = errors.New("gave up")

// SetCancel records how to stop the work of the holder of key: the cancel
// of the context it runs under. Preempt calls it.
func (l *volumeLocks) SetCancel(key string, cancel context.CancelFunc) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if e := l.held[key]; e != nil {
		e.cancel = cancel
	}
}

// Preempt takes the lock for a call that ends the volume (unpublish):
// nothing a class makes the driver compute may keep a pod Terminating, so
// whatever holds the lock (a publish, a refresh) is cancelled, and Preempt
// waits for it to let go, until ctx ends (Aborted; kubelet retries).
func (l *volumeLocks) Preempt(ctx context.Context, key string) error {
	return l.acquire(key, false, func(e *lockEntry, cancel context.CancelFunc) error {
		if cancel != nil {
			cancel()
		}
		select {
		case <-e.released:
			return nil
		case <-ctx.Done():
			return provider.Errorf(codes.Aborted, "an operation on volume %s is still stopping: %v", key, ctx.Err())
		}
	})
}

// CancelAll cancels the work of every holder (the driver is stopping): the
// calls return at their next step, and gRPC's graceful stop does not wait
// on anything a class makes the driver compute.
func (l *volumeLocks) CancelAll() {
	l.mu.Lock()
	var cancels []context.CancelFunc
	for _, e := range l.held {
		if e.cancel != nil {
			cancels = append(cancels, e.cancel)
		}
	}
	l.mu.Unlock()
	for _, c := range cancels {
		c()
	}
}

// Unlock releases key.
func (l *volumeLocks) Unlock(key string) {
	l.mu.Lock()
	e := l.held[key]
	delete(l.held, key)
	l.mu.Unlock()
	if e != nil {
		close(e.released)
	}
}
