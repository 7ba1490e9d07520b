// Package restart restarts a pod's workload when the content of one of its
// volumes changes, for classes that ask for it (secretfs.dev/onChange:
// restart) on a driver run with --restart-on-change. It is a driver hook
// (hook.Hook).
//
// What it does, per change seen on this node:
//
//  1. Changed (under the volume's lock) skips a first publish (a new pod's
//     content is not a change), a volume without new files and a class
//     that does not opt in; otherwise it hashes the new files into the
//     restart value (Value) and queues a job for the pod, which holds the
//     change open (hook.Volume.Hold) until the job is done: a driver that
//     dies first leaves the change in the volume's record, and the next
//     one tells it again. Nothing else happens on the publish path; a full
//     queue drops the job with a Warning Event.
//  2. One worker takes the jobs, each under a deadline, through an API
//     client limited in requests per second (the driver's flag). Jobs of
//     one pod coalesce while queued (the newest value wins).
//  3. It finds the pod's workload: the pod's controller (one GET of the
//     pod, remembered per pod), and for a ReplicaSet the ReplicaSet's
//     controller (one GET, remembered per ReplicaSet).
//  4. Deployment, StatefulSet, DaemonSet: the value goes into the pod
//     template's annotation secretfs.dev/restartedFor, as `kubectl rollout
//     restart` writes its own annotation, so the workload's strategy and
//     disruption budget pace the rollout. The value depends only on the
//     class and the content, so every node and pod that sees one change
//     writes the same value: a workload already carrying it is not written
//     again (a GET, no write), and this node remembers it per workload (no
//     call at all for the next pod of it). One change makes one rollout.
//     Nor is a workload written whose template's value is not the one the
//     pod was made with: it was restarted since, and the rollout under way
//     replaces the pod with one that mounts the new content (a pod of the
//     current template that mounted before the change sees it itself). So
//     two classes of one workload rotating together make one rollout, not
//     one per pod and class, the value flipping between theirs.
//  5. A pod without a controller, and a pod of a ReplicaSet without a
//     Deployment (changing such a ReplicaSet's template replaces no pod),
//     is evicted through the Eviction API, so disruption budgets apply; a
//     refusal by a budget (429) is retried with backoff a bounded number
//     of times, then reported. The backoff waits on a timer, not in the
//     worker: a tenant's pods that a budget keeps from leaving delay
//     nobody else's restart. A newer change of the pod replaces its retry.
//  6. A Job's pod (it runs to completion; evicting it would count as a
//     failure) and a pod of any other controller kind are not restarted:
//     a Warning Event says so.
//  7. Whatever was restarted is told with a Normal Event on the pod that
//     saw the change; a failure with a Warning Event.
package restart

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/dynamic"

	"github.com/secretfs/secretfs/driver/hook"
	"github.com/secretfs/secretfs/provider"
)

// Flag is the driver flag that turns the restarts on.
const Flag = "--restart-on-change"

// Annotation is the pod-template annotation the restart writes.
const Annotation = "secretfs.dev/restartedFor"

// Event reasons.
const (
	// ReasonRestarted (Normal): a workload was restarted or a pod evicted.
	ReasonRestarted = "SecretRestart"
	// ReasonNotRestarted (Warning): a change was seen but nothing could be
	// restarted.
	ReasonNotRestarted = "SecretRestartFailed"
)

// EventSink posts Events on pods; it must not block.
type EventSink interface {
	Normal(pod provider.Pod, reason, message string)
	Warning(pod provider.Pod, reason, message string)
}

// Options configure a Restarter.
type Options struct {
	// Client is the API client (its rate limit bounds the requests per
	// second).
	Client dynamic.Interface
	// Events: where Events go (nil: none).
	Events EventSink
	Logger *slog.Logger
	// FieldManager names the driver in the objects' managed fields.
	FieldManager string
	// Timeout bounds one job (default 30s).
	Timeout time.Duration
	// Queue bounds the pods waiting for their job (default 1024).
	Queue int
	// EvictionRetries bounds the attempts of an eviction a disruption
	// budget refuses (default 5), the first retry after EvictionBackoff
	// (default 2s), doubling.
	EvictionRetries int
	EvictionBackoff time.Duration
	// Registerer takes the metrics (nil: not registered).
	Registerer prometheus.Registerer
}

