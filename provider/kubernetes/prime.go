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
// volume of this backend. The watch starts from the current state with its
// initial events (the Secret as it is, then a bookmark that says that was
// all), which the API server authorizes exactly like a GET of that Secret
// by the pod's service account (verb watch instead of get, same
// resourceNames). The fetch holds the watch it opened until its volume
// subscribes (Watch, with the same token) or holdFor passes, so a failed
// publish leaves no watch behind for long. Where no watch can tell (watch
// refused 403 or 401, not open yet in time, or open from a resource version
// the volume mounted, which sends no initial events), the fetch GETs.
//
// What this changes for authorization: nothing is served that the stream
// was not authorized for, and only the fetches of its own (namespace,
// Secret, service account) read it, within holdFor of a fetch that opened
// or joined it; later fetches GET as before.

// defaultHoldFor is Provider.holdFor: how long a fetch holds the watch it
// read from for its volume's Watch. Publishing takes milliseconds; a
// volume that subscribes later opens the watch again (one more request).
const defaultHoldFor = 5 * time.Second

// fromWatches reads the named Secrets from their watches' initial events
// and returns them, the names it could not read so (to GET), and a release
// of the fetch's holds for when it fails: then no volume will subscribe.
func (p *Provider) fromWatches(ctx context.Context, req *provider.Request, token string, names []string, budget *provider.Budget) (map[string]fetchedSecret, []string, func()) {
	out := make(map[string]fetchedSecret, len(names))
	if len(names) == 0 || p.noInitialEvents.Load() {
		return out, names, func() {}
	}
	// As many streams at once as GETs (maxConcurrentGets): each buffers
	// its Secret as the server sends it. A class naming more GETs the rest.
	rest := names[min(len(names), maxConcurrentGets):]
	names = names[:min(len(names), maxConcurrentGets)]
	tok := req.Tokens[p.opts.Audience]
	tok.Token = token
	// Open (or join) every watch first, so their streams start together.
	// The streams this fetch opens read their initial events within its
	// budget, as its GETs would; the charge ends when the fetch returns.
	charge := &streamCharge{budget: budget}
	defer charge.detach()
	watches := make([]*sharedWatch, len(names))
	opened := make([]bool, len(names))
	var releases []func()
	for i, name := range names {
		var release func()
		watches[i], opened[i], release = p.hold(watchKey{req.Pod.Namespace, name, "", req.Pod.ServiceAccount}, req.Pod, tok, charge)
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
	rest = slices.Clone(rest)
	for i, name := range names {
		w := watches[i]
		if w == nil {
			rest = append(rest, name)
			continue
		}
		s, ok, err := w.read(ctx, budget, opened[i])
		if cerr := charge.failed(); cerr != nil {
			// A stream of this fetch ran past its allowance: the fetch
			// fails so, at once, reading nothing more.
			out[name] = fetchedSecret{err: apiError(cerr, "get", req.Pod, name)}
			return out, nil, releaseAll
		}
		switch {
		case err != nil:
			out[name] = fetchedSecret{err: apiError(err, "get", req.Pod, name)}
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

// hold joins the fetch to the watch of key, opening it from the current
// state when there is none (opened: its first stream is charged to
// charge), and lets go after p.holdFor, when release is called, or when
// the volume subscribed, whichever is first. It returns a nil watch for a
// key whose watch was refused 403: that service account may get but not
// watch, and a fetch GETs.
func (p *Provider) hold(key watchKey, pod provider.Pod, token provider.Token, charge *streamCharge) (w *sharedWatch, opened bool, release func()) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, refused := p.forbidden[key]; refused {
		return nil, false, nil
	}
	w, id, opened := p.watchFor(key, pod, "", false, &subscriber{changed: func() {}, token: token, hold: true, charge: charge})
	var once sync.Once
	release = func() { once.Do(func() { p.unsubscribe(w, id) }) }
	time.AfterFunc(p.holdFor, release)
	return w, opened, release
}

// read returns a copy of the Secret as the open stream shows it (nil when
// absent) once the stream's initial events have ended, charged to budget
// unless the stream's bytes were (charged). ok is false when the watch
// cannot tell: the fetch GETs.
func (w *sharedWatch) read(ctx context.Context, budget *provider.Budget, charged bool) (s *corev1.Secret, ok bool, err error) {
	for {
		w.mu.Lock()
		switch {
		case w.state == stateOpen && w.current:
			if w.latest != nil && !charged {
				if err := budget.Wire(int64(w.latest.Size())); err != nil {
					w.mu.Unlock()
					return nil, false, err
				}
			}
			if w.latest != nil {
				s = w.latest.DeepCopy()
			}
			w.mu.Unlock()
			return s, true, nil
		case w.state == stateConnecting, w.state == stateOpen && w.listing:
			// wait for the stream and its initial events
		default:
			w.mu.Unlock()
			return nil, false, nil
		}
		news := w.news
		w.mu.Unlock()
		select {
		case <-news:
		case <-ctx.Done():
			return nil, false, nil
		case <-w.done:
			return nil, false, nil
		}
	}
}

// startListing records that a stream starts, sending its initial events or
// not. The caller holds w.mu.
func (w *sharedWatch) startListing(initial bool) {
	w.listing = initial
	if initial {
		w.current = false
		w.setLatest(nil)
	}
}

// keepLatest records s (nil: deleted) as the Secret the stream shows, while
// the stream is listing or a fetch holds the watch.
func (w *sharedWatch) keepLatest(s *corev1.Secret) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.listing || w.current && w.holds > 0 {
		w.setLatest(s)
	}
}

// initialEventsEnded records the bookmark after the stream's initial
// events: latest is now the Secret as it is, for the fetches holding w.
func (w *sharedWatch) initialEventsEnded() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.listing = false
	w.current = w.holds > 0
	if !w.current {
		w.setLatest(nil)
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

// remove drops subscriber id; the last hold to go takes latest with it.
// The caller holds w.mu.
func (w *sharedWatch) remove(id uint64) {
	s := w.subs[id]
	delete(w.subs, id)
	if s != nil && s.hold {
		w.holds--
		if w.holds == 0 {
			w.current = false
			w.setLatest(nil)
		}
	}
}

// setLatest replaces latest, zeroing the values of the one it replaces:
// fetches took copies. The caller holds w.mu.
func (w *sharedWatch) setLatest(s *corev1.Secret) {
	if w.latest != nil && w.latest != s {
		for _, v := range w.latest.Data {
			clear(v)
		}
	}
	w.latest = s
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
