package kubernetes

import (
	"context"
	"io"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/secretfs/secretfs/provider"
)

// A fetch reads a named Secret from the start of the shared watch that the
// node keeps open for it anyway, instead of a GET: kubelet's own Secret
// volume costs the API server one watch per Secret and node, and so does a
// volume of this backend. When no watch of (namespace, Secret, service
// account) exists, the fetch opens it from the current state with initial
// events (the Secret as it is, then a bookmark that says that was all),
// which the API server authorizes like a GET of that Secret by the pod's
// service account (verb watch instead of get, same resourceNames), and
// takes the Secret from them. The fetch holds the watch it opened until its
// volume subscribes (Watch, with the same token), the fetch fails, or
// holdFor passes, so a publish that fails leaves no watch behind for long.
//
// Only the fetch that opened the watch reads its initial events, and only
// from a stream opened with its own token: it reads exactly what a GET with
// that token would have, checked by the API server just now. Every other
// fetch GETs (a watch already open, refused 403 or 401, not open in time, a
// class's Secrets beyond the first maxConcurrentGets, maxHeld watches held
// on the node), and so does every fetch when the API server refuses initial
// events (before Kubernetes 1.32). The fetch owns the Secret it takes (no
// copy is kept); a Secret larger than keepBufferBelow, in the initial events
// or any later one, makes the stream reconnect from it, so the long-lived
// stream does not keep a decoder buffer of its size. Opening a watch waits
// for the client-side rate limit like a GET (stream.go).

// defaultHoldFor is Provider.holdFor: how long a fetch holds the watch it
// opened for its volume's Watch. Publishing takes milliseconds; a volume
// that subscribes later opens the watch again (one more request).
const defaultHoldFor = 5 * time.Second

// keepBufferBelow is the largest Secret in an event after which a stream
// goes on as it is: a larger one costs one more request (a reconnect from
// the event's resource version) to give back the decoder's buffer, which
// grows to about four times the largest event and never shrinks.
const keepBufferBelow = 16 << 10

// maxHeld bounds the watches held by fetches whose volumes did not
// subscribe yet, on the node: a publish that fails after its fetch (kubelet
// retries it) leaves its holds for holdFor, each an API stream of about
// 70 KiB. Past it, fetches GET.
const maxHeld = 64

// fromWatches reads the named Secrets from the initial events of watches it
// opens and returns them, the names it could not read so (to GET), and a
// release of the fetch's holds for when it fails: then no volume will
// subscribe.
func (p *Provider) fromWatches(ctx context.Context, req *provider.Request, token string, names []string, budget *provider.Budget) (map[string]fetchedSecret, []string, func()) {
	out := make(map[string]fetchedSecret, len(names))
	if len(names) == 0 || p.noInitialEvents.Load() {
		return out, names, func() {}
	}
	// As many streams at once as GETs (maxConcurrentGets): each buffers
	// its Secret as the server sends it. A class naming more GETs the rest.
	rest := slices.Clone(names[min(len(names), maxConcurrentGets):])
	names = names[:min(len(names), maxConcurrentGets)]
	tok := req.Tokens[p.opts.Audience]
	tok.Token = token
	// Open every watch first, so their streams start together. They read
	// their initial events within this fetch's budget, as its GETs would;
	// the charge ends when the fetch returns.
	charge := &streamCharge{budget: budget}
	defer charge.detach()
	watches := make([]*sharedWatch, len(names))
	var releases []func()
	for i, name := range names {
		var release func()
		watches[i], release = p.openHeld(watchKey{req.Pod.Namespace, name, "", req.Pod.ServiceAccount}, req.Pod, tok, charge)
		if release != nil {
			releases = append(releases, release)
		}
	}
	releaseAll := func() {
		for _, r := range releases {
			r()
		}
	}
	ctx, cancel := context.WithTimeout(ctx, p.opts.RequestTimeout/2)
	defer cancel()
	for i, name := range names {
		w := watches[i]
		if w == nil {
			rest = append(rest, name)
			continue
		}
		s, ok := w.take(ctx, token)
		if cerr := charge.failed(); cerr != nil {
			// A stream of this fetch ran past its allowance: the fetch
			// fails so, at once, reading nothing more.
			out[name] = fetchedSecret{err: apiError(cerr, "get", req.Pod, name)}
			return out, nil, releaseAll
		}
		switch {
		case !ok:
			rest = append(rest, name)
		case s == nil:
			out[name] = fetchedSecret{err: apiError(apierrors.NewNotFound(schema.GroupResource{Resource: "secrets"}, name), "get", req.Pod, name)}
		default:
			out[name] = fetchedSecret{secret: s}
		}
	}
	return out, rest, releaseAll
}

// openHeld opens the watch of key from the current state, held by the fetch
// (whose first stream is charged to charge) until p.holdFor passes, release
// is called, or the volume subscribes, whichever is first. It returns nil
// when a watch of key exists already, or was refused 403 (that service
// account may get but not watch): the fetch GETs.
func (p *Provider) openHeld(key watchKey, pod provider.Pod, token provider.Token, charge *streamCharge) (w *sharedWatch, release func()) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, refused := p.forbidden[key]; refused || p.watches[key] != nil || p.held.Load() >= maxHeld || len(p.watches) >= p.opts.MaxWatches {
		return nil, nil
	}
	p.held.Add(1) // until remove drops the hold
	w, id, _ := p.watchFor(key, pod, "", false, &subscriber{changed: func() {}, token: token, hold: true, charge: charge})
	var once sync.Once
	release = func() { once.Do(func() { p.unsubscribe(w, id) }) }
	time.AfterFunc(p.holdFor, release)
	return w, release
}

