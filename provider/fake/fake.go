package fake

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/grpc/codes"

	"github.com/secretfs/secretfs/provider"
)

// Options configure a Fake. The zero value is a working fake without a data
// directory.
type Options struct {
	// DataDir, when set, holds override files <DataDir>/<namespace>/<objectName>.
	// It comes from the driver's --fake-data-dir flag, never from a class.
	DataDir string
	// Now is the clock for rateLimit; time.Now when nil.
	Now func() time.Time
}

// Fake is the in-process fake backend. It is safe for concurrent use.
type Fake struct {
	dataDir string
	now     func() time.Time

	calls   atomic.Int64
	fetches sync.Map // "<namespace>/<objectName>" -> *atomic.Int64
	classes sync.Map // "<namespace>/<class>" -> *classState

	parsed  sync.Map // objects parameter -> []object
	nParsed atomic.Int64
}

// Most nodes see a handful of classes; the bound only stops a stream of
// ever-changing classes from growing memory without limit.
const maxParsed = 512

// classState is the fault-injection state of one class in one namespace.
type classState struct {
	calls atomic.Int64

	mu      sync.Mutex
	limit   float64
	limiter *rate.Limiter
}

var _ provider.Provider = (*Fake)(nil)

// New returns a Fake.
func New(opts Options) *Fake {
	f := &Fake{dataDir: opts.DataDir, now: opts.Now}
	if f.now == nil {
		f.now = time.Now
	}
	return f
}

// Fetch returns all files of the class's objects, or an error and no files.
func (f *Fake) Fetch(ctx context.Context, req *provider.Request) (*provider.Result, error) {
	f.calls.Add(1)
	if req == nil {
		return nil, provider.InvalidArgument("fake backend: no request")
	}
	ns := req.Pod.Namespace
	if !dnsLabel(ns) {
		return nil, provider.InvalidArgument("fake backend: pod namespace %q is not a valid namespace name", provider.Clip(ns, 64))
	}
	end, err := req.TakeTurn()
	if err != nil {
		return nil, err
	}
	cfg, err := parseConfig(req.Parameters, f.parseObjects)
	end()
	if err != nil {
		return nil, err
	}
	if err := f.wait(ctx, cfg.latency); err != nil {
		return nil, err
	}
	if err := f.injectFaults(req, cfg); err != nil {
		return nil, err
	}
	return f.read(req, cfg.objects)
}

// wait sleeps for the injected latency, or until ctx ends.
func (f *Fake) wait(ctx context.Context, d time.Duration) error {
	if err := ctx.Err(); err != nil {
		return contextError(err)
	}
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return contextError(ctx.Err())
	}
}

func contextError(err error) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return provider.DeadlineExceeded("fake backend: request timed out while waiting out the injected latency")
	}
	return provider.Errorf(codes.Canceled, "fake backend: request canceled")
}

// injectFaults applies failFirst, rateLimit and deny, in the order a real
// backend would: an outage first, then throttling, then authorization.
func (f *Fake) injectFaults(req *provider.Request, cfg *config) error {
	ns, class := req.Pod.Namespace, req.Class
	st := f.classState(ns + "/" + class)
	n := st.calls.Add(1)
	if n <= cfg.failFirst {
		return provider.Errorf(cfg.failCode, "fake backend: injected failure %d of %d for class %s in namespace %s (parameter failFirst)", n, cfg.failFirst, class, ns)
	}
	if cfg.rateLimit > 0 && !st.allow(f.now(), cfg.rateLimit) {
		return provider.Unavailable("fake backend: throttled (429): class %s in namespace %s allows %g requests per second (parameter rateLimit); retry later", class, ns, cfg.rateLimit)
	}
	if sa := req.Pod.ServiceAccount; cfg.deny[sa] {
		return provider.PermissionDenied("fake backend: service account %s in namespace %s may not read class %s (parameter deny)", sa, ns, class)
	}
	return nil
}

func (f *Fake) classState(key string) *classState {
	if st, ok := f.classes.Load(key); ok {
		return st.(*classState)
	}
	st, _ := f.classes.LoadOrStore(key, &classState{})
	return st.(*classState)
}

// allow takes one token from the class's bucket. The bucket holds one
// second's worth of requests (at least one), and follows rate changes.
func (st *classState) allow(now time.Time, limit float64) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	burst := int(math.Max(1, math.Ceil(limit)))
	switch {
	case st.limiter == nil:
		st.limiter = rate.NewLimiter(rate.Limit(limit), burst)
	case st.limit != limit:
		st.limiter.SetLimitAt(now, rate.Limit(limit))
		st.limiter.SetBurstAt(now, burst)
	}
	st.limit = limit
	return st.limiter.AllowN(now, 1)
}

