// Package secretsync mirrors a volume's mounted objects into Kubernetes
// Secrets, as a SecretProviderClass's spec.secretObjects asks: the Secrets
// Store CSI Driver's "sync as Kubernetes secret", with the same observable
// contract (the managed label, kubernetes.io/tls split from a PEM bundle,
// updates on rotation) and without its gaps:
//
//   - The Secret is written before the first publish returns, so a container
//     whose env refers to it starts on the first try.
//   - Only Secrets the class names, only in the pod's namespace, and never a
//     Secret without the managed label: such a Secret is a conflict, posted
//     as a Warning Event on the pod naming it; the volume mounts anyway.
//   - The Secret's owners are the pods' controllers (the pod when it has
//     none), or with OwnerPod every pod (owner.go), each once, from every
//     node, so the cluster's garbage collector deletes the Secret when the
//     last of them is gone, on whatever node. The driver never deletes a
//     Secret itself and makes no request on unpublish.
//   - A failed write (RBAC missing, API down) is a Warning Event and a
//     metric, and is retried with back-off from the newest content, so after
//     the next success the Secret holds what the files hold.
//   - Memory is bounded and counted (design decision 15): a Changed copies
//     each file its class's Secrets read once, however many Secrets use it
//     (batch.go), within a per-class cap (MaxClassBytes) and charged to the
//     node budget before the copy. A Secret keeps its content only until it
//     is written; then only a hash of it stays, so a refresh that changes
//     nothing costs no request and no copy is held for the volume's life.
//     After a failure the newest content a volume submitted is kept
//     (charged) for the retries: the hook sees files only when they change,
//     so the content cannot be rebuilt later. A class over the cap or the
//     budget is not synced (a Warning Event names the flag) until its
//     content changes or another pod publishes it; the volume mounts.
//     Writes in flight send at most MaxInflightBytes of data at once.
//
// Cost: one write per Secret and content change on each node, plus owner
// additions: a first publish adds at most one write (a patch that adds its
// owner, none when the Secret has it already, or the create) and, with
// controller owners, one get of the pod; publishes of pods that arrive while a write
// of the same Secret is in flight share the next one, so N simultaneous
// publishes on a node cost at most two writes. A refresh that changes
// nothing makes no request. The first sync of an existing Secret on a node
// costs three requests once (create refused, a JSON patch of test
// operations only that checks the label and type and changes nothing, the
// patch). The sync never reads a Secret: its RBAC is create and patch on
// Secrets, and get on pods for controller owners.
package secretsync

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/semaphore"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/secretfs/secretfs/driver/budget"
	"github.com/secretfs/secretfs/driver/class"
	"github.com/secretfs/secretfs/driver/hook"
	"github.com/secretfs/secretfs/internal/kube/kubecore"
	"github.com/secretfs/secretfs/provider"
)

// Reasons of the Events the sync posts on pods.
const (
	ReasonFailed   = "SecretSyncFailed"
	ReasonConflict = "SecretSyncConflict"
	// ReasonRefused: the class asks for a Secret type or a label or
	// annotation key a class may not (see AllowedTypes and policy.go).
	ReasonRefused = "SecretSyncRefused"
)

// A Syncer is a driver hook. It reads a volume's Files during Changed and
// keeps none of them; it never sees tokens.
var _ hook.Hook = (*Syncer)(nil)

// EventSink posts an Event on a pod; it must not block.
type EventSink interface {
	Warning(pod provider.Pod, reason, message string)
}

// Options configure a Syncer.
type Options struct {
	// Client writes Secrets: create, get and patch on secrets.
	Client kubecore.SecretsGetter
	// Events receives Warning Events for pods (nil: logs and metrics only).
	Events     EventSink
	Registerer prometheus.Registerer
	Logger     *slog.Logger
	// Wait bounds how long Changed waits for the write (default 10s): a
	// publish never hangs on an API server that does not answer; the write
	// goes on in the background.
	Wait time.Duration
	// Timeout bounds one write attempt (default 30s).
	Timeout time.Duration
	// MinBackoff and MaxBackoff bound the retry delay after a failure
	// (defaults 1s and 5m); it doubles with each failure in a row.
	MinBackoff, MaxBackoff time.Duration
	// FieldManager names the driver in the Secrets' managedFields.
	FieldManager string
	// Budget is the node budget: what the sync holds of the volumes' files
	// is charged to it (see batch.go). Nil: not charged.
	Budget *budget.Budget
	// MaxClassBytes caps the bytes of the distinct files one class's
	// Secrets read, each file counted once (default DefaultMaxClassBytes;
	// negative: no cap).
	MaxClassBytes int64
	// Owner says which object owns a synced Secret (default
	// OwnerController; see owner.go).
	Owner OwnerMode
	// Pods reads a pod's controller (OwnerController only). Nil: Client,
	// when it is also a kubecore.PodsGetter.
	Pods kubecore.PodsGetter
}

