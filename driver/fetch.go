package driver

import (
	"context"
	"maps"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/secretfs/secretfs/driver/atomicwriter"
	"github.com/secretfs/secretfs/driver/cache"
	"github.com/secretfs/secretfs/provider"
)

// pageSize is what tmpfs charges per started page of file data.
const pageSize = 4096

// lookup finds the volume's class, only ever in the pod's namespace.
func (d *Driver) lookup(ctx context.Context, v *volume) (*Class, error) {
	c, err := d.classes.Get(ctx, v.pod.Namespace, v.class)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// request builds the identity part of a provider request from a publish:
// pod, tokens and nodePublishSecretRef data. Parameters come from the class
// only (withClass); volume attributes never reach them.
func (d *Driver) request(v *volume, in *publishInput) *provider.Request {
	return &provider.Request{
		Pod:         in.vc.Pod,
		Class:       v.class,
		Tokens:      in.vc.Tokens,
		Secrets:     in.secrets,
		TargetPath:  v.target,
		DefaultMode: provider.DefaultFileMode,
	}
}

// withClass returns a copy of base with the class's parameters and the
// volume's current versions.
func withClass(base *provider.Request, cls *Class, current []provider.ObjectVersion) *provider.Request {
	req := *base
	req.Parameters = maps.Clone(cls.Parameters)
	if req.Parameters == nil {
		req.Parameters = map[string]string{}
	}
	req.CurrentVersions = current
	return &req
}

// fetch is the one way the driver asks a backend for a volume's files. With
// the node cache on, it goes through the cache under the volume's identity
// (see package driver/cache for why sharing keeps every authorization
// decision intact), and the volume holds the entry until it is unpublished
// or fetches under another identity. It returns when the backend call behind
// the result started: the age of the content. The result is the caller's
// own: wipe it when done.
func (d *Driver) fetch(ctx context.Context, v *volume, req *provider.Request) (*provider.Result, time.Time, error) {
	p, err := d.providerFor(v)
	if err != nil {
		return nil, time.Time{}, err
	}
	var (
		res *provider.Result
		at  time.Time
	)
	if d.cache == nil {
		at = time.Now()
		res, err = d.backend(ctx, p, v.provider, req)
	} else {
		key := d.keyer.Key(cache.Identity{
			Provider: v.provider, Namespace: req.Pod.Namespace, ServiceAccount: req.Pod.ServiceAccount,
			Tokens: req.Tokens, Secrets: req.Secrets, Parameters: req.Parameters,
		})
		var outcome cache.Outcome
		res, at, outcome, err = d.cache.Get(ctx, v.id, key, func(ctx context.Context) (*provider.Result, error) {
			return d.backend(ctx, p, v.provider, req)
		})
		d.metrics.cacheGets[outcome].Inc()
		d.metrics.cacheEntries.Set(float64(d.cache.Len()))
	}
	if err != nil {
		return nil, time.Time{}, provider.Errorf(provider.CodeOf(err), "class %q in namespace %q, provider %q: %s", v.class, v.pod.Namespace, v.provider, err.Error())
	}
	return res, at, nil
}

// backend is one call to a backend, counted by provider and result code.
func (d *Driver) backend(ctx context.Context, p provider.Provider, name string, req *provider.Request) (*provider.Result, error) {
	start := time.Now()
	res, err := p.Fetch(ctx, req)
	if err == nil && res == nil {
		err = provider.Errorf(codes.Internal, "provider %q returned no result and no error", name)
	}
	d.metrics.fetched(name, provider.CodeOf(err), time.Since(start))
	return res, err
}

// release lets go of the cache entry a volume holds; the last volume of an
// identity wipes it.
func (d *Driver) release(v *volume) {
	if d.cache != nil {
		d.cache.Release(v.id)
		d.metrics.cacheEntries.Set(float64(d.cache.Len()))
	}
}

func (d *Driver) providerFor(v *volume) (provider.Provider, error) {
	p, err := d.resolve(v.provider)
	if err != nil {
		code := provider.CodeOf(err)
		if code == codes.Internal || code == codes.NotFound {
			code = codes.InvalidArgument
		}
		return nil, provider.Errorf(code, "class %q in namespace %q uses provider %q, which this driver cannot use: %s", v.class, v.pod.Namespace, v.provider, err.Error())
	}
	if p == nil {
		return nil, provider.InvalidArgument("class %q in namespace %q uses provider %q, which this driver does not know", v.class, v.pod.Namespace, v.provider)
	}
	return p, nil
}

// fetchFiles fetches and checks the complete file set of a volume: valid
// paths and modes, not too many files, within the size cap.
// The caller wipes the result when it has written the files.
func (d *Driver) fetchFiles(ctx context.Context, v *volume, req *provider.Request) ([]atomicwriter.File, *provider.Result, time.Time, error) {
	res, at, err := d.fetch(ctx, v, req)
	if err != nil {
		return nil, nil, at, err
	}
	files, err := d.checkFiles(v, req, res)
	if err != nil {
		cache.Wipe(res)
		return nil, nil, at, err
	}
	return files, res, at, nil
}

func (d *Driver) checkFiles(v *volume, req *provider.Request, res *provider.Result) ([]atomicwriter.File, error) {
	if len(res.Files) > maxFiles {
		return nil, provider.Errorf(codes.ResourceExhausted, "class %q in namespace %q yields %d files; a volume holds at most %d: split the class", v.class, v.pod.Namespace, len(res.Files), maxFiles)
	}
	files := make([]atomicwriter.File, len(res.Files))
	var need int64
	for i, f := range res.Files {
		mode := f.Mode
		if mode == 0 {
			mode = req.DefaultMode
		}
		files[i] = atomicwriter.File{Path: f.Path, Mode: mode, Data: f.Contents}
		need += (int64(len(f.Contents)) + pageSize - 1) / pageSize * pageSize
	}
	if err := atomicwriter.ValidateFiles(files); err != nil {
		return nil, provider.InvalidArgument("provider %q returned an unusable file set for class %q in namespace %q: %v", v.provider, v.class, v.pod.Namespace, err)
	}
	if need > d.capBytes {
		return nil, provider.Errorf(codes.ResourceExhausted, "class %q in namespace %q needs %d bytes of tmpfs for %d files, more than the per-volume limit of %d bytes: split the class or raise the driver's tmpfs size", v.class, v.pod.Namespace, need, len(files), d.capBytes)
	}
	return files, nil
}

// refresh fetches the volume again and swaps the files in when they
// changed. Failures keep the last good content; they are logged, counted and
// reported on the pod (at most once per volume and rotation interval).
// The caller holds the volume lock.
func (d *Driver) refresh(ctx context.Context, v *volume, trigger string) {
	start := time.Now()
	v.lastTry = start
	changed, err := d.refreshOnce(ctx, v)
	result := "unchanged"
	switch {
	case err != nil:
		result = "failed"
		d.log.Warn("refresh failed; keeping the last good content", "volume_id", v.id, "namespace", v.pod.Namespace,
			"class", v.class, "trigger", trigger, "code", provider.CodeOf(err).String(), "err", err.Error())
		if d.events != nil && (v.lastFailEvent.IsZero() || start.Sub(v.lastFailEvent) >= d.interval) {
			v.lastFailEvent = start
			d.events.RefreshFailed(v.pod, v.class, err)
		}
	case changed:
		result = "rotated"
		d.log.Info("volume rotated", "volume_id", v.id, "namespace", v.pod.Namespace, "class", v.class,
			"trigger", trigger, "duration", time.Since(start))
		if d.events != nil {
			d.events.Rotated(v.pod, v.class)
		}
	default:
		d.log.Debug("volume refreshed, unchanged", "volume_id", v.id, "trigger", trigger)
	}
	d.metrics.refresh.WithLabelValues(trigger, result).Inc()
}

func (d *Driver) refreshOnce(ctx context.Context, v *volume) (bool, error) {
	cls, err := d.lookup(ctx, v)
	if err != nil {
		return false, err
	}
	v.provider = cls.Provider
	req := withClass(v.req, cls, v.versions)
	files, res, fetched, err := d.fetchFiles(ctx, v, req)
	if err != nil {
		return false, err
	}
	defer cache.Wipe(res)
	changed, err := d.writer(v).Write(files)
	if err != nil {
		return false, writeError(v, err)
	}
	v.req = req
	v.lastFetch = fetched
	v.versions = res.Versions
	if err := v.saveMetadata(); err != nil {
		d.log.Warn("saving volume metadata", "volume_id", v.id, "err", err)
	}
	return changed, nil
}
