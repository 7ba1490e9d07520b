package kubernetes

import (
	"context"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	corev1 "k8s.io/api/core/v1"

	"github.com/secretfs/secretfs/provider"
)

// Watches are shared per (namespace, Secret, service account): RBAC is
// decided by the service account, so volumes of pods that share one may
// share its watch, and a node opens one watch per Secret in use, however
// big the cluster is.
// A label selector's watch is shared the same way, per (namespace,
// normalized selector, service account); secret is "" in its key.
type watchKey struct{ namespace, secret, selector, serviceAccount string }

type watchState int

const (
	stateConnecting   watchState = iota
	stateOpen                    // a watch stream is open
	stateRetrying                // waiting to reconnect after an error
	stateUnauthorized            // 401: waits for a fresher token
	stateForbidden               // 403 on watch: waits for a fresher token
)

type subscriber struct {
	changed func()
	token   provider.Token
	// hold marks a fetch's hold on a watch it opened (prime.go): it keeps
	// the watch until the fetch's volume subscribes, or holdFor passes.
	hold bool
	// charge is a hold's fetch's, for the first stream of a watch it opens.
	charge *streamCharge
}

type sharedWatch struct {
	p       *Provider
	key     watchKey
	pod     provider.Pod
	wake    chan struct{} // buffered(1): a fresher token arrived
	restart chan struct{} // buffered(1): the open stream's token left
	renew   chan struct{} // buffered(1): reconnect at once, to drop a large event's buffer (prime.go)
	done    chan struct{} // closed when run returns
	stop    context.CancelFunc

	mu       sync.Mutex
	subs     map[uint64]*subscriber
	nextID   uint64
	present  bool   // the Secret exists, as last seen
	rv       string // its resourceVersion, as last seen
	known    bool   // present/rv are known
	resumeRV string // where the next watch starts ("" = current state)
	state    watchState
	attempts uint64        // connection attempts finished
	news     chan struct{} // closed (and replaced) when an attempt finishes or the stream is listed
	inUse    string        // token of the open stream

	// What the fetch that opened the watch reads instead of a GET (prime.go).
	holds   int  // subscribers that are fetches' holds
	listing bool // the stream is sending its initial events
	listed  bool // they ended, and initial waits for the fetch
	// largeInitial: an initial event was over keepBufferBelow.
	largeInitial bool
	initial      *corev1.Secret // the Secret they showed; nil when absent
	charge       *streamCharge  // the opening fetch's, for the first stream
}

// Watch subscribes changed to every Secret the class names. The first
// volume of a (namespace, Secret, service account) opens one API watch with
// the pod's token; later volumes share it. The watch always connects with the
// freshest token of a volume still subscribed: it reconnects when the volume
// whose token it used stops (as the driver does after re-calling Watch with
// a republish's fresh token), and a fresh token wakes a watch that was
// refused at once. A service account that may get but
// not watch a Secret makes Watch return PermissionDenied: the driver then
// refreshes on republish only. stop releases the subscriptions; the last one
// closes the API watch before stop returns.
func (p *Provider) Watch(req *provider.Request, changed func()) (func(), error) {
	if req.Pod.Namespace == "" {
		return nil, provider.InvalidArgument("the pod's namespace is unknown: the CSIDriver csi.secretfs.dev needs podInfoOnMount: true")
	}
	end, err := req.TakeTurn()
	if err != nil {
		return nil, err
	}
	specs, err := parseObjects(req.Parameters["objects"], req.DefaultMode)
	end()
	if err != nil {
		return nil, err
	}
	tok, err := p.podToken(req)
	if err != nil {
		return nil, err
	}
	token := req.Tokens[p.opts.Audience]
	token.Token = tok
	var stops []func()
	stopAll := func() {
		for _, s := range stops {
			s()
		}
	}
	for _, name := range secretNames(specs) {
		mounted, ok := mountedVersion(req.CurrentVersions, versionID(name))
		stop, err := p.subscribe(watchKey{req.Pod.Namespace, name, "", req.Pod.ServiceAccount}, req.Pod, token, mounted, ok, changed)
		if err != nil {
			stopAll()
			return nil, err
		}
		stops = append(stops, stop)
	}
	for _, sel := range selectors(specs) {
		mounted, ok := mountedVersion(req.CurrentVersions, selectorVersionID(sel))
		stop, err := p.subscribe(watchKey{req.Pod.Namespace, "", sel, req.Pod.ServiceAccount}, req.Pod, token, mounted, ok, changed)
		if err != nil {
			stopAll()
			return nil, err
		}
		stops = append(stops, stop)
	}
	var once sync.Once
	return func() { once.Do(stopAll) }, nil
}

func mountedVersion(versions []provider.ObjectVersion, id string) (string, bool) {
	for _, v := range versions {
		if v.ID == id {
			return v.Version, true
		}
	}
	return "", false
}

