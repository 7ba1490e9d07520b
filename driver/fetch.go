package driver

import (
	"context"
	"log/slog"
	"maps"
	"slices"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/secretfs/secretfs/driver/budget"
	"github.com/secretfs/secretfs/driver/cache"
	"github.com/secretfs/secretfs/driver/class"
	"github.com/secretfs/secretfs/driver/content"
	"github.com/secretfs/secretfs/provider"
)

// Fetching a volume's content (apply's step 4), and shaping it (step 5).

// shareable says whether the node cache may share a provider's answers for
// a class between the volumes of one identity: the class's
// secretfs.dev/nodeCache when it sets one; otherwise yes for a built-in
// backend, and for an external provider only when the admin listed it
// (--cache-external).
func (d *Driver) shareable(s class.Settings, external bool, prov string) bool {
	switch {
	case d.cache == nil:
		return false
	case s.NodeCacheSet:
		return s.NodeCache
	case !external:
		return true
	}
	return d.cacheExternal[prov] || d.cacheExternal["*"]
}

// keyParameters are the parameters the node cache key is made of: the
// class's own (before the driver took its settings out, since optional
// objects and key paths change what a fetch returns), and with stale
// content on (staleIfError), the class name, so that stale content never
// crosses classes.
func keyParameters(cls *class.Class, staleIfError bool) map[string]string {
	if !staleIfError {
		return cls.Parameters
	}
	params := maps.Clone(cls.Parameters)
	params[class.Prefix+"class"] = cls.Name // no class can set it: unknown secretfs.dev/ names are refused
	return params
}

// fetch is the one way the driver asks a backend for a volume's files. With
// the node cache on and share set (shareable), it goes through the cache
// under the volume's identity (see package driver/cache for why sharing
// keeps every authorization decision intact), and the volume holds the
// entry until it is forgotten or fetches under another identity. It returns
// when the backend call behind the result started: the age of the content.
// The result is the caller's own: wipe it when done.
func (d *Driver) fetch(ctx context.Context, v *volume, p provider.Provider, req *provider.Request, share bool, settings class.Settings, plan *content.Plan, work *budget.Work) (*provider.Result, time.Time, error) {
	var (
		res *provider.Result
		at  time.Time
		err error
	)
	fetch := func(ctx context.Context) (*provider.Result, error) {
		if plan == nil {
			return d.backend(ctx, p, v.provider, req)
		}
		return plan.Fetch(ctx, req, work, func(ctx context.Context, req *provider.Request) (*provider.Result, error) {
			return d.backend(ctx, p, v.provider, req)
		})
	}
	if d.cache != nil && share {
		// The class's own interval is the max age; stale content only for a
		// first publish, when the class asks for it (bounded by the driver).
		stale := settings.Stale(d.maxStale)
		pol := cache.Policy{MaxAge: v.interval, StaleIfError: stale, ServeStale: stale > 0 && !v.mounted}
		key := d.keyer.Key(cache.Identity{
			Provider: v.provider, Namespace: req.Pod.Namespace, ServiceAccount: req.Pod.ServiceAccount,
			Tokens: req.Tokens, Secrets: req.Secrets, Parameters: keyParameters(v.cls, stale > 0),
		})
		var outcome cache.Outcome
		res, at, outcome, err = d.cache.GetWith(ctx, v.id, key, pol, fetch)
		if outcome == cache.Stale {
			d.servedStale(ctx, v, at, err)
			err = nil
		}
		d.metrics.CacheGets[outcome].Inc()
		// Files a provider wrote are on the tmpfs of the volume whose call
		// it was: another volume asks the provider itself.
		if err == nil && res.WrittenByProvider && outcome != cache.Miss {
			share = false
		}
	}
	if d.cache != nil && !share {
		d.cache.Release(v.id)
	}
	if d.cache == nil || !share {
		at = d.now()
		res, err = fetch(ctx)
	}
	if d.cache != nil {
		d.metrics.CacheEntries.Set(float64(d.cache.Len()))
	}
	if err != nil {
		return nil, time.Time{}, fetchError(v, err)
	}
	return res, at, nil
}

// servedStale logs and reports that v got stale content because of err.
func (d *Driver) servedStale(ctx context.Context, v *volume, at time.Time, err error) {
	age := d.now().Sub(at)
	d.log.LogAttrs(ctx, slog.LevelWarn, "backend failed; new volume served the node cache's last good content (staleIfError)",
		slog.String("volume_id", v.id), slog.String("namespace", v.pod.Namespace), slog.String("class", v.class),
		slog.Duration("age", age), slog.String("code", provider.CodeOf(err).String()), slog.String("err", err.Error()))
	if s, ok := d.events.(ContentEventSink); ok {
		s.ServedStale(v.pod, v.class, age, err)
	}
}

// shape turns a fetched result into the volume's content under plan
// (templates, hidden objects, optional objects left out) and reports newly
// omitted objects once. The returned result shares res's contents and owns
// the rendered ones: wipe both.
func (d *Driver) shape(v *volume, plan *content.Plan, req *provider.Request, res *provider.Result, work *budget.Work) (*provider.Result, error) {
	out, err := plan.Render(res, work, req.DefaultMode)
	if err != nil {
		return nil, provider.Errorf(provider.CodeOf(err), "class %q in namespace %q: %s", v.class, v.pod.Namespace, err.Error())
	}
	if !slices.Equal(out.Missing, v.omitted) {
		v.omitted = out.Missing
		if len(out.Missing) > 0 {
			d.log.Info("optional objects not found, left out", "volume_id", v.id, "namespace", v.pod.Namespace,
				"class", v.class, "objects", out.Missing)
			if s, ok := d.events.(ContentEventSink); ok {
				s.Omitted(v.pod, v.class, out.Missing)
			}
		}
	}
	return &provider.Result{Files: out.Files, Versions: out.Versions}, nil
}

// backend is one call to a backend, counted by provider and result code.
func (d *Driver) backend(ctx context.Context, p provider.Provider, name string, req *provider.Request) (*provider.Result, error) {
	start := time.Now()
	res, err := p.Fetch(ctx, req)
	if err == nil && res == nil {
		err = provider.Errorf(codes.Internal, "provider %q returned no result and no error", name)
	}
	d.metrics.Fetched(name, provider.CodeOf(err), time.Since(start))
	return res, err
}
