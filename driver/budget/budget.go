// Package budget is the node-wide byte budget of the driver's volumes.
//
// The kernel charges the pages of a tmpfs to the memory cgroup of the
// process that wrote them: every volume's files count against the driver
// container's memory limit, and keep counting after the driver dies (a
// restarted driver starts with the charge of every mounted volume). Without
// a budget, ten full volumes OOM-kill a driver limited to 128 MiB, and the
// next one in a crash loop. So before a volume's files are written, the
// driver reserves their bytes here and refuses the volume (ResourceExhausted,
// naming the flag) when the node's volumes together would exceed the budget.
//
// The default budget is derived from the container's memory limit, read
// from its cgroup (v1 memory.limit_in_bytes, v2 memory.max): what remains
// after Headroom for the process itself (heap, in-flight fetches, the Go
// runtime).
package budget

import (
	"fmt"
	"runtime"
	"sync"

	"google.golang.org/grpc/codes"

	"github.com/secretfs/secretfs/provider"
)

// Flag is the driver flag that sets the budget; errors name it.
const Flag = "--node-budget"

// Budget counts the bytes the node's volumes hold, and takes the turns of
// their computations over tenant input (Work.Turn). Safe for concurrent use.
type Budget struct {
	limit int64

	mu      sync.Mutex
	used    int64
	held    map[string]int64 // by volume id
	observe func(used int64) // see Observe

	turns *turns // of the computations over tenant input
}

// Observe has f told the bytes in use after every change, under the
// budget's lock (f must not block or call the Budget): for a gauge that
// stays true whoever reserves, the volumes or the Secret sync.
func (b *Budget) Observe(f func(used int64)) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.observe = f
	if f != nil {
		f(b.used)
	}
}

// changedLocked tells the observer. The caller holds b.mu.
func (b *Budget) changedLocked() {
	if b.observe != nil {
		b.observe(b.used)
	}
}

// New returns a budget of limit bytes.
func New(limit int64) *Budget {
	return &Budget{limit: limit, held: map[string]int64{}, turns: newTurns(runtime.GOMAXPROCS(0))}
}

// Limit returns the budget in bytes.
func (b *Budget) Limit() int64 { return b.limit }

// Used returns the bytes reserved by all volumes.
func (b *Budget) Used() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used
}

// Held returns what volume id has reserved.
func (b *Budget) Held(id string) int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.held[id]
}

// Reserve makes volume id hold n bytes, growing or shrinking what it held.
// Growing past the limit fails with ResourceExhausted and leaves the old
// reservation in place; shrinking always succeeds.
func (b *Budget) Reserve(id string, n int64) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	old := b.held[id]
	if n > old && b.used-old+n > b.limit {
		return provider.Errorf(codes.ResourceExhausted,
			"this node's secret volumes would hold %d bytes with this one (%d bytes), more than the node budget of %d bytes "+
				"(driver flag %s, by default derived from the driver container's memory limit): the pod can start on a node "+
				"with fewer secret volumes; the node admin can raise the driver's memory limit, or split or shrink large classes",
			b.used-old+n, n, b.limit, Flag)
	}
	b.used += n - old
	if n == 0 {
		delete(b.held, id)
	} else {
		b.held[id] = n
	}
	b.changedLocked()
	return nil
}

// A Charge makes room in the budget for one write of a volume: need bytes
// for its new files, beside the kept bytes of its current files. The atomic
// writer keeps the generation a write replaces until the next write (a
// reader that resolved it just before the swap still finds its files), so a
// volume holds its current files and, after a change, the ones they
// replaced. The methods of a nil Charge (from a nil Budget) do nothing.
type Charge struct {
	b               *Budget
	id, where       string // where names the volume's class in errors
	old, kept, need int64
}

// Charge starts a write of volume id whose files take need bytes beside the
// kept bytes of its current files (0 for a first write); where names the
// volume (its class and namespace) in the error.
func (b *Budget) Charge(id string, need, kept int64, where string) *Charge {
	if b == nil {
		return nil
	}
	return &Charge{b: b, id: id, where: where, old: b.Held(id), kept: kept, need: need}
}

// Reserve holds the current and the new files side by side (what the atomic
// writer's Grow asks for, once it removed the generation the last write
// kept), or fails with ResourceExhausted. Calling it again holds the same.
func (c *Charge) Reserve() error {
	if c == nil {
		return nil
	}
	if err := c.b.Reserve(c.id, c.kept+c.need); err != nil {
		return provider.Errorf(codes.ResourceExhausted, "%s: %s", c.where, err.Error())
	}
	return nil
}

// Written records that the new files were written: the volume holds them
// and the files they replaced, which stay until the next write.
func (c *Charge) Written() {
	if c != nil {
		_ = c.b.Reserve(c.id, c.kept+c.need) // what Reserve held: never fails
	}
}

// Unchanged records that the content was the same: the volume holds its
// current files only (the write removed the generation the last one kept).
func (c *Charge) Unchanged() {
	if c != nil {
		_ = c.b.Reserve(c.id, c.kept) // shrinks: never fails
	}
}

// Failed records that the write did not happen: the volume holds what it
// held before.
func (c *Charge) Failed() {
	if c != nil {
		_ = c.b.Reserve(c.id, c.old)
	}
}

// Hold records that volume id holds n bytes, whatever the limit: a volume
// found mounted after a restart holds its pages already.
func (b *Budget) Hold(id string, n int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.used += n - b.held[id]
	b.held[id] = n
	b.changedLocked()
}

// Release drops what volume id holds.
func (b *Budget) Release(id string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.used -= b.held[id]
	delete(b.held, id)
	b.changedLocked()
}

// Headroom is what the driver process keeps for itself out of its
// container's memory limit: at least 64 MiB (heap, a few in-flight fetches
// of full volumes, the Go runtime), or a quarter of a larger limit.
func Headroom(memLimit int64) int64 { return max(64<<20, memLimit/4) }

// ForMemoryLimit derives the budget from a container memory limit.
func ForMemoryLimit(memLimit int64) (int64, error) {
	b := memLimit - Headroom(memLimit)
	if b <= 0 {
		return 0, fmt.Errorf("the driver's memory limit of %d bytes leaves nothing for volumes after %d bytes for the driver itself: raise the memory limit, or set %s", memLimit, Headroom(memLimit), Flag)
	}
	return b, nil
}