// maxRemembered bounds each of the Restarter's memories (pods'
// controllers, ReplicaSets' owners, values written); a full one is
// emptied, which costs API calls, never correctness.
const maxRemembered = 4096

// Restarter is the hook. Close it when done.
type Restarter struct {
	opts    Options
	log     *slog.Logger
	metrics *metrics
	queue   chan string
	cancel  context.CancelFunc
	done    sync.WaitGroup

	mu      sync.Mutex
	pending map[string]job // by pod UID
	busy    int            // jobs queued or running
	idle    *sync.Cond
	podCtl  map[string]podInfo // pod UID -> its controller and template value
	rsOwner map[string]ref     // ReplicaSet UID -> its controller (zero: none)
	written map[string]string  // workload -> value it carries
	values  map[string]string  // digest -> Value
	retries map[string]retry   // pod UID -> its refused eviction's next attempt
	closed  bool
}

// job is one pod's restart.
type job struct {
	pod   provider.Pod
	class string
	sum   [32]byte // content digest (Digest); the value is derived in the worker
	// attempt counts the evictions of this job a budget refused; backoff
	// is the wait before the next one.
	attempt int
	backoff time.Duration
	// done releases the driver's hold on the change (hook.Volume.Hold) once
	// the job is over, retries included: a job still queued, running or
	// waiting to retry when the driver dies is told again after its
	// restart, and a workload that carries the value already is not written
	// again.
	done func()
}

// retry is a refused eviction's next attempt.
type retry struct {
	t    *time.Timer
	done func() // the job's
}

var _ hook.Hook = (*Restarter)(nil)

