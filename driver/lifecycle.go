package driver

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"os"
	"slices"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/secretfs/secretfs/driver/atomicwriter"
	"github.com/secretfs/secretfs/driver/budget"
	"github.com/secretfs/secretfs/driver/cache"
	"github.com/secretfs/secretfs/driver/class"
	"github.com/secretfs/secretfs/driver/content"
	"github.com/secretfs/secretfs/driver/hook"
	"github.com/secretfs/secretfs/driver/limits"
	"github.com/secretfs/secretfs/driver/metadata"
	"github.com/secretfs/secretfs/driver/tmpfs"
	"github.com/secretfs/secretfs/provider"
)

// A volume's life has two moves, each written once here and used by every
// path that needs it:
//
//   - apply brings a volume's files up to date: a first publish, a
//     republish whose rotation is due, a provider watch, and the local agent
//     (which publishes through NodePublishVolume) all go through it.
//   - forget ends the driver's part in a volume: unpublish, a volume
//     unmounted behind the driver's back, and a first publish that failed.
//
// Hooks (Config.Hooks) attach to exactly these two moves.

// apply brings v's files up to date with its class and backend:
//
//  1. look the class up, only in the pod's namespace;
//  2. build the backend request: identity from kubelet (base), parameters
//     from the class only (less the driver's own settings, see package driver/content),
//     the versions mounted now;
//  3. for an external provider, which may write into the target itself,
//     mount the tmpfs first and verify it;
//  4. fetch, through the node cache under the volume's identity where its
//     answers may be shared (content.Shareable);
//  5. shape the content (key paths, templates, optional objects), then
//     check the file set: paths, modes, count, directories, depth, size
//     cap; and make room in the node budget (on a refresh only once the
//     writer knows the content changed). When the provider wrote the files
//     itself, check what it wrote instead (6. and 7. were the provider's);
//  6. on a first publish, mount the tmpfs (after every check, so a refused
//     volume of a built-in backend never mounts anything);
//  7. write the files with the atomic writer (statfs-verified tmpfs), then
//     settle the volume's share of the node budget;
//  8. record what was mounted in the volume and its metadata file;
//  9. tell the hooks when the content changed.
//
// A first publish that fails leaves v.mounted telling the caller whether to
// unmount. A refresh that fails leaves the last good content in place. The
// caller holds the volume lock.
func (d *Driver) apply(ctx context.Context, v *volume, base *provider.Request) (changed bool, err error) {
	// 1.
	cls, err := d.classes.Get(ctx, v.pod.Namespace, v.class)
	if err != nil {
		return false, err
	}
	// 2.
	plan, err := content.ForClass(cls)
	if err != nil {
		return false, err
	}
	v.cls, v.provider = cls, cls.Provider
	v.interval, _ = plan.RotationInterval(d.minInterval, d.maxInterval)
	req := withClass(base, plan.Parameters(cls.Parameters), v.versions)
	req.Limits = provider.Limits{MaxBytes: d.limits.MaxBytes, MaxFiles: d.limits.MaxFiles}
	if d.owner != nil {
		req.DefaultMode = d.owner.FileMode // else request's provider.DefaultFileMode
	}
	p, err := d.providerFor(v)
	if err != nil {
		return false, err
	}
	_, external := p.(provider.External)
	share, err := content.Shareable(cls, external, d.cacheExternal[v.provider] || d.cacheExternal["*"])
	if err != nil {
		return false, err
	}
	first := !v.mounted
	if first {
		d.checkAudiences(ctx, v, p, req)
	}
	// Everything computed from the class and the values below is charged
	// to one budget, before it is allocated (see budget.Work).
	work := d.budget.Work(ctx, v.id, d.limits.MaxBytes, int64(d.limits.MaxSteps))
	defer work.Done()
	// 3.
	if external {
		if err := d.mountTmpfs(v); err != nil {
			return false, err
		}
		// Never hand a provider a target that is not v's tmpfs (unmounted
		// or replaced behind the driver's back).
		if err := tmpfs.VerifyMounted(v.target); err != nil {
			return false, status.Errorf(codes.Internal, "not calling provider %q: %v", v.provider, err)
		}
	}
	// 4.
	res, fetched, err := d.fetch(ctx, v, p, req, cls, plan, share, work)
	if err != nil {
		return false, err
	}
	defer res.Wipe()
	var files []atomicwriter.File
	if res.WrittenByProvider {
		// 5.
		if files, changed, err = d.checkWritten(v, external, first, plan, res); err != nil {
			return false, err
		}
		defer atomicwriter.Wipe(files)
	} else {
		// 5.
		if plan != nil {
			if res, err = d.shape(v, plan, req, res, work); err != nil {
				return false, err
			}
			defer res.Wipe() // the rendered files; the fetched ones are wiped above
		}
		where := func() string { return "class \"" + v.class + "\" in namespace \"" + v.pod.Namespace + "\"" }
		var need int64
		if files, need, err = d.limits.Files(res, req.DefaultMode, v.provider, where, d.cache != nil); err != nil {
			return false, err
		}
		grow, settle := d.budget.For(v.id, need, where)
		if first && grow != nil {
			if err := grow(); err != nil {
				return false, err
			}
			grow = nil
		}
		// 6.
		if err := d.mountTmpfs(v); err != nil {
			settle(false)
			d.noteBudget()
			return false, err
		}
		// 7.
		w := d.writer(v, grow)
		// Mounted just above (step 6): empty, no earlier generation. An
		// external provider had the tmpfs before this write (step 3) and may
		// have left files in it: look as usual.
		w.Fresh = first && !external
		changed, err = w.Write(files)
		settle(err == nil && (changed || first))
		d.noteBudget()
		if err != nil {
			if provider.CodeOf(err) == codes.ResourceExhausted {
				return false, err // the node budget refused the new generation
			}
			return false, writeError(v, err)
		}
	}
	// 8.
	v.req, v.lastFetch, v.versions = req, fetched, res.Versions
	v.files, v.bytes = len(files), 0
	for _, f := range files {
		v.bytes += int64(len(f.Data))
	}
	if err := v.saveMetadata(); err != nil {
		if first {
			return false, writeError(v, err)
		}
		d.log.Warn("saving volume metadata", "volume_id", v.id, "err", err)
	}
	// 9.
	if first {
		d.log.LogAttrs(ctx, slog.LevelInfo, "volume published", slog.String("volume_id", v.id), slog.String("target", v.target),
			slog.String("namespace", v.pod.Namespace), slog.String("pod", v.pod.Name), slog.String("class", v.class),
			slog.String("provider", v.provider), slog.Int("files", len(files)), slog.Bool("written_by_provider", res.WrittenByProvider))
	}
	if changed || first {
		info := v.info()
		info.Files = files
		for _, h := range d.hooks {
			h.Changed(ctx, info)
		}
	}
	return changed, nil
}

