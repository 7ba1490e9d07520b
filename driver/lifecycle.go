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

	"github.com/secretfs/secretfs/driver/atomicwriter"
	"github.com/secretfs/secretfs/driver/budget"
	"github.com/secretfs/secretfs/driver/content"
	"github.com/secretfs/secretfs/driver/hook"
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

// apply brings v's files up to date with its class and backend. Each step
// is one block below, marked with its number:
//
//  1. Look the class up, only in the pod's namespace, and read what the
//     driver takes from it: its serving settings (package class) and its
//     content plan (package content).
//  2. Build the backend request: identity from kubelet (base), parameters
//     from the class only, less the driver's own; the versions mounted now.
//  3. For an external provider, which may write into the target itself,
//     mount the tmpfs first and verify it.
//  4. Fetch, through the node cache under the volume's identity where its
//     answers may be shared (fetch.go). From here on, what the class and the
//     values make the driver compute is charged to one budget.Work.
//  5. Make the file set: shape the content (key paths, templates, optional
//     objects) and check it (paths, modes, count, directories, depth, size);
//     or, when the provider wrote the files itself, check what it wrote.
//  6. Write the files: on a first publish reserve their bytes in the node
//     budget and mount the tmpfs (after every check, so a refused volume of
//     a built-in backend never mounts anything); the atomic writer checks
//     with statfs that it writes to the tmpfs, and on a refresh reserves
//     only once it knows the content changed.
//  7. Record what was mounted, in the volume and its metadata file,
//     with what the hooks are about to be told (untold: record.go).
//  8. Tell the hooks when the content changed, on a first publish, and
//     on the first apply after a restart that found them untold (replay).
//
// A first publish that fails leaves v.mounted telling the caller whether to
// unmount. A refresh that fails leaves the last good content in place. The
// caller holds the volume lock. Errors are typed (provider.Error); the CSI
// methods turn them into a gRPC status (toStatus).
func (d *Driver) apply(ctx context.Context, v *volume, base *provider.Request) (changed bool, err error) {
	first := !v.mounted

	// 1.
	cls, err := d.classes.Get(ctx, v.pod.Namespace, v.class)
	if err != nil {
		return false, err
	}
	settings, err := cls.Settings()
	if err != nil {
		return false, err
	}
	work := d.work(ctx, v)
	defer work.Done()
	plan, err := content.ForClass(cls, work)
	if err != nil {
		return false, err
	}
	v.cls, v.provider = cls, cls.Provider
	v.interval = settings.Interval(d.minInterval, d.maxInterval)

	// 2.
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
	if first {
		d.checkAudiences(ctx, v, p, req)
	}

	// 3.
	if external {
		if err := d.mountTmpfs(v); err != nil {
			return false, err
		}
		// Never hand a provider a target that is not v's tmpfs (unmounted
		// or replaced behind the driver's back).
		if err := tmpfs.VerifyMounted(v.target); err != nil {
			return false, provider.Errorf(codes.Internal, "not calling provider %q: %v", v.provider, err)
		}
	}

	// 4.
	req.Flight = d.flights.Flight() // held until the answers are wiped (deferred below)
	defer req.Flight.Done()
	req.Turn = work.Turn // the backend decodes the class's parameters in the volume's turn
	res, fetched, err := d.fetch(ctx, v, p, req, d.shareable(settings, external, v.provider), settings, plan, work)
	if err != nil {
		return false, err
	}
	defer res.Wipe()

	// 5.
	set, err := d.fileSet(v, external, first, plan, req, res, work)
	if err != nil {
		return false, err
	}
	defer set.wipe()

	// 6.
	changed, root, err := d.write(v, set, first)
	if root >= 0 {
		defer unix.Close(root)
	}
	if err != nil {
		return false, err
	}

	// 7.
	replayFirst := v.replay && v.untold == untoldPublish && !changed
	switch {
	case len(d.hooks) == 0:
		v.untold = ""
	case first:
		v.untold = untoldPublish
	case changed:
		v.untold = untoldChange
	case v.replay:
		// told below
	case v.holds.Load() == 0:
		v.untold = "" // every hook is done with the last change
	}
	v.req, v.lastFetch, v.versions = kept(req), fetched, res.Versions
	v.files, v.bytes = len(set.files), 0
	for _, f := range set.files {
		v.bytes += int64(len(f.Data))
	}
	if err := v.saveRecord(root); err != nil {
		if first {
			return false, writeError(v, err)
		}
		d.log.Warn("saving volume metadata", "volume_id", v.id, "err", err)
	}
	if first {
		logAttrs(ctx, d.log, slog.LevelInfo, "volume published", slog.String("volume_id", v.id), slog.String("target", v.target),
			slog.String("namespace", v.pod.Namespace), slog.String("pod", v.pod.Name), slog.String("class", v.class),
			slog.String("provider", v.provider), slog.Int("files", len(set.files)), slog.Bool("written_by_provider", set.writtenByProvider))
	}

	// 8.
	if changed || first || v.replay {
		info := v.info(set.files)
		info.First = first || replayFirst
		info.Hold = v.hold
		for _, h := range d.hooks {
			h.Changed(ctx, info)
		}
		v.replay = false
	}
	return changed, nil
}