// New returns a Restarter and starts its worker.
func New(opts Options) (*Restarter, error) {
	if opts.Timeout <= 0 {
		opts.Timeout = 30 * time.Second
	}
	if opts.Queue <= 0 {
		opts.Queue = 1024
	}
	if opts.EvictionRetries <= 0 {
		opts.EvictionRetries = 5
	}
	if opts.EvictionBackoff <= 0 {
		opts.EvictionBackoff = 2 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(opts.Registerer)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &Restarter{opts: opts, log: opts.Logger, metrics: m, queue: make(chan string, opts.Queue), cancel: cancel,
		pending: map[string]job{}, podCtl: map[string]podInfo{}, rsOwner: map[string]ref{}, written: map[string]string{}, values: map[string]string{},
		retries: map[string]retry{}}
	r.idle = sync.NewCond(&r.mu)
	r.done.Add(1)
	go r.work(ctx)
	return r, nil
}

// Close stops the worker. Queued jobs and waiting retries are dropped still
// holding their change, so the next driver tells it again.
func (r *Restarter) Close() {
	r.cancel()
	r.done.Wait()
	r.mu.Lock()
	r.closed = true
	for uid, e := range r.retries {
		if e.t.Stop() {
			r.doneOne()
		}
		delete(r.retries, uid)
	}
	r.mu.Unlock()
}

// Changed queues a restart for v's pod when v's class asks for one and
// this is a change of content, not a first publish (step 1).
func (r *Restarter) Changed(_ context.Context, v hook.Volume) {
	if v.First || v.Files == nil || v.Class == nil {
		return
	}
	// The class was checked by the publish that mounted it; an invalid
	// value cannot get here, and is no restart if it did.
	if restart, err := v.Class.RestartOnChange(); err != nil || !restart {
		return
	}
	j := job{pod: v.Pod, class: v.Class.Name, sum: Digest(v.Class.Namespace, v.Class.Name, v.Files), done: func() {}}
	r.mu.Lock()
	r.dropRetry(v.Pod.UID) // this change replaces the retry
	if old, queued := r.pending[v.Pod.UID]; queued {
		j.done = hold(v)
		r.pending[v.Pod.UID] = j // the newest content wins
		r.mu.Unlock()
		old.done()
		return
	}
	select {
	case r.queue <- v.Pod.UID:
		j.done = hold(v)
		r.pending[v.Pod.UID] = j
		r.busy++
		r.metrics.queued.Set(float64(r.busy))
		r.mu.Unlock()
	default:
		r.mu.Unlock()
		r.metrics.count(resultDropped)
		r.warn(v.Pod, fmt.Sprintf("The content of SecretProviderClass %q changed, but the driver's restart queue is full (%d pods waiting): the pod's workload was not restarted", j.class, r.opts.Queue))
	}
}

// hold holds v's change open (hook.Volume.Hold) until the job is done.
func hold(v hook.Volume) func() {
	if v.Hold == nil {
		return func() {}
	}
	return v.Hold()
}

// Gone forgets v's pod's controller and drops its eviction's retry.
func (r *Restarter) Gone(v hook.Volume) {
	r.mu.Lock()
	delete(r.podCtl, v.Pod.UID)
	r.dropRetry(v.Pod.UID)
	r.mu.Unlock()
}

// dropRetry drops uid's waiting retry, if any; r.mu is held.
func (r *Restarter) dropRetry(uid string) {
	e, ok := r.retries[uid]
	if !ok {
		return
	}
	delete(r.retries, uid)
	if e.t.Stop() {
		r.doneOne()
		e.done()
	}
}

// work runs the jobs one at a time (step 2).
func (r *Restarter) work(ctx context.Context) {
	defer r.done.Done()
	for {
		select {
		case <-ctx.Done():
			return
		case uid := <-r.queue:
			r.mu.Lock()
			j := r.pending[uid]
			delete(r.pending, uid)
			r.mu.Unlock()
			jctx, cancel := context.WithTimeout(ctx, r.opts.Timeout)
			result := r.run(jctx, j)
			cancel()
			// A job that waits to retry holds its change still; one cut
			// short by the driver's stop leaves it to the next driver.
			if result != resultRetrying && ctx.Err() == nil {
				r.metrics.count(result)
				j.done()
			}
			r.mu.Lock()
			r.doneOne()
			r.mu.Unlock()
		}
	}
}

// doneOne counts a job (queued or waiting to retry) done; r.mu is held.
func (r *Restarter) doneOne() {
	r.busy--
	r.metrics.queued.Set(float64(r.busy))
	if r.busy == 0 && r.idle != nil {
		r.idle.Broadcast()
	}
}

// retryLater queues j again after its backoff, unless a newer change of
// its pod comes first (step 5). It holds no worker while it waits. It
// reports whether j waits (else it is over: the Restarter is closed, or a
// newer change of the pod is queued).
func (r *Restarter) retryLater(j job) bool {
	j.attempt++
	if j.backoff == 0 {
		j.backoff = r.opts.EvictionBackoff
	} else {
		j.backoff *= 2
	}
	uid := j.pod.UID
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return true // left to the next driver
	}
	if _, newer := r.pending[uid]; newer {
		return false
	}
	r.busy++
	var t *time.Timer
	t = time.AfterFunc(j.backoff, func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.retries[uid].t != t {
			return // replaced by a newer change, or closed: counted there
		}
		delete(r.retries, uid)
		if r.closed {
			r.doneOne()
			return // left to the next driver
		}
		if _, newer := r.pending[uid]; newer {
			r.doneOne()
			j.done()
			return
		}
		select {
		case r.queue <- uid: // still counted in busy
			r.pending[uid] = j
		default:
			r.doneOne()
			r.metrics.count(resultDropped)
			j.done()
			go r.warn(j.pod, fmt.Sprintf("The content of SecretProviderClass %q changed, but the driver's restart queue is full (%d pods waiting): the pod's eviction was not retried", j.class, r.opts.Queue))
		}
	})
	r.retries[uid] = retry{t: t, done: j.done}
	return true
}

func (r *Restarter) warn(pod provider.Pod, msg string) {
	r.log.Warn("restart on change", "namespace", pod.Namespace, "pod", pod.Name, "msg", msg)
	if r.opts.Events != nil {
		r.opts.Events.Warning(pod, ReasonNotRestarted, msg)
	}
}

func (r *Restarter) normal(pod provider.Pod, msg string) {
	r.log.Info("restart on change", "namespace", pod.Namespace, "pod", pod.Name, "msg", msg)
	if r.opts.Events != nil {
		r.opts.Events.Normal(pod, ReasonRestarted, msg)
	}
}

// remember sets m[k] = v, emptying m first when full.
func remember[V any](m map[string]V, k string, v V) {
	if _, ok := m[k]; !ok && len(m) >= maxRemembered {
		clear(m)
	}
	m[k] = v
}