// take waits for the end of the initial events of the stream opened with
// token and hands over the Secret they showed (nil: absent); the watch
// keeps no copy. ok is false when the watch cannot tell (the stream failed,
// was opened with another token, or ctx ended): the fetch GETs.
func (w *sharedWatch) take(ctx context.Context, token string) (s *corev1.Secret, ok bool) {
	for {
		w.mu.Lock()
		switch {
		case w.state == stateOpen && w.listed && w.inUse == token:
			s, w.initial, w.listed = w.initial, nil, false
			if w.largeInitial {
				signal(w.renew) // the stream's buffer held what the fetch took
			}
			w.mu.Unlock()
			return s, true
		case w.state == stateConnecting, w.state == stateOpen && w.listing:
			// wait for the stream and its initial events
		default:
			w.mu.Unlock()
			return nil, false
		}
		news := w.news
		w.mu.Unlock()
		select {
		case <-news:
		case <-ctx.Done():
			return nil, false
		case <-w.done:
			return nil, false
		}
	}
}

// startListing records that a stream starts, sending its initial events or
// not. The caller holds w.mu.
func (w *sharedWatch) startListing(initial bool) {
	w.listing, w.listed, w.largeInitial = initial, false, false
	w.setInitial(nil)
}

// keepInitial records s (nil: deleted) as the Secret the stream's initial
// events show, for the fetch holding w. A large Secret in any other event
// makes the stream reconnect at once from it (a fresh decoder buffer); one
// in the initial events, once the fetch took it (or at their end).
func (w *sharedWatch) keepInitial(s *corev1.Secret) {
	w.mu.Lock()
	defer w.mu.Unlock()
	large := s != nil && s.Size() > keepBufferBelow
	switch {
	case w.listing:
		w.largeInitial = w.largeInitial || large
		if w.holds > 0 {
			w.setInitial(s)
		}
	case large:
		signal(w.renew)
	}
}

// initialEventsEnded records the bookmark after the stream's initial
// events: initial is the Secret as it is, for the fetch holding w.
func (w *sharedWatch) initialEventsEnded() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.listing = false
	w.listed = w.holds > 0
	if !w.listed {
		w.setInitial(nil)
		if w.largeInitial {
			signal(w.renew)
		}
	}
	w.announce()
}

// releaseHoldsOf ends the holds of fetches made with token: their volume
// subscribed. The caller holds w.mu and has added that subscriber, so w
// keeps a subscriber.
func (w *sharedWatch) releaseHoldsOf(token string) {
	for id, s := range w.subs {
		if s.hold && s.token.Token == token {
			w.remove(id)
		}
	}
}

// remove drops subscriber id; the last hold to go takes an initial Secret
// nobody took with it. The caller holds w.mu.
func (w *sharedWatch) remove(id uint64) {
	s := w.subs[id]
	delete(w.subs, id)
	if s != nil && s.hold {
		w.p.held.Add(-1)
		w.holds--
		if w.holds == 0 {
			w.listed = false
			w.setInitial(nil)
		}
	}
}

// setInitial replaces initial, zeroing the values of the one it replaces.
// The caller holds w.mu.
func (w *sharedWatch) setInitial(s *corev1.Secret) {
	if w.initial != nil && w.initial != s {
		for _, v := range w.initial.Data {
			clear(v)
		}
	}
	w.initial = s
}

// streamCharge charges what a watch stream reads to the budget of the fetch
// that opened it, until the fetch returns (detach): a stream's initial
// events are that fetch's answer, read within its wire allowance and the
// node's bound like a GET's body; what the stream reads later is the
// watch's, as for every watch.
type streamCharge struct {
	mu     sync.Mutex
	budget *provider.Budget // nil once detached
	err    error            // the budget's error that ended a stream
}

// failed returns the budget's error if it ended a stream.
func (c *streamCharge) failed() error {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

func (c *streamCharge) detach() {
	c.mu.Lock()
	c.budget = nil
	c.mu.Unlock()
}

func (c *streamCharge) charge(n int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.budget == nil {
		return nil
	}
	if err := c.budget.Wire(int64(n)); err != nil {
		c.err = err
		return err
	}
	return nil
}

// reader charges every byte read from body; over the budget the stream
// fails with its ResourceExhausted error, and the fetch GETs (and fails
// the same way, within its allowance).
func (c *streamCharge) reader(body io.ReadCloser) io.ReadCloser {
	return &chargedBody{ReadCloser: body, c: c}
}

type chargedBody struct {
	io.ReadCloser
	c *streamCharge
}

func (b *chargedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if n > 0 {
		if cerr := b.c.charge(n); cerr != nil {
			return 0, cerr
		}
	}
	return n, err
}

type streamChargeKey struct{}

func withStreamCharge(ctx context.Context, c *streamCharge) context.Context {
	return context.WithValue(ctx, streamChargeKey{}, c)
}

func streamChargeFrom(ctx context.Context) *streamCharge {
	c, _ := ctx.Value(streamChargeKey{}).(*streamCharge)
	return c
}