// Syncer keeps Secrets in step with the volumes on one node. Its methods
// are safe for concurrent use.
type Syncer struct {
	client       kubecore.SecretsGetter
	events       EventSink
	log          *slog.Logger
	metrics      *metrics
	wait         time.Duration
	timeout      time.Duration
	minBackoff   time.Duration
	maxBackoff   time.Duration
	fieldManager string
	budget       *budget.Budget
	maxClass     int64
	owner        OwnerMode
	pods         kubecore.PodsGetter
	// inflight bounds the bytes of Secret data being sent at once: a write
	// costs about three times its data while it runs (the JSON body, the
	// response, the decoded answer), outside the node budget, within the
	// driver's headroom.
	inflight *semaphore.Weighted

	mu      sync.Mutex
	secrets map[key]*entry
	vols    map[string][]key // volume id -> the Secrets it syncs
	// volOwner is the owner of what a volume syncs (OwnerController: read
	// once per volume).
	volOwner map[string]volOwner
	closed   bool
	running  sync.WaitGroup
}

type key struct{ ns, name string }

// entry is one Secret as this node sees it. Guarded by Syncer.mu.
type entry struct {
	key key
	// users are the volumes on this node that sync this Secret.
	users map[string]*user
	// want is the newest content a volume asked for and this node has not
	// written yet (nil once written: then only the hash in written stays);
	// inflight is the content a write is sending. Both are released (wiped,
	// and given back to the node budget) once nothing refers to them.
	want, inflight *desired
	provider       string
	// What the API server last said: the Secret's uid (empty: unknown),
	// its owners, and the hash of the content this node last wrote.
	uid     types.UID
	owners  map[types.UID]bool
	written [32]byte

	running  bool
	waiters  []chan error
	failures int
	retry    *time.Timer
}

type user struct {
	pod provider.Pod
	// owner is the owner the Secret gets for this volume: its pod or the
	// pod's controller.
	owner metav1.OwnerReference
	// lastEvent is the message last posted on the pod for this Secret, so a
	// failure that repeats on every retry is posted once.
	lastEvent string
}

