package driver

import (
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/secretfs/secretfs/driver/tmpfs"
	"github.com/secretfs/secretfs/provider"
)

// NodePublishVolume mounts the volume, or, for a volume already mounted at
// the target (a kubelet republish), refreshes it when its rotation is due.
func (d *Driver) NodePublishVolume(ctx context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	start := time.Now()
	republish, prov, err := d.publish(ctx, req)
	op := "publish"
	if republish {
		op = "republish"
	}
	err = toStatus(err)
	d.metrics.Observe(op, start, err)
	if !republish {
		d.metrics.Published(prov, err)
	}
	if err != nil {
		attrs := req.GetVolumeContext()
		d.log.Warn("publish failed", "volume_id", req.GetVolumeId(), "target", req.GetTargetPath(),
			"namespace", attrs[provider.AttrPodNamespace], "pod", attrs[provider.AttrPodName], "class", attrs[provider.AttrClass],
			"code", status.Code(err).String(), "err", status.Convert(err).Message())
		return nil, err
	}
	return &csi.NodePublishVolumeResponse{}, nil
}

// publish returns whether the call was a republish and, for a first
// publish, the provider of the volume's class once it is known (metrics).
func (d *Driver) publish(ctx context.Context, req *csi.NodePublishVolumeRequest) (republish bool, prov string, err error) {
	in, err := parsePublish(req)
	if err != nil {
		return false, "", err
	}
	// An unpublish of the volume cancels the publish (Preempt).
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if err := d.locks.LockForCall(ctx, in.VolumeID); err != nil {
		return false, "", err
	}
	defer d.locks.Unlock(in.VolumeID)
	d.locks.SetCancel(in.VolumeID, cancel)
	if in.Context.IgnoredTokenAttr {
		d.log.Warn("ignoring the volume attribute "+provider.AttrTokens+" that the pod spec sets: kubelet passed the pod's tokens in the secrets field",
			"volume_id", in.VolumeID, "namespace", in.Context.Pod.Namespace, "pod", in.Context.Pod.Name)
	}

	// kubelet makes only the target's parent, so the target usually does
	// not exist: one mkdir then makes it and proves there is nothing at it
	// to adopt, reclaim or refuse (three lookups fewer per publish).
	created := false
	if d.volume(in.VolumeID) == nil {
		if created = os.Mkdir(in.Target, 0o750) == nil; !created {
			d.adopt(in)
		}
	}
	if v := d.volume(in.VolumeID); v != nil {
		mounted, err := tmpfs.IsMountPoint(v.target)
		if err == nil && mounted {
			return true, v.provider, d.republish(ctx, v, in)
		}
		// Unmounted behind our back: forget it and publish afresh.
		d.log.Warn("volume no longer mounted; publishing again", "volume_id", v.id, "target", v.target)
		d.forget(v)
	}
	prov, err = d.firstPublish(ctx, in, created)
	return false, prov, err
}

// firstPublish prepares the target (unless publish just created it empty),
// applies the volume (which mounts the tmpfs and writes the files) and
// starts its provider watch. A target we refuse (symlink, not empty,
// mounted) is left as it is; after that, any failure unmounts and removes
// the target and forgets the volume.
func (d *Driver) firstPublish(ctx context.Context, in *publishInput, created bool) (prov string, err error) {
	v := &volume{id: in.VolumeID, target: in.Target, pod: in.Context.Pod, class: in.Context.Class, gid: in.GID}
	if !created {
		d.reclaim(in.Target)
		if err := prepareTarget(in.Target); err != nil {
			return "", err
		}
	}
	if _, err := d.apply(ctx, v, request(v, in)); err != nil {
		if !v.mounted {
			removeEmptyDir(in.Target)
		} else if uerr := tmpfs.Unmount(in.Target); uerr != nil {
			d.log.Error("cleaning up after a failed publish", "volume_id", v.id, "target", in.Target, "err", uerr)
		}
		d.forget(v)
		return v.provider, err
	}
	v.lastTry = d.now()
	d.setVolume(v)
	d.startWatch(ctx, v)
	return v.provider, nil
}

