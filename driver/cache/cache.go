// Package cache is the driver's node cache of backend results: one fetch per
// identity per node.
//
// Entries are found by a Key that the caller derives from everything that
// decides what a backend returns and who may see it (see Keyer). An entry is
// served only while it is younger than MaxAge, concurrent misses of one key
// collapse into one backend call, and entries are reference-counted by the
// volumes that use them: when the last volume releases an entry, its bytes
// are zeroed and it is forgotten. Nothing is ever written to disk.
//
// Every caller gets its own copy of the result, which it may (and should)
// zero when done; the cache's copy is zeroed when it is replaced,
// invalidated or released, never while a caller is still copying it.
package cache

import (
	"context"
	"sync"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/secretfs/secretfs/provider"
)

// Outcome says how a Get was served.
type Outcome int

const (
	Miss      Outcome = iota // this call went to the backend
	Hit                      // served from a fresh entry
	Collapsed                // waited for another caller's backend call
	Stale                    // the backend failed; served the last good result (Policy.ServeStale)
)

func (o Outcome) String() string {
	switch o {
	case Hit:
		return "hit"
	case Collapsed:
		return "collapsed"
	case Stale:
		return "stale"
	}
	return "miss"
}

// Cache is safe for concurrent use.
type Cache struct {
	maxAge  time.Duration
	timeout time.Duration
	now     func() time.Time

	mu      sync.Mutex
	entries map[Key]*entry
	users   map[string]Key // user (volume id) -> the key it holds
}

// entry is the state of one key: who uses it, the cached data (nil when
// none is servable), and the backend call in flight, if any.
type entry struct {
	users  map[string]struct{}
	data   *data
	flight *flight
}

// data is one cached result. readers counts callers copying it right now;
// a detached data is zeroed as soon as no reader is left.
type data struct {
	res      *provider.Result
	started  time.Time // when the backend call that produced it started
	readers  int
	detached bool
}

// flight is one backend call that concurrent callers of a key wait for.
type flight struct {
	started time.Time
	waiters map[*waiter]struct{}
	cancel  context.CancelFunc
	stale   bool // invalidated while in flight: do not store the result
	done    chan struct{}
	// Set before done is closed:
	data *data
	err  error
}

type waiter struct{ user string }

// Options configure a Cache.
type Options struct {
	// MaxAge is how long a result is served after its backend call started
	// (the rotation interval). Required.
	MaxAge time.Duration
	// Timeout bounds a backend call once the caller that started it is gone
	// (a collapsed call outlives the first caller's context). Default 2m.
	Timeout time.Duration
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

// New returns an empty Cache.
func New(opts Options) *Cache {
	c := &Cache{maxAge: opts.MaxAge, timeout: opts.Timeout, now: opts.Now,
		entries: map[Key]*entry{}, users: map[string]Key{}}
	if c.timeout <= 0 {
		c.timeout = 2 * time.Minute
	}
	if c.now == nil {
		c.now = time.Now
	}
	return c
}

// Fetch is the backend call behind a miss.
type Fetch func(ctx context.Context) (*provider.Result, error)

// Get returns a copy of the result for key: from a fresh entry, from a
// backend call already in flight for key, or from a new call to fetch. On
// success user holds key (and lets go of any other key it held), and the
// returned time is when the backend call behind the result started: the
// result's age. Errors are never cached. A caller whose ctx ends stops
// waiting; the backend call goes on while another caller waits for it.
func (c *Cache) Get(ctx context.Context, user string, key Key, fetch Fetch) (*provider.Result, time.Time, Outcome, error) {
	return c.GetWith(ctx, user, key, Policy{}, fetch)
}

// Policy is how one Get may be served. Every Get of a key should pass the
// same MaxAge and StaleIfError: both come from what the key is made of
// (the class's parameters).
type Policy struct {
	// MaxAge replaces Options.MaxAge for this Get when positive (a class's
	// own rotation interval).
	MaxAge time.Duration
	// StaleIfError keeps an expired result, up to this age, instead of
	// wiping it at once, so that ServeStale can fall back on it.
	StaleIfError time.Duration
	// ServeStale: when the backend call fails Unavailable or
	// DeadlineExceeded (the backend is down, not a refusal), return the
	// kept result if it is at most StaleIfError old, with Outcome Stale and
	// the failure as the error. Keys include the identity, so only the same
	// identity ever gets it.
	ServeStale bool
}

// GetWith is Get under pol. With Outcome Stale it returns both the last
// good result and the backend's error; otherwise a result or an error.
func (c *Cache) GetWith(ctx context.Context, user string, key Key, pol Policy, fetch Fetch) (*provider.Result, time.Time, Outcome, error) {
	maxAge := c.maxAge
	if pol.MaxAge > 0 {
		maxAge = pol.MaxAge
	}
	c.mu.Lock()
	e := c.entries[key]
	if e == nil {
		e = &entry{users: map[string]struct{}{}}
		c.entries[key] = e
	}
	if d := e.data; d != nil {
		age := c.now().Sub(d.started)
		if age < maxAge {
			c.hold(user, key, e)
			d.readers++
			c.mu.Unlock()
			return c.copyOut(d), d.started, Hit, nil
		}
		if age > pol.StaleIfError {
			c.detach(e) // expired: nobody may be served it any more
		}
		// else kept (never as a Hit) until a new result replaces it, the
		// last holder lets go, or it is too old for StaleIfError.
	}
	outcome := Collapsed
	f := e.flight
	if f == nil {
		outcome = Miss
		f = c.startFlight(ctx, key, e, fetch)
	}
	w := &waiter{user: user}
	f.waiters[w] = struct{}{}
	c.mu.Unlock()

	select {
	case <-f.done:
	case <-ctx.Done():
		c.mu.Lock()
		select {
		case <-f.done: // finished meanwhile: take the result after all
			c.mu.Unlock()
		default:
			delete(f.waiters, w)
			if len(f.waiters) == 0 {
				// Nobody waits any more: stop the call, and let the next
				// caller start a fresh one rather than join a cancelled one.
				f.cancel()
				if e.flight == f {
					e.flight = nil
				}
				c.dropIfUnused(key, e)
			}
			c.mu.Unlock()
			return nil, time.Time{}, outcome, ctx.Err()
		}
	}
	if f.err != nil {
		if res, at, ok := c.stale(user, key, e, pol, f.err); ok {
			return res, at, Stale, f.err
		}
		return nil, time.Time{}, outcome, f.err
	}
	// finish made us a holder of key and a reader of f.data.
	res := c.copyOut(f.data)
	return res, f.data.started, outcome, nil
}

// stale serves the result e keeps for StaleIfError after a backend failure
// that says the backend is down.
func (c *Cache) stale(user string, key Key, e *entry, pol Policy, err error) (*provider.Result, time.Time, bool) {
	if !pol.ServeStale || pol.StaleIfError <= 0 {
		return nil, time.Time{}, false
	}
	if code := provider.CodeOf(err); code != codes.Unavailable && code != codes.DeadlineExceeded {
		return nil, time.Time{}, false
	}
	c.mu.Lock()
	d := e.data
	if d == nil || c.entries[key] != e || c.now().Sub(d.started) > pol.StaleIfError {
		c.mu.Unlock()
		return nil, time.Time{}, false
	}
	c.hold(user, key, e)
	d.readers++
	c.mu.Unlock()
	return c.copyOut(d), d.started, true
}

// startFlight starts the backend call for key. Its context keeps the
// values of the first caller's but not its cancellation: it ends when every
// waiter has gone, or after the timeout. The caller holds c.mu.
func (c *Cache) startFlight(ctx context.Context, key Key, e *entry, fetch Fetch) *flight {
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.timeout)
	f := &flight{started: c.now(), waiters: map[*waiter]struct{}{}, cancel: cancel, done: make(chan struct{})}
	e.flight = f
	go func() {
		res, err := fetch(fctx)
		cancel()
		c.finish(key, e, f, res, err)
	}()
	return f
}

