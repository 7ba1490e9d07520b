package driver

import (
	"context"
	"sync"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/secretfs/secretfs/provider"
)

// Refreshes on request, without waiting for the rotation interval: a
// change of a class's secretfs.dev/refresh-requested annotation (every
// node's driver sees it through its class informer), or `secretfs refresh`
// on the node (through the root-only status socket).
//
// Both are bounded the same way. Requests for one class or one pod
// coalesce: while one waits, another adds nothing; while one runs, any
// number of others make one more run, by the same goroutine (so a backend
// that hangs does not collect a goroutine per request). One class or pod
// is refreshed at most once per --min-rotation-interval (the fastest a
// class may rotate by itself); a request inside that gap waits for its end.
// At most maxPendingRefreshes classes and pods wait or run at once, and at
// most maxPendingPerNamespace of one namespace (so a tenant with many
// classes mounted here, or a backend that hangs, cannot hold every slot and
// get other tenants' requests refused): a request beyond either is refused. A refresh is the
// ordinary one (apply, under the volume lock, with the rotation timeout),
// after the node cache has been told its answer predates the request.

// maxPendingRefreshes bounds the classes and pods waiting for or running a
// requested refresh on one node (one goroutine each).
const maxPendingRefreshes = 1024

// maxPendingPerNamespace is one namespace's share of maxPendingRefreshes.
const maxPendingPerNamespace = maxPendingRefreshes / 8

// Why a refresh was requested (shown by `secretfs status`).
const (
	RequestedByAnnotation = "class annotation"
	RequestedByCommand    = "secretfs refresh"
)

// RefreshTarget selects the mounted volumes a requested refresh is for:
// those of one class, or of one pod, in one namespace.
type RefreshTarget struct {
	Namespace string `json:"namespace"`
	Class     string `json:"class,omitempty"`
	Pod       string `json:"pod,omitempty"`
}

func (t RefreshTarget) key() string {
	if t.Class != "" {
		return "class/" + t.Namespace + "/" + t.Class
	}
	return "pod/" + t.Namespace + "/" + t.Pod
}

func (t RefreshTarget) matches(v *volume) bool {
	if v.pod.Namespace != t.Namespace {
		return false
	}
	if t.Class != "" {
		return v.class == t.Class
	}
	return v.pod.Name == t.Pod
}

func (t RefreshTarget) check() error {
	if (t.Class == "") == (t.Pod == "") {
		return provider.InvalidArgument("a refresh names a class or a pod, exactly one of them")
	}
	if t.Namespace == "" || checkName(t.Namespace, 63, false) != nil {
		return provider.InvalidArgument("namespace %.80q is not a valid namespace", t.Namespace)
	}
	if err := checkName(t.Class+t.Pod, 253, true); err != nil {
		return provider.InvalidArgument("%.80q is not a valid object name: %v", t.Class+t.Pod, err)
	}
	return nil
}

// refreshRequests is what the driver knows of requested refreshes.
type refreshRequests struct {
	mu      sync.Mutex
	pending map[string]*pendingRefresh // by RefreshTarget.key: waiting or running
	perNS   map[string]int             // by namespace: how many of pending
	last    map[string]time.Time       // by key: when the last one started
}

// pendingRefresh is one class's or pod's refresh, waiting or running, and
// its goroutine's state.
type pendingRefresh struct {
	running bool   // refreshing its volumes
	again   bool   // requested while running: run once more after it
	by      string // who asked for the next run
}

// RequestRefresh schedules a refresh of the volumes t selects on this node
// and returns how many it selects now (0 is not an error: a class with no
// pod here). by says who asked (RequestedByAnnotation, RequestedByCommand).
func (d *Driver) RequestRefresh(t RefreshTarget, by string) (int, error) {
	n, _, err := d.requestRefresh(t, by)
	return n, err
}

