package provider

import (
	"sync/atomic"

	"google.golang.org/grpc/codes"
)

// InFlightFlag is the driver flag that sets an InFlight's limit; errors
// name it.
const InFlightFlag = "--fetch-bytes"

// InFlight bounds the bytes that all fetches of a process read from
// backends and hold at once. Each volume's answers are bounded by its own
// wire allowance (Limits.WireBytes, 17 MiB by default), but a tenant can
// start many pods at once, each reading that much: without a bound of the
// node's own, a dozen such publishes together outgrow the driver's memory
// limit before any of them fails. A nil InFlight bounds nothing.
type InFlight struct {
	limit int64
	used  atomic.Int64
}

// NewInFlight returns a bound of limit bytes; nil when limit <= 0.
func NewInFlight(limit int64) *InFlight {
	if limit <= 0 {
		return nil
	}
	return &InFlight{limit: limit}
}

// Used returns the bytes held by fetches now.
func (f *InFlight) Used() int64 {
	if f == nil {
		return 0
	}
	return f.used.Load()
}

// Flight starts the account of one fetch (Request.Flight). The caller
// calls Done when the fetch's answers are no longer held.
func (f *InFlight) Flight() *Flight {
	if f == nil {
		return nil
	}
	return &Flight{f: f}
}

// Flight is one fetch's share of an InFlight. Safe for concurrent use by
// the goroutines of the fetch; the methods of a nil Flight do nothing.
type Flight struct {
	f    *InFlight
	held atomic.Int64
}

// FreeBytes is what each fetch reads without charging the bound: a small
// class's answers (a few KiB) never wait for a tenant's large fetches that
// fill it. It costs at most FreeBytes per fetch in progress, and kubelet
// runs one publish per pod.
const FreeBytes = 64 << 10

// Charge counts n more bytes read; the fetch's first FreeBytes are free.
// Over the bound it fails Unavailable: the node is busy with other
// fetches, and kubelet's retry of the publish (or the next refresh) finds
// room once they are done.
func (l *Flight) Charge(n int64) error {
	if l == nil || n <= 0 {
		return nil
	}
	after := l.held.Add(n)
	charged := max(after-FreeBytes, 0) - max(after-n-FreeBytes, 0)
	if charged == 0 {
		return nil
	}
	if used := l.f.used.Add(charged); used > l.f.limit {
		l.f.used.Add(-charged)
		l.held.Add(-n)
		return Errorf(codes.Unavailable,
			"this node's fetches in flight would hold more than %d bytes of backend answers at once (driver flag %s, "+
				"by default a quarter of the driver's memory headroom): retried; if it persists, the node admin can raise "+
				"the driver's memory limit, and tenants can mount fewer or smaller objects per volume", l.f.limit, InFlightFlag)
	}
	return nil
}

// Done gives back what the fetch charged.
func (l *Flight) Done() {
	if l == nil {
		return
	}
	l.f.used.Add(-max(l.held.Swap(0)-FreeBytes, 0))
}