// A fileSet is a volume's new files, checked and ready to write (apply's
// step 5). Wipe it when done.
type fileSet struct {
	files []atomicwriter.File
	// need is what the files take on the tmpfs: the node budget's charge.
	need int64
	// rendered holds the content the driver computed (templates, keys);
	// the other files share the fetched result's, which apply wipes.
	rendered *provider.Result
	// writtenByProvider: an external provider wrote the files into the
	// tmpfs itself; files are read back from it for the hooks (or nil) and
	// changed says whether their versions changed.
	writtenByProvider, changed bool
}

func (s *fileSet) wipe() {
	s.rendered.Wipe()
	if s.writtenByProvider {
		atomicwriter.Wipe(s.files)
	}
}

// fileSet makes v's file set from a fetched result (apply's step 5).
func (d *Driver) fileSet(v *volume, external, first bool, plan *content.Plan, req *provider.Request, res *provider.Result, work *budget.Work) (*fileSet, error) {
	if res.WrittenByProvider {
		return d.checkWritten(v, external, first, plan, res)
	}
	set := &fileSet{}
	if plan != nil {
		out, err := d.shape(v, plan, req, res, work)
		if err != nil {
			return nil, err
		}
		set.rendered, res = out, out
	}
	var err error
	if set.files, set.need, err = d.limits.files(res, req.DefaultMode, v.provider, v.where(), d.cache != nil); err != nil {
		set.wipe()
		return nil, err
	}
	return set, nil
}

// write puts set on v's tmpfs (apply's step 6) and reports whether the
// content changed; what the provider wrote itself is there already. When
// it mounts the tmpfs it writes through the new mount's root (checked by
// tmpfs.MountRoot, the very descriptor written to) and returns it, for
// the caller to write the metadata there and close; else root is -1.
func (d *Driver) write(v *volume, set *fileSet, first bool) (changed bool, root int, err error) {
	if set.writtenByProvider {
		return set.changed, -1, nil
	}
	charge := d.budget.Charge(v.id, set.need, v.need, v.where())
	if first {
		if err := charge.Reserve(); err != nil {
			return false, -1, err
		}
	}
	root = -1
	if !v.mounted {
		if root, err = d.mountRoot(v); err != nil {
			charge.Failed()
			return false, -1, err
		}
		changed, err = true, d.writer(v, charge.Reserve).WriteFresh(root, set.files)
	} else {
		// A refresh reserves only once the writer knows the content
		// changed: current and new generation side by side; the current
		// one stays, for readers that resolved it just before the swap,
		// until the next write (atomicwriter), and the budget counts it
		// until then. With hooks, the record says the change is untold
		// before the swap, so a driver that dies between the swap and the
		// hooks has the next one tell them.
		grow := charge.Reserve
		if !first && len(d.hooks) > 0 {
			grow = func() error {
				if err := charge.Reserve(); err != nil {
					return err
				}
				v.untold = untoldChange
				if err := v.saveRecord(-1); err != nil {
					d.log.Warn("saving volume metadata", "volume_id", v.id, "err", err)
				}
				return nil
			}
		}
		changed, err = d.writer(v, grow).Write(set.files)
	}
	switch {
	case err != nil:
		charge.Failed()
	case changed || first:
		charge.Written()
		v.need = set.need
	default:
		charge.Unchanged()
	}
	if err != nil {
		if provider.CodeOf(err) == codes.ResourceExhausted {
			return false, root, err // the node budget refused the new generation
		}
		return false, root, writeError(v, err)
	}
	return changed, root, nil
}

