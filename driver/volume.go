package driver

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/secretfs/secretfs/driver/atomicwriter"
	"github.com/secretfs/secretfs/driver/class"
	"github.com/secretfs/secretfs/driver/tmpfs"
	"github.com/secretfs/secretfs/driver/validate"
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
	// interval is the class's own rotation interval (clamped); 0: the
	// driver's.
	interval time.Duration
	// omitted are the optional objects last reported missing, in memory
	// only.
	omitted []string
	// mounted: the tmpfs at target is this volume's (recovered, or mounted
	// by apply).
	mounted bool
	// cls is the class as apply last looked it up (nil after a restart
	// until the first refresh), in memory only.
	cls *class.Class

	// In memory only, never on disk: the latest request kubelet sent,
	// including tokens and nodePublishSecretRef data, for watch refreshes.
	req *provider.Request
	// watch is the provider watch, if the provider has one.
	watch *watch
}

// info is what hooks see of v.
func (v *volume) info() VolumeInfo {
	return VolumeInfo{ID: v.id, Target: v.target, Pod: v.pod, Class: v.cls, Provider: v.provider, Versions: v.versions}
}

// metadataFile lives in each tmpfs, so state survives a driver restart
// exactly as long as the volume does. Reserved ".." name: never a user file.
const metadataFile = "..secretfs.json"

// metadata is the non-secret state written to metadataFile. Never tokens.
type metadata struct {
	Version   int                      `json:"version"`
	VolumeID  string                   `json:"volumeID"`
	Target    string                   `json:"targetPath"`
	Pod       provider.Pod             `json:"pod"`
	Class     string                   `json:"class"`
	Provider  string                   `json:"provider"`
	GID       int                      `json:"gid"`
	LastFetch time.Time                `json:"lastFetch"`
	Versions  []provider.ObjectVersion `json:"versions,omitempty"`
	// RotationInterval is the class's own interval in force, if it set one.
	RotationInterval string `json:"rotationInterval,omitempty"`
}

func (v *volume) intervalText() string {
	if v.interval == 0 {
		return ""
	}
	return v.interval.String()
}

// saveMetadata writes the metadata file atomically (temp file + rename),
// mode 0600, never following a symlink.
func (v *volume) saveMetadata() error {
	data, err := json.Marshal(metadata{
		Version: 1, VolumeID: v.id, Target: v.target, Pod: v.pod, Class: v.class,
		Provider: v.provider, GID: v.gid, LastFetch: v.lastFetch.UTC(), Versions: v.versions, RotationInterval: v.intervalText(),
	})
	if err != nil {
		return err
	}
	if err := atomicwriter.ReplaceFile(v.target, metadataFile, data, 0o600); err != nil {
		return fmt.Errorf("writing volume metadata: %w", err)
	}
	return nil
}

// loadVolume reads the metadata of a secretfs tmpfs mounted at target.
func loadVolume(target string) (*volume, error) {
	root, err := os.OpenRoot(target)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	fi, err := root.Lstat(metadataFile)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() || fi.Size() > 1<<20 {
		return nil, errors.New("volume metadata is not a regular file of sane size")
	}
	data, err := root.ReadFile(metadataFile)
	if err != nil {
		return nil, err
	}
	var m metadata
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("volume metadata is corrupt: %w", err)
	}
	if m.Version != 1 || validate.VolumeID(m.VolumeID) != nil {
		return nil, fmt.Errorf("volume metadata has version %d / an invalid volume id", m.Version)
	}
	interval, _ := time.ParseDuration(m.RotationInterval) // "" or bad: the driver's until the next refresh
	return &volume{
		id: m.VolumeID, target: target, pod: m.Pod, class: m.Class, provider: m.Provider,
		gid: m.GID, lastFetch: m.LastFetch, lastTry: m.LastFetch, versions: m.Versions, mounted: true,
		interval: max(interval, 0),
	}, nil
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
