package provider

import (
	"context"
	"io"
	"sync/atomic"

	"google.golang.org/grpc/codes"
)

// Limits bound what one Fetch may allocate for one volume. A backend
// enforces them while it reads, before it allocates (a generated value
// before generating it, an HTTP body as it streams in), so a class that
// names too much fails ResourceExhausted instead of growing the driver's
// memory: a tenant who can write a class is an attacker.
type Limits struct {
	// MaxBytes bounds the content of all files of the volume together.
	MaxBytes int64
	// MaxFiles bounds the number of files.
	MaxFiles int
}

// Defaults for a Request whose Limits are zero: the driver's per-volume
// defaults (8 MiB of content, 4,096 files).
const (
	DefaultMaxBytes = 8 << 20
	DefaultMaxFiles = 4096
)

// WireBytes is how much a backend may read from the network for one fetch
// with MaxBytes of content: the encoded form is larger than the content
// (base64 in JSON is 4/3, a Secret read for one key brings its other keys).
// Twice the content plus 1 MiB covers every encoding a backend uses.
func (l Limits) WireBytes() int64 { return 2*l.MaxBytes + 1<<20 }

func (l Limits) orDefault() Limits {
	if l.MaxBytes <= 0 {
		l.MaxBytes = DefaultMaxBytes
	}
	if l.MaxFiles <= 0 {
		l.MaxFiles = DefaultMaxFiles
	}
	return l
}

// Budget counts what one fetch has taken against its Limits. It is safe for
// concurrent use by the goroutines of one fetch. Errors are ResourceExhausted
// and say which limit, never a value.
type Budget struct {
	limits Limits
	bytes  atomic.Int64
	files  atomic.Int64
	wire   atomic.Int64
	flight *Flight // the node's bound of all fetches' answers (Request.Flight)
}

// NewBudget returns the budget of one fetch of req (the defaults when req
// sets no limits).
func NewBudget(req *Request) *Budget {
	var l Limits
	var f *Flight
	if req != nil {
		l, f = req.Limits, req.Flight
	}
	return &Budget{limits: l.orDefault(), flight: f}
}

// Limits returns the limits in force.
func (b *Budget) Limits() Limits { return b.limits }

// File charges one file of n content bytes. Call it before allocating the
// content when the size is known in advance.
func (b *Budget) File(n int64) error {
	if f := b.files.Add(1); f > int64(b.limits.MaxFiles) {
		return Errorf(codes.ResourceExhausted,
			"the objects yield more than %d files, the per-volume limit (driver flag --max-files): split the class", b.limits.MaxFiles)
	}
	if total := b.bytes.Add(n); total > b.limits.MaxBytes {
		return Errorf(codes.ResourceExhausted,
			"the objects hold more than %d bytes (%d read so far), the per-volume limit (driver flag --tmpfs-size): split the class or mount fewer objects", b.limits.MaxBytes, total)
	}
	return nil
}

// Wire charges n bytes read from a backend in encoded form, to the
// volume's allowance and then to the node's bound of all fetches
// (Request.Flight).
func (b *Budget) Wire(n int64) error {
	if total := b.wire.Add(n); total > b.limits.WireBytes() {
		return Errorf(codes.ResourceExhausted,
			"the backend's answers for this volume exceed %d bytes, twice the per-volume limit of %d bytes (driver flag --tmpfs-size) plus 1 MiB: split the class or mount fewer objects", b.limits.WireBytes(), b.limits.MaxBytes)
	}
	return b.flight.Charge(n)
}

// Reader returns body charging every byte read to the wire allowance; a
// read past it fails with the ResourceExhausted error, so a client that
// reads a whole response into memory stops at the allowance.
func (b *Budget) Reader(body io.ReadCloser) io.ReadCloser { return &budgetReader{body: body, b: b} }

type budgetReader struct {
	body io.ReadCloser
	b    *Budget
	err  error
}

func (r *budgetReader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	n, err := r.body.Read(p)
	if n > 0 {
		if berr := r.b.Wire(int64(n)); berr != nil {
			r.err = berr
			return 0, berr
		}
	}
	return n, err
}

func (r *budgetReader) Close() error { return r.body.Close() }

type budgetKey struct{}

// WithBudget returns ctx carrying b, for transports that see only the
// request context (an HTTP client's response bodies).
func WithBudget(ctx context.Context, b *Budget) context.Context {
	return context.WithValue(ctx, budgetKey{}, b)
}

// BudgetFrom returns the budget in ctx, or nil.
func BudgetFrom(ctx context.Context) *Budget {
	b, _ := ctx.Value(budgetKey{}).(*Budget)
	return b
}
