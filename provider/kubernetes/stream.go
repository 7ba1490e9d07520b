package kubernetes

import (
	"context"
	"errors"
	"math/rand/v2"
	"net/http"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
)

// The API stream a shared watch keeps open: connecting with the freshest
// token of its subscribers, reading events, and reconnecting (waits between
// attempts are in watchretry.go).

// finishAttempt records the outcome of a connection attempt.
func (w *sharedWatch) finishAttempt(state watchState, token string) {
	w.mu.Lock()
	w.state = state
	w.inUse = token
	w.attempts++
	w.announce()
	w.mu.Unlock()
}

// announce wakes everyone waiting for news of w. The caller holds w.mu.
func (w *sharedWatch) announce() {
	close(w.news)
	w.news = make(chan struct{})
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
		stream, charge, err := w.open(ctx, token)
		var wait time.Duration
		switch {
		case err == nil:
			w.finishAttempt(stateOpen, token)
			w.p.allowed(w.key)
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
			if volume := w.retrying(); charge.failed() != nil && !volume {
				// The Secret was over what the fetch that opened the
				// watch could take, and no volume waits for changes:
				// reading it again helps nobody (the fetch lets go at
				// once). A volume that subscribes (it sees the state
				// set in the same hold of the lock) wakes it.
				wait = -1
			}
		case ctx.Err() != nil:
			w.finishAttempt(stateRetrying, "")
			return
		case apierrors.IsForbidden(err):
			w.finishAttempt(stateForbidden, "")
			w.p.logForbiddenOnce(w.key, w.hasVolume(), log)
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
func (w *sharedWatch) open(ctx context.Context, token string) (stream watch.Interface, charge *streamCharge, err error) {
	if token == "" {
		return nil, nil, errNoToken
	}
	w.mu.Lock()
	rv := w.resumeRV
	// From the current state, the stream starts with the Secret as it is
	// (an added event, none when it is absent) and a bookmark that says the
	// initial events ended, so a fetch can read it from here (prime.go).
	initial := rv == "" && w.key.selector == "" && !w.p.noInitialEvents.Load()
	w.startListing(initial)
	if charge = w.charge; charge != nil {
		w.charge = nil
		ctx = withStreamCharge(ctx, charge)
	}
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
	if initial {
		send := true
		opts.SendInitialEvents, opts.ResourceVersionMatch = &send, metav1.ResourceVersionMatchNotOlderThan
	}
	if err := w.p.limiter.Wait(ctx); err != nil {
		return nil, charge, err
	}
	stream, err = w.p.client.Secrets(w.key.namespace).Watch(withToken(ctx, token), opts)
	if initial && (apierrors.IsInvalid(err) || apierrors.IsBadRequest(err)) {
		// An API server without streaming lists (before Kubernetes 1.32,
		// or the WatchList feature off): a plain watch from the current
		// state, and fetches GET.
		w.p.noInitialEvents.Store(true)
		w.mu.Lock()
		w.startListing(false)
		w.mu.Unlock()
		opts.SendInitialEvents, opts.ResourceVersionMatch = nil, ""
		stream, err = w.p.client.Secrets(w.key.namespace).Watch(withToken(ctx, token), opts)
	}
	return stream, charge, err
}

type streamEnd int

const (
	streamEnded   streamEnd = iota // closed by the server or an error
	streamGone                     // the resume point expired (410 Gone)
	streamRestart                  // its token's volume left, or the buffer of a large initial event goes
)

// restartDelay is how long a stream goes on after a restart was asked for:
// when the pods sharing a watch are deleted together, each departure of the
// volume whose token the stream uses asks for one, and the stream stops
// with the last of them instead of reconnecting once per departure (and
// being refused 401 with a token of a pod deleted a moment before).
const restartDelay = time.Second

// consume reads events until the stream ends, and says why it ended.
func (w *sharedWatch) consume(ctx context.Context, stream watch.Interface, log interface {
	Debug(string, ...any)
}) streamEnd {
	w.p.streams.Add(1)
	defer w.p.streams.Add(-1)
	defer stream.Stop()
	var restartAt <-chan time.Time // a restart asked for, after restartDelay
	for {
		var ev watch.Event
		var ok bool
		select {
		case <-ctx.Done():
			return streamEnded
		case <-w.restart:
			if restartAt == nil {
				t := time.NewTimer(restartDelay)
				defer t.Stop()
				restartAt = t.C
			}
			continue
		case <-restartAt:
			return streamRestart
		case <-w.renew:
			return streamRestart
		case ev, ok = <-stream.ResultChan():
		}
		if !ok {
			return streamEnded
		}
		switch ev.Type {
		case watch.Added, watch.Modified:
			if s, isSecret := ev.Object.(*corev1.Secret); isSecret {
				w.keepInitial(s)
				w.observe(true, s.ResourceVersion)
			}
		case watch.Deleted:
			if s, isSecret := ev.Object.(*corev1.Secret); isSecret {
				w.keepInitial(nil)
				w.observe(false, s.ResourceVersion)
			}
		case watch.Bookmark:
			if m, ok := ev.Object.(metav1.Object); ok {
				w.setResumePoint(m.GetResourceVersion())
				if m.GetAnnotations()[metav1.InitialEventsAnnotationKey] == "true" {
					w.initialEventsEnded()
				}
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

// retrying records that the stream ended and says whether a volume, not
// only fetches, subscribed.
func (w *sharedWatch) retrying() (volume bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.state = stateRetrying
	w.announce()
	return w.volumeSubscribed()
}

func codeOfStatus(err error) int32 {
	var s apierrors.APIStatus
	if errors.As(err, &s) {
		return s.Status().Code
	}
	return http.StatusInternalServerError
}
