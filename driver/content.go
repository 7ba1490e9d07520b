package driver

import (
	"context"
	"log/slog"
	"maps"
	"slices"
	"time"

	"github.com/secretfs/secretfs/driver/cache"
	"github.com/secretfs/secretfs/driver/class"
	"github.com/secretfs/secretfs/driver/content"
	"github.com/secretfs/secretfs/provider"
)

// What a class asks of the driver beyond its provider (package
// driver/content): key paths, templates, optional objects, its own
// rotation interval and stale content for new pods. apply calls plan after
// the class lookup, fetchVia as the backend call, and shape before the
// file checks; a class that uses none of it has a nil plan and pays nothing.

// Defaults for the bounds of the class settings.
const (
	DefaultMinRotationInterval = 10 * time.Second
	DefaultMaxRotationInterval = 24 * time.Hour
	DefaultMaxStaleIfError     = time.Hour
)

// ContentEventSink is implemented by an EventSink that also reports what a
// class's content settings did on the pod (the API events do).
type ContentEventSink interface {
	// Omitted: optional objects were not found and are not in the volume.
	Omitted(pod provider.Pod, class string, objects []string)
	// ServedStale: the backend failed with err; a new volume got the node
	// cache's content of the same identity and class, fetched age ago.
	ServedStale(pod provider.Pod, class string, age time.Duration, err error)
}

// plan reads the class's content settings; nil for a class without any.
func (d *Driver) plan(cls *class.Class) (*content.Plan, error) {
	p, err := content.Parse(cls.Parameters)
	if err != nil {
		return nil, provider.Errorf(provider.CodeOf(err), "SecretProviderClass %q in namespace %q: %s", cls.Name, cls.Namespace, err.Error())
	}
	return p, nil
}

// classInterval is v's class's own rotation interval, clamped to the
// driver's bounds; 0 when the class sets none.
func (d *Driver) classInterval(plan *content.Plan) time.Duration {
	iv, _ := plan.RotationInterval(d.minInterval, d.maxInterval)
	return iv
}

// cachePolicy is how the node cache may serve v under plan: the class's
// own interval as the max age, and stale content for a first publish when
// the class asks for it (bounded by the driver's maximum).
func (d *Driver) cachePolicy(v *volume, plan *content.Plan) cache.Policy {
	stale := plan.StaleIfError(d.maxStale)
	return cache.Policy{MaxAge: v.interval, StaleIfError: stale, ServeStale: stale > 0 && !v.mounted}
}

// keyParameters are the parameters the cache key is made of: the class's
// own (before the driver took its settings out, since optional objects and
// key paths change what a fetch returns), and with stale content on, the
// class name, so that stale content never crosses classes.
func keyParameters(cls *class.Class, pol cache.Policy) map[string]string {
	if pol.StaleIfError == 0 {
		return cls.Parameters
	}
	params := maps.Clone(cls.Parameters)
	params[content.Prefix+"class"] = cls.Name // no class can set it: Parse refuses unknown secretfs.dev/ names
	return params
}

// servedStale logs and reports that v got stale content because of err.
func (d *Driver) servedStale(ctx context.Context, v *volume, at time.Time, err error) {
	age := time.Since(at)
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
func (d *Driver) shape(v *volume, plan *content.Plan, req *provider.Request, res *provider.Result) (*provider.Result, error) {
	out, err := plan.Render(res, d.capBytes, req.DefaultMode)
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
