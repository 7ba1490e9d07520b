package budget

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"

	"github.com/secretfs/secretfs/provider"
)

// Flags that set what one volume's computation may spend; errors name them.
const (
	BytesFlag = "--tmpfs-size"
	StepsFlag = "--max-steps"
)

// DefaultMaxSteps is the default of StepsFlag.
const DefaultMaxSteps = 100_000

// Work is what one computation over tenant input may spend: key paths
// applied to a volume's values, its templates rendered, the content of its
// synced Secrets built. It is CEL's answer to tenant-written expressions
// (a cost charged before the work, not measured after it) applied to every
// such computation of one publish or refresh:
//
//   - bytes: every allocation the computation makes that grows with its
//     input is charged with an upper bound *before* it is made, against the
//     volume's limit (BytesFlag) and, together with every other volume's
//     computation and files, against the node budget (so that concurrent
//     publishes cannot add up past the driver's memory limit);
//   - steps: every action whose time grows with a tenant's input (a
//     template call or loop iteration, a comparison or copy per KiB) is
//     charged against StepsFlag;
//   - time: every charge checks the request's context, so kubelet's
//     deadline, an unpublish of the volume, or the driver's shutdown stops
//     the computation at its next step.
//
// Charged bytes are never given back until Done: a computation that frees
// what it allocated still counts it, which overcharges and never
// undercharges. A Work is used by one goroutine at a time.
type Work struct {
	ctx      context.Context
	node     *Budget
	key      string
	tenant   string
	bytes    int64 // charged
	maxBytes int64
	steps    int64 // left
	maxSteps int64
}

// Work starts the budget of one computation for volume id of tenant (its
// namespace): at most maxBytes bytes and maxSteps steps, until ctx ends.
// A nil Budget counts against the per-volume limits only. Call Done when
// the computation's allocations are no longer held.
func (b *Budget) Work(ctx context.Context, id, tenant string, maxBytes, maxSteps int64) *Work {
	return &Work{ctx: ctx, node: b, key: id + "\x00work", tenant: tenant, maxBytes: maxBytes, steps: maxSteps, maxSteps: maxSteps}
}

// Turn waits until the computation may run on the node, in turn with the
// other tenants' (see turns), and returns what ends its turn. Wrap each
// stretch of computation in one turn, and never wait for anything else
// during it. A nil Work or Budget gives the turn at once.
func (w *Work) Turn() (end func(), err error) {
	if w == nil || w.node == nil || w.node.turns == nil {
		return func() {}, nil
	}
	if err := w.alive(); err != nil {
		return nil, err
	}
	if err := w.node.turns.enter(w.ctx, w.tenant); err != nil {
		return nil, err
	}
	return w.node.turns.leave, nil
}

// Charge counts n more bytes before they are allocated. Over the volume's
// limit or the node budget it fails ResourceExhausted; after the request's
// context ended, DeadlineExceeded or Canceled.
func (w *Work) Charge(n int64) error {
	if err := w.alive(); err != nil {
		return err
	}
	if n < 0 || w.bytes+n > w.maxBytes || w.bytes+n < w.bytes {
		return provider.Errorf(codes.ResourceExhausted, "computing the volume's content needs more than its limit of %d bytes (driver flag %s)", w.maxBytes, BytesFlag)
	}
	if w.node != nil {
		if err := w.node.Reserve(w.key, w.bytes+n); err != nil {
			return err
		}
	}
	w.bytes += n
	return nil
}

// Step counts n steps of work before they are taken, and checks the
// request's context.
func (w *Work) Step(n int64) error {
	if err := w.alive(); err != nil {
		return err
	}
	w.steps -= n
	if w.steps < 0 || n < 0 {
		w.steps = -1
		return provider.Errorf(codes.ResourceExhausted, "computing the volume's content takes more than %d steps (driver flag %s)", w.maxSteps, StepsFlag)
	}
	return nil
}

// StepBytes charges the steps of an operation that goes over n bytes of
// input (a comparison, a copy, an escape): one step per started KiB.
func (w *Work) StepBytes(n int) error {
	return w.Step(1 + int64(n)>>10)
}

// StepsTaken returns the steps charged so far.
func (w *Work) StepsTaken() int64 { return w.maxSteps - max(w.steps, 0) }

// Left returns the bytes that may still be charged for this volume.
func (w *Work) Left() int64 { return w.maxBytes - w.bytes }

// Done releases what the computation reserved in the node budget.
func (w *Work) Done() {
	if w.node != nil && w.bytes > 0 {
		w.node.Release(w.key)
	}
	w.bytes = 0
}

func (w *Work) alive() error {
	if err := w.ctx.Err(); err != nil {
		if errors.Is(err, context.Canceled) {
			return provider.Errorf(codes.Canceled, "computing the volume's content was cancelled: the volume is being unpublished or the driver is stopping")
		}
		return provider.Errorf(codes.DeadlineExceeded, "computing the volume's content ran past the request's deadline")
	}
	return nil
}