// New returns a Syncer.
func New(opts Options) (*Syncer, error) {
	if opts.Client == nil {
		return nil, errors.New("secretsync: Client is required")
	}
	m, err := newMetrics(opts.Registerer)
	if err != nil {
		return nil, fmt.Errorf("secretsync: registering metrics: %w", err)
	}
	s := &Syncer{
		client: opts.Client, events: opts.Events, log: opts.Logger, metrics: m,
		wait: opts.Wait, timeout: opts.Timeout, minBackoff: opts.MinBackoff, maxBackoff: opts.MaxBackoff,
		fieldManager: opts.FieldManager, budget: opts.Budget, maxClass: opts.MaxClassBytes,
		inflight: semaphore.NewWeighted(MaxInflightBytes),
		secrets:  map[key]*entry{}, vols: map[string][]key{}, volOwner: map[string]volOwner{},
		owner: opts.Owner, pods: opts.Pods,
	}
	switch s.owner {
	case "":
		s.owner = OwnerController
	case OwnerController, OwnerPod:
	default:
		return nil, fmt.Errorf("secretsync: unknown owner mode %q", s.owner)
	}
	if s.owner == OwnerController && s.pods == nil {
		pg, ok := opts.Client.(kubecore.PodsGetter)
		if !ok {
			return nil, errors.New("secretsync: Pods is required to make the pods' controllers owners")
		}
		s.pods = pg
	}
	if s.maxClass == 0 {
		s.maxClass = DefaultMaxClassBytes
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.wait <= 0 {
		s.wait = 10 * time.Second
	}
	if s.timeout <= 0 {
		s.timeout = 30 * time.Second
	}
	if s.minBackoff <= 0 {
		s.minBackoff = time.Second
	}
	if s.maxBackoff < s.minBackoff {
		s.maxBackoff = max(s.minBackoff, 5*time.Minute)
	}
	if s.fieldManager == "" {
		s.fieldManager = "secretfs"
	}
	return s, nil
}

// Changed syncs the Secrets of v's class from v's files and waits (at most
// Options.Wait, or until ctx ends) until each is written. Failures are
// posted on the pod and retried in the background; Changed never fails the
// caller's operation.
func (s *Syncer) Changed(ctx context.Context, v hook.Volume) {
	var objs []class.SecretObject
	if v.Class != nil {
		objs = v.Class.SecretObjects
	}
	if len(objs) == 0 {
		s.Gone(v)
		return
	}
	if v.Pod.Namespace == "" || v.Pod.Name == "" || v.Pod.UID == "" {
		s.warn(v.Pod, ReasonFailed, "Not syncing spec.secretObjects: the driver does not know the pod's name and uid (the CSIDriver needs podInfoOnMount: true)")
		return
	}
	where := fmt.Sprintf("class %q in namespace %q", v.Class.Name, v.Pod.Namespace)
	ds, errs := buildWith(objs, v.Files, limits{maxClassBytes: max(s.maxClass, 0), budget: s.budget, where: where})
	for _, err := range errs {
		reason, result := ReasonFailed, "invalid"
		if be, ok := err.(*buildError); ok && be.refused {
			reason, result = ReasonRefused, "refused"
		}
		s.metrics.results.WithLabelValues(result).Inc()
		s.warn(v.Pod, reason, fmt.Sprintf("Not syncing a Secret of SecretProviderClass %q: %v", v.Class.Name, err))
	}
	keys := make([]key, len(ds))
	for i, d := range ds {
		keys[i] = key{v.Pod.Namespace, d.name}
	}
	s.use(v.ID, keys)
	var owner metav1.OwnerReference
	if len(ds) > 0 {
		owner = s.ownerOf(ctx, v)
	}
	var waits []<-chan error
	for i, d := range ds {
		if ch := s.submit(keys[i], d, v, owner); ch != nil {
			waits = append(waits, ch)
		}
	}
	if len(waits) == 0 {
		return
	}
	timer := time.NewTimer(s.wait)
	defer timer.Stop()
	for _, ch := range waits {
		select {
		case <-ch: // failures are posted by the writer, for every pod it concerns
		case <-ctx.Done():
			return
		case <-timer.C:
			s.log.Warn("Secret sync still in progress; the publish returns without waiting for it", "namespace", v.Pod.Namespace, "pod", v.Pod.Name)
			return
		}
	}
}

// Gone forgets v: the Secrets it synced stay until the garbage collector
// removes them with the last pod that owns them.
func (s *Syncer) Gone(v hook.Volume) {
	s.use(v.ID, nil)
}

// Close stops retries. Writes in flight finish.
func (s *Syncer) Close() {
	s.mu.Lock()
	s.closed = true
	for k, e := range s.secrets {
		s.dropLocked(k, e)
	}
	s.mu.Unlock()
	s.running.Wait()
}

// use records that volume id syncs exactly keys now, and drops Secrets no
// volume on this node syncs any longer.
func (s *Syncer) use(id string, keys []key) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, k := range s.vols[id] {
		if slices.Contains(keys, k) {
			continue
		}
		if e := s.secrets[k]; e != nil {
			delete(e.users, id)
			if len(e.users) == 0 {
				s.dropLocked(k, e)
			}
		}
	}
	if len(keys) == 0 {
		delete(s.vols, id)
		delete(s.volOwner, id)
	} else {
		s.vols[id] = keys
	}
}

// dropLocked forgets a Secret and wipes its content; a write in flight
// finishes and then sees the entry is gone.
func (s *Syncer) dropLocked(k key, e *entry) {
	if s.secrets[k] == e {
		delete(s.secrets, k)
	}
	if e.retry != nil {
		e.retry.Stop()
		e.retry = nil
	}
	if e.want != e.inflight {
		e.want.release()
	}
	e.want = nil
	for _, ch := range e.waiters {
		ch <- nil
	}
	e.waiters = nil
}

// submit asks for d to be written on behalf of v, with owner among the
// Secret's owners. It returns nil when the Secret already holds d with
// owner among its owners, else a channel that receives the outcome of the
// write that includes this request.
func (s *Syncer) submit(k key, d *desired, v hook.Volume, owner metav1.OwnerReference) <-chan error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		d.release()
		return nil
	}
	e := s.secrets[k]
	if e == nil {
		e = &entry{key: k, users: map[string]*user{}, owners: map[types.UID]bool{}}
		s.secrets[k] = e
	}
	if u := e.users[v.ID]; u == nil {
		e.users[v.ID] = &user{pod: v.Pod, owner: owner}
	} else {
		u.pod, u.owner = v.Pod, owner
	}
	e.provider = v.Provider
	if !e.running && e.retry == nil && e.uid != "" && e.written == d.hash && e.owners[owner.UID] {
		// Written already (e.want is nil): the hash is all that is kept.
		d.release()
		s.metrics.results.WithLabelValues("unchanged").Inc()
		return nil
	}
	if e.want != e.inflight {
		e.want.release()
	}
	e.want = d
	ch := make(chan error, 1)
	e.waiters = append(e.waiters, ch)
	if e.retry != nil {
		// New content or a new pod: try now rather than at the end of the
		// back-off, so a first publish gets its Secret if the API is back.
		e.retry.Stop()
		e.retry = nil
	}
	if !e.running {
		s.startLocked(e)
	}
	return ch
}

func (s *Syncer) warn(pod provider.Pod, reason, msg string) {
	if s.events != nil {
		s.events.Warning(pod, reason, msg)
	}
}