// read resolves every object: the data file if present, else the literal
// value, else the generated one. Each file is charged to the request's
// budget before its content is allocated, and, as a backend's answer, to
// the node's bound of answers in flight (provider.Budget.Wire).
func (f *Fake) read(req *provider.Request, objs []object) (*provider.Result, error) {
	ns := req.Pod.Namespace
	dir, err := openNamespace(f.dataDir, ns)
	if err != nil {
		return nil, err
	}
	defer dir.close()

	defMode := req.DefaultMode.Perm()
	if defMode == 0 {
		defMode = provider.DefaultFileMode
	}
	budget := provider.NewBudget(req)
	objs, err = dir.expand(objs, budget.Limits().MaxFiles)
	if err != nil {
		return nil, err
	}
	res := &provider.Result{
		Files:    make([]provider.File, 0, len(objs)),
		Versions: make([]provider.ObjectVersion, 0, len(objs)),
	}
	fail := func(err error) (*provider.Result, error) {
		wipe(res)
		return nil, err
	}
	for _, o := range objs {
		f.countFetch(ns, o.name)
		data, ok, err := dir.read(o.name, budget)
		switch {
		case err != nil:
			return fail(err)
		case ok:
		case o.hasVal:
			if err := chargeAnswer(budget, int64(len(o.value))); err != nil {
				return fail(err)
			}
			data = append([]byte(nil), o.value...) // the caller may wipe it
		case o.gen > 0:
			if err := chargeAnswer(budget, int64(o.gen)); err != nil {
				return fail(err)
			}
			data = generate(ns, o.name, o.version, o.seed, o.gen)
		default:
			return fail(provider.NotFound("fake backend: object %s has no value in namespace %s: set value or generate in the class, or provide a data file", o.name, ns))
		}
		mode := defMode
		if o.modeSet {
			mode = o.mode
		}
		res.Files = append(res.Files, provider.File{Path: o.path, Mode: mode, Contents: data})
		res.Versions = append(res.Versions, provider.ObjectVersion{ID: o.path, Version: contentVersion(ns, o.name, data)})
	}
	return res, nil
}

// wipe zeroes the contents read so far: a failed fetch leaves no copy.
func wipe(res *provider.Result) {
	for _, file := range res.Files {
		clear(file.Contents)
	}
}

func (f *Fake) countFetch(ns, name string) {
	key := ns + "/" + name
	c, ok := f.fetches.Load(key)
	if !ok {
		c, _ = f.fetches.LoadOrStore(key, new(atomic.Int64))
	}
	c.(*atomic.Int64).Add(1)
}

// parseObjects caches parsed objects by the parameter text, which is what
// repeats on every publish and rotation of the same class.
func (f *Fake) parseObjects(param string) ([]object, error) {
	if objs, ok := f.parsed.Load(param); ok {
		return objs.([]object), nil
	}
	objs, err := parseObjects(param)
	if err != nil {
		return nil, err
	}
	if f.nParsed.Add(1) > maxParsed {
		f.parsed.Clear()
		f.nParsed.Store(1)
	}
	f.parsed.Store(param, objs)
	return objs, nil
}

// contentVersion is a short hash of the content, salted with the object's
// identity so equal values of different objects do not look alike.
func contentVersion(ns, name string, data []byte) string {
	h := sha256.New()
	h.Write([]byte("secretfs-fake-version\x00" + ns + "\x00" + name + "\x00"))
	h.Write(data)
	var sum [sha256.Size]byte
	return hex.EncodeToString(h.Sum(sum[:0])[:8])
}

const genAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

// generate derives n printable bytes from the object's identity: the same
// namespace, name, version and seed always give the same value, and a new
// objectVersion or seed rotates it. 64 symbols keep every byte unbiased.
func generate(ns, name, version, seed string, n int) []byte {
	key := sha256.Sum256([]byte("secretfs-fake-generate\x00" + ns + "\x00" + name + "\x00" + version + "\x00" + seed))
	out := make([]byte, 0, n)
	var block [sha256.Size + 8]byte
	copy(block[:], key[:])
	for i := uint64(0); len(out) < n; i++ {
		binary.BigEndian.PutUint64(block[sha256.Size:], i)
		sum := sha256.Sum256(block[:])
		for _, b := range sum {
			if len(out) == n {
				break
			}
			out = append(out, genAlphabet[b&63])
		}
	}
	return out
}

// chargeAnswer charges one file of n bytes the fake answers with: to the
// volume's content and, as a backend's answer on the wire, to its wire
// allowance and the node's bound of answers in flight.
func chargeAnswer(b *provider.Budget, n int64) error {
	if err := b.File(n); err != nil {
		return err
	}
	return b.Wire(n)
}