// adopt takes over a volume of ours that recovery did not find (mounted
// outside RecoverUnder, or its metadata unreadable at start-up): the target
// is a secretfs tmpfs whose metadata names this very volume id.
func (d *Driver) adopt(in *publishInput) {
	if mounted, err := tmpfs.IsMountPoint(in.Target); err != nil || !mounted || tmpfs.Verify(in.Target) != nil {
		return
	}
	v, err := loadVolume(in.Target)
	if err != nil || v.id != in.VolumeID {
		return
	}
	d.log.Info("adopted a mounted volume", "volume_id", v.id, "target", v.target)
	d.setVolume(v)
	d.holdMounted(v)
}

// reclaim unmounts a secretfs tmpfs at target that has no readable
// metadata: a driver that died between mounting and writing the metadata
// left it (with whatever files it had written), and no volume owns it. It
// is ours to redo: without this every retry would fail on "already a mount
// point", kubelet would never unpublish, and the partial secrets would stay
// on the host. A tmpfs whose metadata names another volume is left alone.
func (d *Driver) reclaim(target string) {
	if mounted, err := tmpfs.IsMountPoint(target); err != nil || !mounted || !tmpfs.IsSecretfs(target) {
		return
	}
	if _, err := loadVolume(target); err == nil {
		return
	}
	d.log.Warn("found a secretfs tmpfs without volume metadata at the target (a publish interrupted by a crash); unmounting it to publish afresh", "target", target)
	if err := tmpfs.Unmount(target); err != nil {
		d.log.Error("unmounting an interrupted publish", "target", target, "err", err)
	}
}

// republish checks that the request matches the mounted volume, takes over
// fresh tokens, and refreshes when due. A failed refresh is logged and
// counted; the volume keeps its last good content and the call succeeds.
func (d *Driver) republish(ctx context.Context, v *volume, in *publishInput) error {
	switch {
	case v.target != in.Target:
		return provider.Errorf(codes.AlreadyExists, "volume %s is already published at %s; an ephemeral volume has exactly one target path", v.id, v.target)
	case v.class != in.Context.Class || v.pod.Namespace != in.Context.Pod.Namespace:
		return provider.Errorf(codes.AlreadyExists, "volume %s is already published for class %q in namespace %q, not class %q in namespace %q", v.id, v.class, v.pod.Namespace, in.Context.Class, in.Context.Pod.Namespace)
	case v.gid != in.GID:
		return provider.Errorf(codes.AlreadyExists, "volume %s is already published with volume mount group %d, not %d", v.id, v.gid, in.GID)
	}
	if v.pod.UID == "" && v.pod.Name == "" {
		v.pod = in.Context.Pod // recovered without pod info; learn it now
	}
	// Fresh tokens and secrets from kubelet; the class parameters stay those
	// of the last fetch until the refresh looks the class up again.
	req := request(v, in)
	if v.req != nil {
		req.Parameters = v.req.Parameters
	}
	v.req = req
	switch {
	case v.replay:
		// The last driver died before the hooks took in the content: refresh
		// now and tell them (apply).
		d.refresh(ctx, v, "recovery")
	case d.rotation.Due(v.lastFetch, v.lastTry, v.interval, d.now()):
		d.refresh(ctx, v, "republish")
	}
	// A recovered volume has no watch yet; a watch with other tokens or
	// another provider is replaced (new one first, so no change is missed).
	if w := v.watch; w == nil || !w.Same(v.provider, in.Context.Tokens) {
		d.startWatch(ctx, v)
	}
	return nil
}