// subscribe adds changed to the shared watch of key. For a Secret,
// mountedRV is the resourceVersion the volume mounted ("" when it was
// absent); for a selector, the resourceVersion of the list the volume
// mounted, where a new watch starts, so every change after that list is an
// event. A selector's watch reports every event (a Secret that starts or
// stops matching arrives as added or deleted), and a volume that joins a
// selector's watch opened by another is told of a change at once unless its
// list is the last thing the watch saw: list versions of the same state
// differ whenever anything else in the cluster changed, so this costs a
// spare refresh, never a missed change.
func (p *Provider) subscribe(key watchKey, pod provider.Pod, token provider.Token, mountedRV string, mountedKnown bool, changed func()) (func(), error) {
	p.mu.Lock()
	if p.watches[key] == nil && len(p.watches) >= p.opts.MaxWatches {
		p.mu.Unlock()
		what := "Secret " + pod.Namespace + "/" + key.secret
		if key.selector != "" {
			what = "the Secrets of labelSelector " + quote(key.selector)
		}
		return nil, provider.Errorf(codes.ResourceExhausted,
			"this node's driver keeps %d API watches of Secrets, the most it keeps (driver flag --kubernetes-max-watches, about 70 KiB of memory each): "+
				"changes to %s reach this volume only at its rotation interval", p.opts.MaxWatches, what)
	}
	w, id, created := p.watchFor(key, pod, mountedRV, mountedKnown, &subscriber{changed: changed, token: token})
	w.mu.Lock()
	// The volume whose fetch opened the watch is here: its hold is done.
	w.releaseHoldsOf(token.Token)
	// A volume that mounted another version than the watch has seen since
	// is stale already.
	if !created && w.known && mountedKnown && (mountedRV != w.rv || (mountedRV != "") != w.present) {
		go changed()
	}
	state, startAttempts := w.state, w.attempts
	w.mu.Unlock()
	p.mu.Unlock()

	release := func() { p.unsubscribe(w, id) }
	if state != stateOpen {
		if state != stateConnecting {
			signal(w.wake) // this volume's token may be the fresher one that works
		}
		// Learn the outcome of an attempt made with this token or a fresher
		// one, so a 403 is reported to this volume's driver.
		if w.waitAttempt(startAttempts, p.opts.RequestTimeout+time.Second) == stateForbidden {
			release()
			if key.selector != "" {
				return nil, provider.PermissionDenied(
					"%s may list but not watch Secrets in namespace %s, so Secrets that start or stop matching labelSelector %s "+
						"reach this volume only at its rotation interval: add verb watch to its Role (resources [secrets], no resourceNames)",
					saName(pod), pod.Namespace, quote(key.selector))
			}
			return nil, provider.PermissionDenied(
				"%s may get but not watch Secret %s/%s, so changes reach this volume only on republish: "+
					"add verb watch to its Role (resources [secrets], resourceNames [%s])",
				saName(pod), pod.Namespace, key.secret, key.secret)
		}
	}
	return release, nil
}

// watchFor returns the shared watch of key with sub added as subscriber id,
// started when there was none (from mountedRV when mountedKnown, else from
// the current state): its first attempt has sub's token. The caller holds
// p.mu.
func (p *Provider) watchFor(key watchKey, pod provider.Pod, mountedRV string, mountedKnown bool, sub *subscriber) (w *sharedWatch, id uint64, created bool) {
	if w = p.watches[key]; w != nil {
		w.mu.Lock()
		id = w.add(sub)
		w.mu.Unlock()
		return w, id, false
	}
	ctx, cancel := context.WithCancel(context.Background())
	w = &sharedWatch{
		p: p, key: key, pod: pod, stop: cancel,
		wake: make(chan struct{}, 1), restart: make(chan struct{}, 1), renew: make(chan struct{}, 1), done: make(chan struct{}),
		subs: map[uint64]*subscriber{}, news: make(chan struct{}),
	}
	if mountedKnown {
		w.known, w.present, w.rv, w.resumeRV = true, mountedRV != "", mountedRV, mountedRV
	}
	id = w.add(sub)
	w.charge = sub.charge
	p.watches[key] = w
	go w.run(ctx)
	return w, id, true
}

// add adds sub and returns its id. The caller holds w.mu.
func (w *sharedWatch) add(sub *subscriber) uint64 {
	id := w.nextID
	w.nextID++
	w.subs[id] = sub
	if sub.hold {
		w.holds++
	}
	return id
}

func (p *Provider) unsubscribe(w *sharedWatch, id uint64) {
	p.mu.Lock()
	w.mu.Lock()
	sub := w.subs[id]
	w.remove(id)
	last := len(w.subs) == 0
	// The open stream stays authenticated only by tokens of volumes that
	// are still here: when its volume leaves (or the driver replaces it with
	// a fresher token on republish), reconnect with a current token.
	if !last && sub != nil && w.state == stateOpen && sub.token.Token == w.inUse && !w.hasToken(w.inUse) {
		signal(w.restart) // after restartDelay
	}
	w.mu.Unlock()
	if last && p.watches[w.key] == w {
		delete(p.watches, w.key)
	}
	p.mu.Unlock()
	if last {
		w.stop()
		<-w.done
	}
}

// signal sends on ch (buffered 1: wake, restart, renew) unless a signal is
// pending already.
func signal(ch chan<- struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// waitAttempt waits until more than start connection attempts have finished
// (or timeout) and returns the state then.
func (w *sharedWatch) waitAttempt(start uint64, timeout time.Duration) watchState {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		w.mu.Lock()
		state, n, ch := w.state, w.attempts, w.news
		w.mu.Unlock()
		if n > start {
			return state
		}
		select {
		case <-ch:
		case <-deadline.C:
			return state
		case <-w.done:
			return state
		}
	}
}

// freshestToken returns the subscriber token that expires last.
func (w *sharedWatch) freshestToken() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var best provider.Token
	for _, s := range w.subs {
		if best.Token == "" || s.token.ExpirationTimestamp.After(best.ExpirationTimestamp) {
			best = s.token
		}
	}
	return best.Token
}

// hasVolume says whether a volume, not only fetches, subscribed.
func (w *sharedWatch) hasVolume() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.volumeSubscribed()
}

// volumeSubscribed is hasVolume for a caller that holds w.mu: every
// subscriber that is not a fetch's hold is a volume's.
func (w *sharedWatch) volumeSubscribed() bool { return len(w.subs) > w.holds }

// hasToken says whether a subscriber still uses token. The caller holds w.mu.
func (w *sharedWatch) hasToken(token string) bool {
	for _, s := range w.subs {
		if s.token.Token == token {
			return true
		}
	}
	return false
}