// finish records the result of f: every waiter still there becomes a holder
// of key and a reader of the data; the data becomes the entry's unless f was
// invalidated meanwhile or nobody waits for it.
func (c *Cache) finish(key Key, e *entry, f *flight, res *provider.Result, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e.flight == f {
		e.flight = nil
	}
	if err == nil && res == nil {
		err = errNoResult
	}
	f.err = err
	if err == nil {
		d := &data{res: res, started: f.started, readers: len(f.waiters)}
		f.data = d
		for w := range f.waiters {
			c.hold(w.user, key, e)
		}
		if !f.stale && len(f.waiters) > 0 {
			c.detach(e)
			e.data = d
		} else {
			d.detached = true
			if d.readers == 0 {
				d.res.Wipe()
			}
		}
	} else {
		res.Wipe()
	}
	close(f.done)
	c.dropIfUnused(key, e)
}

// hold makes user a holder of key, letting go of the key it held before.
// The caller holds c.mu.
func (c *Cache) hold(user string, key Key, e *entry) {
	if old, ok := c.users[user]; ok {
		if old == key {
			return
		}
		c.release(user)
	}
	c.users[user] = key
	e.users[user] = struct{}{}
}

// copyOut copies d's result for a caller that registered as a reader, then
// signs off; a detached d is zeroed by its last reader.
func (c *Cache) copyOut(d *data) *provider.Result {
	res := d.res.Clone()
	c.mu.Lock()
	d.readers--
	if d.detached && d.readers == 0 {
		d.res.Wipe()
	}
	c.mu.Unlock()
	return res
}

// detach takes e's data out of service and zeroes it once no reader is
// left. The caller holds c.mu.
func (c *Cache) detach(e *entry) {
	d := e.data
	if d == nil {
		return
	}
	e.data = nil
	d.detached = true
	if d.readers == 0 {
		d.res.Wipe()
	}
}

// Release lets go of the key user holds, if any. The last holder of a key
// zeroes and drops its entry.
func (c *Cache) Release(user string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.release(user)
}

func (c *Cache) release(user string) {
	key, ok := c.users[user]
	if !ok {
		return
	}
	delete(c.users, user)
	if e := c.entries[key]; e != nil {
		delete(e.users, user)
		c.dropIfUnused(key, e)
	}
}

// dropIfUnused forgets an entry that nobody holds or waits for.
func (c *Cache) dropIfUnused(key Key, e *entry) {
	if len(e.users) == 0 && e.flight == nil && c.entries[key] == e {
		c.detach(e)
		delete(c.entries, key)
	}
}

// Invalidate makes the entry user holds unservable if its backend call
// started before at (the time a change was announced), so the next Get goes
// to the backend. A call in flight that started before at still answers its
// waiters but is not kept.
func (c *Cache) Invalidate(user string, at time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	key, ok := c.users[user]
	if !ok {
		return
	}
	e := c.entries[key]
	if e == nil {
		return
	}
	if e.data != nil && e.data.started.Before(at) {
		c.detach(e)
	}
	if f := e.flight; f != nil && f.started.Before(at) {
		f.stale = true
	}
}

// Purge zeroes every cached result (entries and holders stay, so later
// Gets simply miss). For shutdown.
func (c *Cache) Purge() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range c.entries {
		c.detach(e)
	}
}

// Len returns the number of entries: keys with holders or a call in flight.
func (c *Cache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}

var errNoResult = provider.Errorf(codes.Internal, "provider returned no result and no error")