// request builds the identity part of a provider request from a publish:
// pod, tokens and nodePublishSecretRef data. Parameters come from the class
// only (withClass); volume attributes never reach them.
func request(v *volume, in *publishInput) *provider.Request {
	return &provider.Request{
		Pod:         in.Context.Pod,
		Class:       v.class,
		Tokens:      in.Context.Tokens,
		Secrets:     in.Secrets,
		TargetPath:  v.target,
		DefaultMode: provider.DefaultFileMode,
	}
}

// holdMounted counts a volume found mounted (after a restart, or adopted)
// in the node budget with the pages its tmpfs holds now: they are charged
// already, whatever the budget says.
func (d *Driver) holdMounted(v *volume) {
	if d.budget == nil {
		return
	}
	used, _, err := tmpfs.Usage(v.target)
	if err != nil {
		return
	}
	d.budget.Hold(v.id, used)
	v.need = used // the current files and maybe the kept ones: never less

}

// loadVolume is the volume whose metadata the tmpfs at target holds.
func loadVolume(target string) (*volume, error) {
	m, err := loadRecord(target)
	if err != nil {
		return nil, err
	}
	interval, _ := time.ParseDuration(m.RotationInterval) // "" or bad: the driver's until the next refresh
	v := &volume{
		id: m.VolumeID, target: target, pod: m.Pod, class: m.Class, provider: m.Provider,
		gid: m.GID, lastFetch: m.LastFetch, lastTry: m.LastFetch, versions: m.Versions, mounted: true,
		interval: max(interval, 0),
	}
	if m.Untold == untoldPublish || m.Untold == untoldChange {
		v.untold, v.replay = m.Untold, true
	}
	return v, nil
}

// volume is the volume with id in the volume table, or nil.
func (d *Driver) volume(id string) *volume {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.vols[id]
}

// setVolume puts v in the volume table and on the status board.
func (d *Driver) setVolume(v *volume) {
	d.noteStatus(v, nil)
	d.mu.Lock()
	d.vols[v.id] = v
	n := len(d.vols)
	d.mu.Unlock()
	d.metrics.Mounted.Set(float64(n))
}

// noteStatus records v's status after a publish, recovery or refresh whose
// error is err. The caller holds v's lock.
func (d *Driver) noteStatus(v *volume, err error) {
	s := VolumeStatus{
		VolumeID: v.id, Namespace: v.pod.Namespace, Pod: v.pod.Name, Class: v.class, Provider: v.provider,
		Files: v.files, Bytes: v.bytes, LastFetch: v.lastFetch,
		LastRequestedRefresh: v.requestedAt, RequestedBy: v.requestedBy,
	}
	if s.Files == 0 && s.Bytes == 0 {
		s.Files = len(v.versions)
	}
	s.RotationInterval = Interval(d.rotation.Every(v.interval))
	s.NextRefresh = d.rotation.Next(v.lastFetch, v.lastTry, v.interval)
	if err != nil {
		s.LastError = status.Convert(toStatus(err)).Message()
	}
	b := &d.status
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.vols == nil {
		b.vols = map[string]VolumeStatus{}
	}
	b.vols[v.id] = s
}

// dropStatus forgets v's status.
func (d *Driver) dropStatus(id string) {
	d.status.mu.Lock()
	delete(d.status.vols, id)
	d.status.mu.Unlock()
}

// prepareTarget makes sure target is an empty directory that is not a mount
// point and not a symlink, creating it if needed (its parent must exist).
func prepareTarget(target string) error {
	fi, err := os.Lstat(target)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if err := os.Mkdir(target, 0o750); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return provider.Errorf(codes.FailedPrecondition, "the parent directory of target path %s does not exist", target)
			}
			return provider.Errorf(codes.Internal, "creating target path: %v", err)
		}
		return nil
	case err != nil:
		return provider.Errorf(codes.Internal, "checking target path: %v", err)
	case fi.Mode()&fs.ModeSymlink != 0:
		return provider.InvalidArgument("target path is unsafe: %s is a symlink; refusing to mount through it", target)
	case !fi.IsDir():
		return provider.InvalidArgument("target path is unsafe: %s exists and is not a directory", target)
	}
	if mounted, err := tmpfs.IsMountPoint(target); err != nil || mounted {
		return provider.InvalidArgument("target path is unsafe: %s is already a mount point of another volume or file system", target)
	}
	entries, err := os.ReadDir(target)
	if err != nil {
		return provider.Errorf(codes.Internal, "reading target path: %v", err)
	}
	if len(entries) > 0 {
		return provider.InvalidArgument("target path is unsafe: %s is not empty", target)
	}
	return nil
}