// forget ends the driver's part in v: its watch, its cache entry, its place
// in the volume table, and the hooks are told it is gone. The tmpfs is the
// caller's: unmount it first where it is still mounted. The caller holds the
// volume lock.
func (d *Driver) forget(v *volume) {
	d.stopWatch(v)
	if d.budget != nil {
		d.budget.Release(v.id)
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
	info := v.info(nil)
	for _, h := range d.hooks {
		h.Gone(info)
	}
}

// refresh runs apply on a mounted volume. A failure keeps the last good
// content; it is logged, counted, and reported on the pod when the
// rotation policy says a failure event is due. The caller holds the volume lock.
func (d *Driver) refresh(ctx context.Context, v *volume, trigger string) {
	start, now := time.Now(), d.now()
	v.lastTry = now
	changed, err := d.apply(ctx, v, v.req)
	switch {
	case err != nil:
		d.log.Warn("refresh failed; keeping the last good content", "volume_id", v.id, "namespace", v.pod.Namespace,
			"class", v.class, "trigger", trigger, "code", provider.CodeOf(err).String(), "err", err.Error())
		if d.events != nil && d.rotation.FailureEventDue(v.lastFailEvent, v.interval, now) {
			v.lastFailEvent = now
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

// info is what hooks see of v, with files when its content changed.
func (v *volume) info(files []atomicwriter.File) hook.Volume {
	info := hook.Volume{ID: v.id, Target: v.target, Pod: v.pod, Class: v.cls, Provider: v.provider, Versions: v.versions}
	if files != nil {
		info.Files = make([]provider.File, len(files))
		for i, f := range files {
			info.Files[i] = provider.File{Path: f.Path, Mode: f.Mode, Contents: f.Data}
		}
	}
	return info
}

// where names v's class for messages.
func (v *volume) where() string {
	return "class \"" + v.class + "\" in namespace \"" + v.pod.Namespace + "\""
}

// saveRecord writes what v mounted to its metadata file (record.go), in
// the directory root when it is a descriptor (>= 0) of v's tmpfs root.
func (v *volume) saveRecord(root int) error {
	m := record{
		VolumeID: v.id, Target: v.target, Pod: v.pod, Class: v.class,
		Provider: v.provider, GID: v.gid, LastFetch: v.lastFetch.UTC(), Versions: v.versions,
	}
	if v.interval != 0 {
		m.RotationInterval = v.interval.String()
	}
	m.Untold = v.untold
	if root >= 0 {
		return saveRecordAt(root, m)
	}
	return saveRecord(v.target, m)
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
	root, err := d.mountRoot(v)
	if err != nil {
		return err
	}
	return unix.Close(root)
}

// mountRoot mounts v's tmpfs and returns its root (tmpfs.MountRoot).
func (d *Driver) mountRoot(v *volume) (int, error) {
	// The root is the owner's, or the pod's fsGroup's with kubelet's modes
	// (see rootModeWithGroup).
	opts := tmpfs.Options{SizeBytes: d.mountBytes, Mode: rootModeNoGroup, GID: v.gid, Inodes: d.limits.Inodes(), Logger: d.log}
	switch {
	case d.owner != nil:
		opts.Mode, opts.UID, opts.GID = d.owner.RootMode, d.owner.UID, d.owner.GID
	case v.gid >= 0:
		opts.Mode = rootModeWithGroup
	}
	root, err := tmpfs.MountRoot(v.target, opts)
	if err != nil {
		return -1, provider.Errorf(codes.Internal, "mounting tmpfs: %v", err)
	}
	v.mounted = true
	return root, nil
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
func (d *Driver) checkWritten(v *volume, external, first bool, plan *content.Plan, res *provider.Result) (*fileSet, error) {
	if !external {
		return nil, provider.Errorf(codes.Internal, "built-in provider %q returned no files", v.provider)
	}
	if plan.NeedsFiles() {
		return nil, provider.Errorf(codes.FailedPrecondition, "class %q in namespace %q uses templates, keyPath or optional objects, which need the files from the provider, but provider %q wrote them into the volume itself: configure it to return the files (the AWS provider: driverWritesSecrets) or drop those settings", v.class, v.pod.Namespace, v.provider)
	}
	used, isTmpfs, err := tmpfs.Usage(v.target)
	if err != nil || !isTmpfs {
		return nil, provider.Errorf(codes.Internal, "after provider %q wrote the files, %s is not a tmpfs", v.provider, v.target)
	}
	if used > d.limits.MaxBytes+pageSize {
		return nil, provider.Errorf(codes.ResourceExhausted, "provider %q wrote %d bytes into the volume of class %q in namespace %q, more than the per-volume limit of %d bytes: split the class or raise the driver's tmpfs size", v.provider, used, v.class, v.pod.Namespace, d.limits.MaxBytes)
	}
	set := &fileSet{writtenByProvider: true, changed: first || !slices.Equal(v.versions, res.Versions)}
	if !set.changed || len(d.hooks) == 0 {
		return set, nil
	}
	root, err := os.OpenRoot(v.target)
	if err != nil {
		return nil, provider.Errorf(codes.Internal, "reading back the files provider %q wrote: %v", v.provider, err)
	}
	defer root.Close()
	if set.files, err = atomicwriter.ReadBack(root, recordFile, d.limits.MaxFiles, d.limits.MaxBytes); err != nil {
		return nil, provider.Errorf(codes.Internal, "reading back the files provider %q wrote: %v", v.provider, err)
	}
	return set, nil
}

// writeError turns a write failure into a status: a full tmpfs is the
// class's fault (too much data), a target that is not a tmpfs a refusal,
// anything else is ours.
func writeError(v *volume, err error) error {
	if errors.Is(err, atomicwriter.ErrRefused) {
		return provider.Errorf(codes.Internal, "%v", err)
	}
	if errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) {
		return provider.Errorf(codes.ResourceExhausted, "class %q does not fit in the volume's tmpfs: %v", v.class, err)
	}
	return provider.Errorf(codes.Internal, "writing files of class %q: %v", v.class, err)
}
