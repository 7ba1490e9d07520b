package budget

import (
	"context"
	"errors"
	"slices"
	"sync"

	"google.golang.org/grpc/codes"

	"github.com/secretfs/secretfs/provider"
)

// turns lets at most slots computations over tenant input (a backend's
// decoding of the class's parameters, key paths, templates) run at once on the node, and gives a free slot to the tenants
// waiting in turn, oldest waiter of each first. A computation is bounded
// (--max-steps: about a tenth of a CPU-second at the default), but nothing
// bounds how many run at once: without turns, a tenant's hundred volumes
// computing together take every thread that runs Go code in a round-robin
// of 10 ms slices, and kubelet's health probe and every other tenant's
// calls wait behind them for seconds. With them, the rest of the driver
// shares the CPU with at most slots computations, and another tenant's
// computation waits for at most one of each tenant ahead of it.
type turns struct {
	slots   int
	mu      sync.Mutex
	free    int
	waiting map[string][]chan struct{} // by tenant, oldest first
	order   []string                   // tenants with waiters, next first
}

func newTurns(slots int) *turns {
	slots = max(slots, 1)
	return &turns{slots: slots, free: slots, waiting: map[string][]chan struct{}{}}
}

// enter waits for a slot for tenant until ctx ends.
func (t *turns) enter(ctx context.Context, tenant string) error {
	t.mu.Lock()
	if t.free > 0 && len(t.order) == 0 {
		t.free--
		t.mu.Unlock()
		return nil
	}
	ch := make(chan struct{})
	if len(t.waiting[tenant]) == 0 {
		t.order = append(t.order, tenant)
	}
	t.waiting[tenant] = append(t.waiting[tenant], ch)
	t.mu.Unlock()

	select {
	case <-ch:
		return nil
	case <-ctx.Done():
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	select {
	case <-ch: // granted as ctx ended: pass it on
		t.passLocked()
	default:
		q := slices.DeleteFunc(t.waiting[tenant], func(c chan struct{}) bool { return c == ch })
		if len(q) > 0 {
			t.waiting[tenant] = q
		} else {
			delete(t.waiting, tenant)
			t.order = slices.DeleteFunc(t.order, func(s string) bool { return s == tenant })
		}
	}
	if errors.Is(ctx.Err(), context.Canceled) {
		return provider.Errorf(codes.Canceled, "waiting to compute the volume's content was cancelled: the volume is being unpublished or the driver is stopping")
	}
	return provider.Errorf(codes.DeadlineExceeded, "waiting to compute the volume's content ran past the request's deadline: this node is busy with other volumes' computations over their classes (parameters, key paths, templates; at most %d at once)", t.slots)
}

// leave gives the slot to the next tenant waiting, or frees it.
func (t *turns) leave() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.passLocked()
}

func (t *turns) passLocked() {
	if len(t.order) == 0 {
		t.free++
		return
	}
	tenant := t.order[0]
	t.order = t.order[1:]
	q := t.waiting[tenant]
	ch := q[0]
	if q = q[1:]; len(q) > 0 {
		t.waiting[tenant] = q
		t.order = append(t.order, tenant)
	} else {
		delete(t.waiting, tenant)
	}
	close(ch)
}