// removeEmptyDir removes target if it is an empty directory (not a symlink).
func removeEmptyDir(target string) {
	if fi, err := os.Lstat(target); err == nil && fi.IsDir() {
		os.Remove(target)
	}
}

// NodeUnpublishVolume unmounts the tmpfs, removes the target and forgets
// the volume. A target that is gone or was never published is fine.
func (d *Driver) NodeUnpublishVolume(ctx context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	start := time.Now()
	err := toStatus(d.unpublish(ctx, req))
	d.metrics.Observe("unpublish", start, err)
	d.metrics.Unpublished(err)
	if err != nil {
		d.log.Warn("unpublish failed", "volume_id", req.GetVolumeId(), "target", req.GetTargetPath(),
			"code", status.Code(err).String(), "err", status.Convert(err).Message())
		return nil, err
	}
	return &csi.NodeUnpublishVolumeResponse{}, nil
}

func (d *Driver) unpublish(ctx context.Context, req *csi.NodeUnpublishVolumeRequest) error {
	id, target := req.GetVolumeId(), req.GetTargetPath()
	if err := checkVolumeID(id); err != nil {
		return err
	}
	if err := checkTargetPath(target); err != nil {
		return err
	}
	if err := d.locks.Preempt(ctx, id); err != nil {
		return err
	}
	defer d.locks.Unlock(id)

	v := d.volume(id)
	if v != nil && v.target != target {
		// Not where this volume lives: leave the volume alone.
		v = nil
	}
	if v == nil {
		// Unknown (a restart without metadata, or already gone): unmount only
		// what is ours, a tmpfs; never something else mounted there.
		if mounted, _ := tmpfs.IsMountPoint(target); mounted {
			if err := tmpfs.Verify(target); err != nil {
				return provider.Errorf(codes.FailedPrecondition, "target %s is a mount point that secretfs did not create: %v", target, err)
			}
		}
	} else {
		// No refresh may write into the tmpfs while it goes away.
		d.stopWatch(v)
	}
	if err := tmpfs.Unmount(target); err != nil {
		return provider.Errorf(codes.Internal, "unmounting %s: %v", target, err)
	}
	if v != nil {
		d.forget(v)
		logAttrs(ctx, d.log, slog.LevelInfo, "volume unpublished", slog.String("volume_id", id), slog.String("target", target))
	}
	return nil
}

// NodeGetCapabilities advertises what is implemented: the pod's fsGroup
// (VOLUME_MOUNT_GROUP) is applied by the driver. No staging, no stats.
func (d *Driver) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	return &csi.NodeGetCapabilitiesResponse{Capabilities: []*csi.NodeServiceCapability{{
		Type: &csi.NodeServiceCapability_Rpc{Rpc: &csi.NodeServiceCapability_RPC{Type: csi.NodeServiceCapability_RPC_VOLUME_MOUNT_GROUP}},
	}}}, nil
}

// NodeGetInfo returns the node id.
func (d *Driver) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	return &csi.NodeGetInfoResponse{NodeId: d.nodeID}, nil
}

// toStatus gives every error a gRPC status; provider errors keep their code.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := err.(interface{ GRPCStatus() *status.Status }); ok {
		return err // a status or a provider.Error: code and message as they are
	}
	return status.Error(provider.CodeOf(err), err.Error())
}