// forget ends the driver's part in v: its watch, its cache entry, its place
// in the volume table, and the hooks are told it is gone. The tmpfs is the
// caller's: unmount it first where it is still mounted. The caller holds the
// volume lock.
func (d *Driver) forget(v *volume) {
	d.stopWatch(v)
	if d.budget != nil {
		d.budget.Release(v.id)
		d.noteBudget()
	}
	if d.cache != nil {
		d.cache.Release(v.id)
		d.metrics.CacheEntries.Set(float64(d.cache.Len()))
	}
	d.mu.Lock()
	if d.vols[v.id] == v {
		delete(d.vols, v.id)
		d.dropStatus(v.id)
	}
	n := len(d.vols)
	d.mu.Unlock()
	d.metrics.Mounted.Set(float64(n))
	info := v.info()
	for _, h := range d.hooks {
		h.Gone(info)
	}
}

// refresh runs apply on a mounted volume. A failure keeps the last good
// content; it is logged, counted, and reported on the pod when the
// rotation policy says a failure event is due. The caller holds the volume lock.
func (d *Driver) refresh(ctx context.Context, v *volume, trigger string) {
	start := time.Now()
	v.lastTry = start
	changed, err := d.apply(ctx, v, v.req)
	switch {
	case err != nil:
		d.log.Warn("refresh failed; keeping the last good content", "volume_id", v.id, "namespace", v.pod.Namespace,
			"class", v.class, "trigger", trigger, "code", provider.CodeOf(err).String(), "err", err.Error())
		if d.events != nil && d.rotation.FailureEventDue(v.lastFailEvent, v.interval, start) {
			v.lastFailEvent = start
			d.events.RefreshFailed(v.pod, v.class, err)
		}
	case changed:
		d.log.Info("volume rotated", "volume_id", v.id, "namespace", v.pod.Namespace, "class", v.class,
			"trigger", trigger, "duration", time.Since(start))
		if d.events != nil {
			d.events.Rotated(v.pod, v.class)
		}
	default:
		d.log.Debug("volume refreshed, unchanged", "volume_id", v.id, "trigger", trigger)
	}
	d.metrics.Refreshed(v.provider, trigger, changed, err, time.Since(start))
	if d.volume(v.id) == v { // not forgotten meanwhile
		d.noteStatus(v, err)
	}
}

