package driver

import (
	"errors"
	"io/fs"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/secretfs/secretfs/driver/class"
	"github.com/secretfs/secretfs/driver/tmpfs"
	"github.com/secretfs/secretfs/provider"
)

// volume is the state of one published volume. It is changed only by the
// holder of the volume's key lock.
type volume struct {
	id        string
	target    string
	pod       provider.Pod
	class     string
	provider  string // spec.provider at the last successful fetch
	gid       int
	lastFetch time.Time // last successful fetch: the rotation clock
	lastTry   time.Time // last fetch attempt, successful or not
	// lastFailEvent is when the last SecretRefreshFailed event was sent, in
	// memory only: after a restart one more event is fine.
	lastFailEvent time.Time
	versions      []provider.ObjectVersion
	// files and bytes count the content last written (status only).
	files int
	bytes int64
	// need is what the content last written takes on the tmpfs (the node
	// budget's measure); after a restart, what the tmpfs held then.
	need int64
	// interval is the class's own rotation interval (clamped); 0: the
	// driver's.
	interval time.Duration
	// requestedAt and requestedBy: the last requested refresh (refreshnow.go),
	// in memory only.
	requestedAt time.Time
	requestedBy string
	// omitted are the optional objects last reported missing, in memory
	// only.
	omitted []string
	// mounted: the tmpfs at target is this volume's (recovered, or mounted
	// by apply).
	mounted bool
	// untold is what the hooks may not have taken in yet (record.go):
	// untoldPublish, untoldChange or "". Kept in the record, so a driver
	// that dies while telling the hooks, or while a hook holds the change
	// (hook.Volume.Hold), has the next driver tell them again (replay).
	untold string
	// replay: recovered with untold set; the next apply tells the hooks
	// even when the content did not change.
	replay bool
	// holds counts the hooks still finishing the last change.
	holds atomic.Int32
	// cls is the class as apply last looked it up (nil after a restart
	// until the first refresh), in memory only.
	cls *class.Class

	// In memory only, never on disk: the latest request kubelet sent,
	// including tokens and nodePublishSecretRef data, for watch refreshes.
	req *provider.Request
	// watch is the provider watch, if the provider has one.
	watch *providerWatch
}

// kept is the copy of a fetch's request that a volume keeps for its next
// refresh and its watch: without the call's turn and flight, which hold the
// call's context and with it, for a CSI call, its connection's gRPC state
// (about 8 KiB a volume) long after the call ended.
func kept(req *provider.Request) *provider.Request {
	k := *req
	k.Turn, k.Flight = nil, nil
	return &k
}

// recover rebuilds the volume table from the secretfs tmpfs mounts of this
// mount namespace. Tokens are not recovered: kubelet sends them again with
// the next republish.
func (d *Driver) recover() {
	targets, err := tmpfs.List()
	if err != nil {
		d.log.Error("listing mounts for recovery", "err", err)
		return
	}
	n := 0
	for _, target := range targets {
		if !within(d.recoverUnder, target) {
			continue
		}
		v, err := loadVolume(target)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				err = errors.New("no volume metadata")
			}
			d.log.Warn("found a secretfs tmpfs that cannot be recovered; unpublish will still remove it", "target", target, "err", err)
			continue
		}
		if old := d.volume(v.id); old != nil {
			d.log.Warn("volume mounted twice; keeping the first", "volume_id", v.id, "target", target, "kept", old.target)
			continue
		}
		d.setVolume(v)
		d.holdMounted(v)
		n++
	}
	if n > 0 || len(targets) > 0 {
		d.log.Info("recovered mounted volumes", "volumes", n, "secretfs_mounts", len(targets))
	}
}

// within reports whether path is below dir (any path when dir is empty).
func within(dir, path string) bool {
	if dir == "" {
		return true
	}
	rel, err := filepath.Rel(filepath.Clean(dir), path)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}

// hold is hook.Volume.Hold: it holds v's last change open until done.
func (v *volume) hold() (done func()) {
	v.holds.Add(1)
	var once sync.Once
	return func() { once.Do(func() { v.holds.Add(-1) }) }
}
