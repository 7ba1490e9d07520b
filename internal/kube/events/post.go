package events

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/util/flowcontrol"
	"k8s.io/utils/clock"
	"k8s.io/utils/lru"

	"github.com/secretfs/secretfs/internal/kube/kubecore"
)

// The poster does what client-go's event broadcaster and correlator
// (k8s.io/client-go/tools/record) do for the few events the driver posts,
// with their numbers: a queue that drops when full, a spam filter per
// object, aggregation of similar events and a count on repeats. Unlike
// client-go's, its queue is fair between namespaces: each has a queue of its
// own, at most perNamespace events, posted round-robin, and the spam filter
// runs before an event is queued, so one tenant's pods can neither drop nor
// delay the events of another namespace's pods. It does not use that
// package because the correlator patches with strategic merge patch, which
// brings the OpenAPI models and their parsers into the binary: about 2.4 MB,
// a megabyte of it resident on every node, for a handful of events.
const (
	queueLength  = 1000 // events waiting to be posted on the node; more are dropped
	perNamespace = 100  // events waiting to be posted in one namespace
	cacheSize    = 4096 // objects, similar groups and posted events remembered
	// spamBurst events per object, then one every 5 minutes.
	spamBurst = 25
	spamQPS   = 1. / 300.
	// After aggregateMax different messages of one reason on one object
	// within aggregateWindow, other messages go to one "combined" event.
	aggregateMax    = 10
	aggregateWindow = 10 * time.Minute
	// tries and requestTimeout bound what posting one event may take;
	// closing the poster ends a request at once.
	tries          = 3
	requestTimeout = 10 * time.Second
	combinedPrefix = "(combined from similar events): "
)

// poster posts events from its queues, one at a time, in one goroutine.
type poster struct {
	api    kubecore.EventsGetter
	source corev1.EventSource
	clock  clock.PassiveClock
	retry  time.Duration // the first pause between tries; doubled after each
	ctx    context.Context
	cancel context.CancelFunc // on close: ends the request in flight
	wake   chan struct{}      // an event was queued (capacity 1)
	done   chan struct{}

	mu     sync.Mutex
	queues map[string][]queued // namespace -> its events, oldest first
	turn   []string            // namespaces with queued events, whose turn is next first
	length int                 // events in all queues
	closed bool

	// The caches' keys are digests (digest), so what they hold does not
	// grow with the names and messages a tenant chooses: about 4 MiB when
	// all are full (TestPosterMemoryDoesNotGrowWithMessages).
	limits  *lru.Cache // object -> flowcontrol.PassiveRateLimiter
	similar *lru.Cache // object, type, reason -> *similarGroup
	posted  *lru.Cache // object, type, reason, message -> *postedEvent
}

type similarGroup struct {
	since    time.Time
	messages [aggregateMax][sha256.Size]byte // digests of the first n messages
	n        int
}

type postedEvent struct {
	name  string
	count int32
}

// queued is an event waiting to be posted, with the digest of its object.
type queued struct {
	e      *corev1.Event
	object [sha256.Size]byte
}

func newPoster(api kubecore.EventsGetter, source corev1.EventSource, c clock.PassiveClock) *poster {
	ctx, cancel := context.WithCancel(context.Background())
	p := &poster{
		api: api, source: source, clock: c, retry: time.Second,
		ctx: ctx, cancel: cancel,
		wake:    make(chan struct{}, 1),
		done:    make(chan struct{}),
		queues:  map[string][]queued{},
		limits:  lru.New(cacheSize),
		similar: lru.New(cacheSize),
		posted:  lru.New(cacheSize),
	}
	go p.run()
	return p
}

// enqueue queues an event of type on ref, never blocking. It is dropped
// when the object is past its spam filter, its namespace's queue or the
// node's queue is full, or the poster is closed.
func (p *poster) enqueue(ref *corev1.ObjectReference, eventType, reason, message string) {
	object := digest(p.source.Component, p.source.Host, ref.Kind, ref.Namespace, ref.Name, string(ref.UID))
	if !p.allow(object) {
		return
	}
	now := metav1.NewTime(p.clock.Now())
	e := &corev1.Event{
		ObjectMeta: metav1.ObjectMeta{
			Name:      eventName(ref.Name, now.Time),
			Namespace: ref.Namespace,
		},
		InvolvedObject:      *ref,
		Reason:              reason,
		Message:             message,
		FirstTimestamp:      now,
		LastTimestamp:       now,
		Count:               1,
		Type:                eventType,
		Source:              p.source,
		ReportingController: p.source.Component,
		ReportingInstance:   p.source.Host,
	}
	p.mu.Lock()
	q := p.queues[ref.Namespace]
	if p.closed || p.length >= queueLength || len(q) >= perNamespace {
		p.mu.Unlock()
		return
	}
	if len(q) == 0 {
		p.turn = append(p.turn, ref.Namespace)
	}
	p.queues[ref.Namespace] = append(q, queued{e, object})
	p.length++
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// eventName is client-go's: the object's name and the time in hex, with
// the name cut so the whole stays a valid name (253 bytes).
func eventName(object string, t time.Time) string {
	suffix := fmt.Sprintf(".%x", t.UnixNano())
	if max := validation.DNS1123SubdomainMaxLength - len(suffix); len(object) > max {
		object = strings.TrimRight(object[:max], ".-")
	}
	return object + suffix
}

// next takes the oldest event of the namespace whose turn it is, and moves
// that namespace to the end of the turns.
func (p *poster) next() (queued, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.turn) == 0 || p.closed {
		return queued{}, false
	}
	ns := p.turn[0]
	q := p.queues[ns]
	e := q[0]
	q[0] = queued{}
	p.turn = p.turn[1:]
	if q = q[1:]; len(q) == 0 {
		delete(p.queues, ns)
	} else {
		p.queues[ns] = q
		p.turn = append(p.turn, ns)
	}
	p.length--
	return e, true
}