// info is what hooks see of v.
func (v *volume) info() hook.Volume {
	return hook.Volume{ID: v.id, Target: v.target, Pod: v.pod, Class: v.cls, Provider: v.provider, Versions: v.versions}
}

// saveMetadata writes what v mounted to its metadata file (package
// driver/metadata).
func (v *volume) saveMetadata() error {
	m := metadata.Volume{
		VolumeID: v.id, Target: v.target, Pod: v.pod, Class: v.class,
		Provider: v.provider, GID: v.gid, LastFetch: v.lastFetch.UTC(), Versions: v.versions,
	}
	if v.interval != 0 {
		m.RotationInterval = v.interval.String()
	}
	return metadata.Save(v.target, m)
}

// noteBudget shows what the node budget holds (metric node_budget_used_bytes).
func (d *Driver) noteBudget() {
	if d.budget != nil {
		d.metrics.BudgetUsed.Set(float64(d.budget.Used()))
	}
}

// withClass returns a copy of base with the class's provider parameters
// and the volume's current versions.
func withClass(base *provider.Request, params map[string]string, current []provider.ObjectVersion) *provider.Request {
	req := *base
	req.Parameters = maps.Clone(params)
	if req.Parameters == nil {
		req.Parameters = map[string]string{}
	}
	req.CurrentVersions = current
	return &req
}