// requestRefresh is RequestRefresh, and says whether it scheduled a refresh
// (false: none selected, or folded into one waiting or running).
func (d *Driver) requestRefresh(t RefreshTarget, by string) (n int, scheduled bool, err error) {
	if err := t.check(); err != nil {
		return 0, false, err
	}
	n = len(d.selectVolumes(t))
	if n == 0 {
		return 0, false, nil
	}
	key, now := t.key(), d.now()
	r := &d.requested
	r.mu.Lock()
	defer r.mu.Unlock()
	if p, ok := r.pending[key]; ok {
		// Folded into the one waiting; one running may have read its
		// volumes' content before this request, so it runs once more
		// (its own goroutine, after the gap), however many ask meanwhile.
		if p.running {
			p.again, p.by = true, by
		}
		return n, false, nil
	}
	if len(r.pending) >= maxPendingRefreshes {
		return 0, false, provider.Errorf(codes.ResourceExhausted, "%d classes and pods are waiting for or running a requested refresh on this node already; try again later", len(r.pending))
	}
	if r.pending == nil {
		r.pending, r.perNS, r.last = map[string]*pendingRefresh{}, map[string]int{}, map[string]time.Time{}
	}
	if len(r.last) >= maxPendingRefreshes {
		for k, at := range r.last {
			if _, ok := r.pending[k]; !ok && now.Sub(at) >= d.minInterval {
				delete(r.last, k)
			}
		}
	}
	wait := max(r.last[key].Add(d.minInterval).Sub(now), 0)
	if r.perNS[t.Namespace] >= maxPendingPerNamespace {
		return 0, false, provider.Errorf(codes.ResourceExhausted, "%d classes and pods of namespace %q are waiting for or running a requested refresh on this node already (each is refreshed at most once per %v); try again later", r.perNS[t.Namespace], t.Namespace, d.minInterval)
	}
	p := &pendingRefresh{by: by}
	r.pending[key] = p
	r.perNS[t.Namespace]++
	go d.runRequested(key, t, p, wait)
	return n, true, nil
}

// runRequested refreshes t's volumes once wait has passed, and again
// (after the gap) while requests arrive during a run. It is the only
// goroutine for key until it ends; it ends, and frees key's slot, under the
// same lock as it decides that no request arrived during its last run.
func (d *Driver) runRequested(key string, t RefreshTarget, p *pendingRefresh, wait time.Duration) {
	r := &d.requested
	for {
		timer := time.NewTimer(wait)
		select {
		case <-d.done:
			timer.Stop()
			r.mu.Lock()
			r.end(key, t.Namespace)
			r.mu.Unlock()
			return
		case <-timer.C:
		}
		at := d.now()
		r.mu.Lock()
		p.running = true
		by := p.by
		r.last[key] = at
		r.mu.Unlock()
		stopped := !d.refreshSelected(t, at, by)
		r.mu.Lock()
		if stopped || !p.again {
			r.end(key, t.Namespace)
			r.mu.Unlock()
			return
		}
		wait = max(r.last[key].Add(d.minInterval).Sub(d.now()), 0)
		p.running, p.again = false, false
		r.mu.Unlock()
	}
}

// end frees key's slot (of namespace ns): the caller holds mu.
func (r *refreshRequests) end(key, ns string) {
	delete(r.pending, key)
	if r.perNS[ns]--; r.perNS[ns] <= 0 {
		delete(r.perNS, ns)
	}
}

// refreshSelected refreshes the volumes t selects, one at a time under
// its lock, for a request made at at; false when the driver stopped.
func (d *Driver) refreshSelected(t RefreshTarget, at time.Time, by string) bool {
	for _, v := range d.selectVolumes(t) {
		if !d.locks.Lock(v.id, d.done) {
			return false
		}
		if d.volume(v.id) == v && v.req != nil {
			if d.cache != nil {
				d.cache.Invalidate(v.id, at)
			}
			v.requestedAt, v.requestedBy = at, by
			ctx, cancel := context.WithTimeout(context.Background(), d.rotation.Timeout)
			d.locks.SetCancel(v.id, cancel)
			d.refresh(ctx, v, "requested")
			cancel()
		}
		d.locks.Unlock(v.id)
	}
	return true
}

// selectVolumes returns the volumes in the table t selects.
func (d *Driver) selectVolumes(t RefreshTarget) []*volume {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []*volume
	for _, v := range d.vols {
		if t.matches(v) {
			out = append(out, v)
		}
	}
	return out
}

// classRefreshRequested is told by the class source that a class's
// refresh-requested annotation changed. It logs at Info only when it
// schedules a refresh: a tenant changing the annotation in a loop makes
// one line per refresh, not one per change.
func (d *Driver) classRefreshRequested(namespace, name string) {
	n, scheduled, err := d.requestRefresh(RefreshTarget{Namespace: namespace, Class: name}, RequestedByAnnotation)
	switch {
	case err != nil:
		d.log.Warn("refresh requested by class annotation not scheduled", "namespace", namespace, "class", name, "err", err.Error())
	case scheduled:
		d.log.Info("refresh requested by class annotation", "namespace", namespace, "class", name, "volumes", n)
	case n > 0:
		d.log.Debug("refresh requested by class annotation folded into the one waiting", "namespace", namespace, "class", name)
	}
}

// RefreshRequested is a class.Source that reports changes of a class's
// refresh-requested annotation (the API source does).
type RefreshRequested interface {
	OnRefreshRequested(f func(namespace, name string)) error
}