// close stops the poster: a request in flight ends, queued events are
// dropped and later ones are not queued.
func (p *poster) close() {
	p.mu.Lock()
	p.closed = true
	p.queues, p.turn, p.length = nil, nil, 0
	p.mu.Unlock()
	p.cancel()
	<-p.done
}

func (p *poster) run() {
	defer close(p.done)
	for {
		if q, ok := p.next(); ok {
			p.post(q.e, q.object)
			continue
		}
		select {
		case <-p.ctx.Done():
			return
		case <-p.wake:
		}
	}
}

// post aggregates and posts e, about object, creating it or patching the
// count of the same event posted before.
func (p *poster) post(e *corev1.Event, object [sha256.Size]byte) {
	group := digest(string(object[:]), e.Type, e.Reason)
	// The event's key: the same event again patches its count. A group's
	// combined event is one, whatever its newest message.
	message := digest(e.Message)
	key := digest(string(group[:]), string(message[:]))
	if p.aggregated(group, message) {
		e.Message = clip(combinedPrefix + e.Message)
		key = digest(string(group[:]), "combined")
	}
	if v, ok := p.posted.Get(key); ok {
		prev := v.(*postedEvent)
		count := prev.count + 1
		patch, _ := json.Marshal(map[string]any{"count": count, "lastTimestamp": e.LastTimestamp, "message": e.Message})
		err := p.try(func(ctx context.Context) error {
			_, err := p.api.Events(e.Namespace).Patch(ctx, prev.name, types.MergePatchType, patch, metav1.PatchOptions{})
			return err
		})
		if err == nil {
			prev.count = count
			return
		}
		if !apierrors.IsNotFound(err) {
			return
		}
		p.posted.Remove(key) // expired on the API server (its event TTL): post it anew
	}
	err := p.try(func(ctx context.Context) error {
		_, err := p.api.Events(e.Namespace).Create(ctx, e, metav1.CreateOptions{})
		return err
	})
	if err == nil {
		p.posted.Add(key, &postedEvent{name: e.Name, count: 1})
	}
}

// allow is the spam filter: spamBurst events per object, then one every
// 1/spamQPS seconds.
func (p *poster) allow(object [sha256.Size]byte) bool {
	v, ok := p.limits.Get(object)
	if !ok {
		v = flowcontrol.NewTokenBucketPassiveRateLimiterWithClock(spamQPS, spamBurst, p.clock)
		p.limits.Add(object, v)
	}
	return v.(flowcontrol.PassiveRateLimiter).TryAccept()
}

// aggregated reports whether an event of group with message goes to the
// group's combined event: the group had aggregateMax other messages within
// aggregateWindow.
func (p *poster) aggregated(group, message [sha256.Size]byte) bool {
	now := p.clock.Now()
	var g *similarGroup
	if v, ok := p.similar.Get(group); ok {
		g = v.(*similarGroup)
	}
	if g == nil || now.Sub(g.since) > aggregateWindow {
		g = &similarGroup{since: now}
		p.similar.Add(group, g)
	}
	if slices.Contains(g.messages[:g.n], message) {
		return false
	}
	if g.n < aggregateMax {
		g.messages[g.n] = message
		g.n++
		return false
	}
	return true
}

// digest is the cache key of fields: each field length-prefixed, so no two
// lists of fields share one.
func digest(fields ...string) [sha256.Size]byte {
	h := sha256.New()
	for _, f := range fields {
		fmt.Fprintf(h, "%d:%s", len(f), f)
	}
	var d [sha256.Size]byte
	h.Sum(d[:0])
	return d
}

// try calls fn up to tries times, pausing between tries, until it
// succeeds, fails for good (the API server refused the event) or the
// poster stops.
func (p *poster) try(fn func(ctx context.Context) error) error {
	pause := p.retry
	for i := 1; ; i++ {
		ctx, cancel := context.WithTimeout(p.ctx, requestTimeout)
		err := fn(ctx)
		cancel()
		if err == nil || i == tries || final(err) {
			return err
		}
		select {
		case <-p.ctx.Done():
			return err
		case <-time.After(pause):
		}
		pause *= 2
	}
}

// final: trying again would get the same answer.
func final(err error) bool {
	return apierrors.IsNotFound(err) || apierrors.IsAlreadyExists(err) || apierrors.IsInvalid(err) ||
		apierrors.IsForbidden(err) || apierrors.IsBadRequest(err) || apierrors.IsUnauthorized(err)
}