// fetch is the one way the driver asks a backend for a volume's files. With
// the node cache on and share set (content.Shareable), it goes through the cache
// under the volume's identity (see package driver/cache for why sharing
// keeps every authorization decision intact), and the volume holds the
// entry until it is forgotten or fetches under another identity. It returns
// when the backend call behind the result started: the age of the content.
// The result is the caller's own: wipe it when done.
func (d *Driver) fetch(ctx context.Context, v *volume, p provider.Provider, req *provider.Request, cls *class.Class, plan *content.Plan, share bool, work *budget.Work) (*provider.Result, time.Time, error) {
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
		stale := plan.StaleIfError(d.maxStale)
		pol := cache.Policy{MaxAge: v.interval, StaleIfError: stale, ServeStale: stale > 0 && !v.mounted}
		key := d.keyer.Key(cache.Identity{
			Provider: v.provider, Namespace: req.Pod.Namespace, ServiceAccount: req.Pod.ServiceAccount,
			Tokens: req.Tokens, Secrets: req.Secrets, Parameters: content.KeyParameters(cls, stale > 0),
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
		at = time.Now()
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

// providerFor resolves v's provider name to a backend.
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

// mountTmpfs mounts v's tmpfs if it is not mounted yet.
func (d *Driver) mountTmpfs(v *volume) error {
	if v.mounted {
		return nil
	}
	// The root is the owner's, or the pod's fsGroup's with kubelet's modes
	// (see rootModeWithGroup).
	opts := tmpfs.Options{SizeBytes: d.mountBytes, Mode: rootModeNoGroup, GID: v.gid, Inodes: d.limits.Inodes(), Logger: d.log}
	switch {
	case d.owner != nil:
		opts.Mode, opts.UID, opts.GID = d.owner.RootMode, d.owner.UID, d.owner.GID
	case v.gid >= 0:
		opts.Mode = rootModeWithGroup
	}
	if err := tmpfs.Mount(v.target, opts); err != nil {
		return status.Errorf(codes.Internal, "mounting tmpfs: %v", err)
	}
	v.mounted = true
	return nil
}

// writer writes v's files, after checking (with statfs on the very
// directory it writes to) that v's target is a tmpfs; grow is the node
// budget's (see Writer.Grow).
func (d *Driver) writer(v *volume, grow func() error) *atomicwriter.Writer {
	w := &atomicwriter.Writer{Dir: v.target, GID: v.gid, Check: func(fd int) error { return tmpfs.VerifyFd(fd, v.target) }, Grow: grow}
	if o := d.owner; o != nil {
		w.UID, w.GID = o.UID, o.GID
	}
	return w
}

// checkWritten checks what an external provider wrote into v's tmpfs: the
// target is still a tmpfs and holds at most the volume's cap (plus a page
// for the driver's metadata file); the tmpfs size already stopped anything
// larger than the mount. It reports whether the versions changed and, when
// they did and hooks want the files, reads them back (wipe them after use).
// External providers may write the files into the target themselves and
// return none (the Secrets Store CSI Driver's provider-writes mode, the AWS
// provider's default): apply mounts and verifies the tmpfs before calling
// them, so what they write is bounded by the tmpfs size.
func (d *Driver) checkWritten(v *volume, external, first bool, plan *content.Plan, res *provider.Result) ([]atomicwriter.File, bool, error) {
	if !external {
		return nil, false, status.Errorf(codes.Internal, "built-in provider %q returned no files", v.provider)
	}
	if plan.NeedsFiles() {
		return nil, false, provider.Errorf(codes.FailedPrecondition, "class %q in namespace %q uses templates, keyPath or optional objects, which need the files from the provider, but provider %q wrote them into the volume itself: configure it to return the files (the AWS provider: driverWritesSecrets) or drop those settings", v.class, v.pod.Namespace, v.provider)
	}
	used, isTmpfs, err := tmpfs.Usage(v.target)
	if err != nil || !isTmpfs {
		return nil, false, status.Errorf(codes.Internal, "after provider %q wrote the files, %s is not a tmpfs", v.provider, v.target)
	}
	if used > d.limits.MaxBytes+limits.PageSize {
		return nil, false, provider.Errorf(codes.ResourceExhausted, "provider %q wrote %d bytes into the volume of class %q in namespace %q, more than the per-volume limit of %d bytes: split the class or raise the driver's tmpfs size", v.provider, used, v.class, v.pod.Namespace, d.limits.MaxBytes)
	}
	changed := first || !slices.Equal(v.versions, res.Versions)
	if !changed || len(d.hooks) == 0 {
		return nil, changed, nil
	}
	root, err := os.OpenRoot(v.target)
	if err != nil {
		return nil, changed, err
	}
	defer root.Close()
	files, err := atomicwriter.ReadBack(root, metadata.File, d.limits.MaxFiles, d.limits.MaxBytes)
	if err != nil {
		return nil, changed, status.Errorf(codes.Internal, "reading back the files provider %q wrote: %v", v.provider, err)
	}
	return files, changed, nil
}

// writeError turns a write failure into a status: a full tmpfs is the
// class's fault (too much data), a target that is not a tmpfs a refusal,
// anything else is ours.
func writeError(v *volume, err error) error {
	if errors.Is(err, atomicwriter.ErrRefused) {
		return status.Errorf(codes.Internal, "%v", err)
	}
	if errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) {
		return status.Errorf(codes.ResourceExhausted, "class %q does not fit in the volume's tmpfs: %v", v.class, err)
	}
	return status.Errorf(codes.Internal, "writing files of class %q: %v", v.class, err)
}
