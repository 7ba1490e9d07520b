package kubernetes

import (
	"context"
	"errors"
	"math/rand/v2"
	"net/http"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"

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
}

type sharedWatch struct {
	p       *Provider
	key     watchKey
	pod     provider.Pod
	wake    chan struct{} // buffered(1): a fresher token arrived
	restart chan struct{} // buffered(1): the open stream's token left
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
	attempt  chan struct{} // closed when the running attempt finishes
	inUse    string        // token of the open stream
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
	specs, err := parseObjects(req.Parameters["objects"], req.DefaultMode)
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
	w := p.watches[key]
	created := w == nil
	if created {
		ctx, cancel := context.WithCancel(context.Background())
		w = &sharedWatch{
			p: p, key: key, pod: pod, stop: cancel,
			wake: make(chan struct{}, 1), restart: make(chan struct{}, 1), done: make(chan struct{}),
			subs: map[uint64]*subscriber{}, attempt: make(chan struct{}),
		}
		if mountedKnown {
			w.known, w.present, w.rv, w.resumeRV = true, mountedRV != "", mountedRV, mountedRV
		}
		p.watches[key] = w
		go w.run(ctx)
	}
	w.mu.Lock()
	id := w.nextID
	w.nextID++
	w.subs[id] = &subscriber{changed: changed, token: token}
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
			w.poke() // this volume's token may be the fresher one that works
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

func (p *Provider) unsubscribe(w *sharedWatch, id uint64) {
	p.mu.Lock()
	w.mu.Lock()
	sub := w.subs[id]
	delete(w.subs, id)
	last := len(w.subs) == 0
	// The open stream stays authenticated only by tokens of volumes that
	// are still here: when its volume leaves (or the driver replaces it with
	// a fresher token on republish), reconnect with a current token.
	if !last && sub != nil && w.state == stateOpen && sub.token.Token == w.inUse {
		select {
		case w.restart <- struct{}{}:
		default:
		}
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

// poke makes a watch that waits for a token retry now.
func (w *sharedWatch) poke() {
	select {
	case w.wake <- struct{}{}:
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
		state, n, ch := w.state, w.attempts, w.attempt
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

// finishAttempt records the outcome of a connection attempt.
func (w *sharedWatch) finishAttempt(state watchState, token string) {
	w.mu.Lock()
	w.state = state
	w.inUse = token
	w.attempts++
	close(w.attempt)
	w.attempt = make(chan struct{})
	w.mu.Unlock()
}

// run keeps one API watch open until ctx ends, reconnecting with the
// freshest token and exponential backoff.
func (w *sharedWatch) run(ctx context.Context) {
	defer close(w.done)
	log := w.p.opts.Logger.With("namespace", w.key.namespace, "secret", w.key.secret, "serviceAccount", w.key.serviceAccount)
	if w.key.selector != "" {
		log = w.p.opts.Logger.With("namespace", w.key.namespace, "labelSelector", w.key.selector, "serviceAccount", w.key.serviceAccount)
	}
	backoff := minBackoff
	for ctx.Err() == nil {
		select { // a restart asked for before this connection is moot
		case <-w.restart:
		default:
		}
		token := w.freshestToken()
		stream, err := w.open(ctx, token)
		var wait time.Duration
		switch {
		case err == nil:
			w.finishAttempt(stateOpen, token)
			started := time.Now()
			switch w.consume(ctx, stream, log) {
			case streamGone, streamRestart:
				continue // reconnect at once: from current state, or with a current token
			}
			if time.Since(started) > 10*time.Second {
				backoff = minBackoff
			}
			wait = backoff // a stream that ends at once must not spin
			backoff = min(2*backoff, maxBackoff)
			w.setState(stateRetrying)
		case ctx.Err() != nil:
			w.finishAttempt(stateRetrying, "")
			return
		case apierrors.IsForbidden(err):
			w.finishAttempt(stateForbidden, "")
			w.p.logForbiddenOnce(w.key, log)
			wait = -1
		case apierrors.IsUnauthorized(err):
			w.finishAttempt(stateUnauthorized, "")
			log.Info("API server rejected the service-account token for the watch; waiting for a fresher token")
			wait = unauthorizedRetry
		case apierrors.IsGone(err) || apierrors.IsResourceExpired(err):
			w.finishAttempt(stateRetrying, "")
			w.forgetResumePoint()
			continue
		default:
			w.finishAttempt(stateRetrying, "")
			log.Warn("watch of Secret failed; retrying", "error", apiError(err, "watch", w.pod, w.key.secret).Error(), "retryIn", backoff)
			wait = backoff
			backoff = min(2*backoff, maxBackoff)
		}
		if !w.sleep(ctx, wait) {
			return
		}
	}
}

// open starts a watch of the one Secret, from the resume point.
func (w *sharedWatch) open(ctx context.Context, token string) (watch.Interface, error) {
	if token == "" {
		return nil, errNoToken
	}
	w.mu.Lock()
	rv := w.resumeRV
	w.mu.Unlock()
	// The server ends a watch after this; reconnecting picks a fresher token.
	timeout := int64(300 + rand.IntN(300))
	opts := metav1.ListOptions{
		FieldSelector:       "metadata.name=" + w.key.secret,
		ResourceVersion:     rv,
		AllowWatchBookmarks: true,
		TimeoutSeconds:      &timeout,
	}
	if w.key.selector != "" {
		opts.FieldSelector, opts.LabelSelector = "", w.key.selector
	}
	return w.p.client.Secrets(w.key.namespace).Watch(withToken(ctx, token), opts)
}

type streamEnd int

const (
	streamEnded   streamEnd = iota // closed by the server or an error
	streamGone                     // the resume point expired (410 Gone)
	streamRestart                  // its token's volume left
)

// consume reads events until the stream ends, and says why it ended.
func (w *sharedWatch) consume(ctx context.Context, stream watch.Interface, log interface {
	Debug(string, ...any)
}) streamEnd {
	w.p.streams.Add(1)
	defer w.p.streams.Add(-1)
	defer stream.Stop()
	for {
		var ev watch.Event
		var ok bool
		select {
		case <-ctx.Done():
			return streamEnded
		case <-w.restart:
			return streamRestart
		case ev, ok = <-stream.ResultChan():
		}
		if !ok {
			return streamEnded
		}
		switch ev.Type {
		case watch.Added, watch.Modified:
			if s, isSecret := ev.Object.(*corev1.Secret); isSecret {
				w.observe(true, s.ResourceVersion)
			}
		case watch.Deleted:
			if s, isSecret := ev.Object.(*corev1.Secret); isSecret {
				w.observe(false, s.ResourceVersion)
			}
		case watch.Bookmark:
			if m, err := metaOf(ev.Object); err == nil {
				w.setResumePoint(m)
			}
		case watch.Error:
			status := apierrors.FromObject(ev.Object)
			if apierrors.IsGone(status) || apierrors.IsResourceExpired(status) {
				w.forgetResumePoint()
				return streamGone
			}
			log.Debug("watch stream error", "code", codeOfStatus(status))
			return streamEnded
		}
	}
}

// observe records the Secret as seen in an event and notifies every
// subscriber when it differs from what they were told last.
func (w *sharedWatch) observe(present bool, rv string) {
	w.mu.Lock()
	w.resumeRV = rv
	if w.key.selector != "" {
		// Each event of a selector's watch is a change of the selection:
		// a Secret added, changed, or deleted or no longer matching.
		// Only a replay of the last event seen is not.
		if w.known && w.rv == rv {
			w.mu.Unlock()
			return
		}
		w.known, w.present, w.rv = true, true, rv
	} else if w.known && w.present == present && (!present || w.rv == rv) {
		w.mu.Unlock()
		return
	} else {
		w.known, w.present, w.rv = true, present, rv
		if !present {
			w.rv = ""
		}
	}
	fns := make([]func(), 0, len(w.subs))
	for _, s := range w.subs {
		fns = append(fns, s.changed)
	}
	w.mu.Unlock()
	// Never call the driver with our lock held or from the watch loop: a
	// driver that calls stop from changed must not deadlock.
	for _, f := range fns {
		go f()
	}
}

func (w *sharedWatch) setResumePoint(rv string) {
	w.mu.Lock()
	w.resumeRV = rv
	w.mu.Unlock()
}

func (w *sharedWatch) forgetResumePoint() { w.setResumePoint("") }

func (w *sharedWatch) setState(s watchState) {
	w.mu.Lock()
	w.state = s
	w.mu.Unlock()
}

func metaOf(obj any) (string, error) {
	m, ok := obj.(metav1.Object)
	if !ok {
		return "", errors.New("not an object")
	}
	return m.GetResourceVersion(), nil
}

func codeOfStatus(err error) int32 {
	var s apierrors.APIStatus
	if errors.As(err, &s) {
		return s.Status().Code
	}
	return http.StatusInternalServerError
}
