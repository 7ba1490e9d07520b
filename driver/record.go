// The volume record (metadata file): the non-secret state of a
// volume, kept in the volume's own tmpfs, so it survives a driver restart
// exactly as long as the volume does. Never tokens, never secret values.

package driver

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/secretfs/secretfs/driver/atomicwriter"
	"github.com/secretfs/secretfs/provider"
)

// recordFile is the metadata file's name in the tmpfs root. Reserved ".." name:
// never a user file.
const recordFile = "..secretfs.json"

// record is the non-secret state written to File.
type record struct {
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
	// Untold: the hooks may not have taken in the volume's first publish
	// ("publish") or its last change of content ("change"): the driver was
	// telling them, or a hook still held it (hook.Volume.Hold), when this
	// was written. A driver that finds it after a restart refreshes the
	// volume at its first republish and tells the hooks again. Cleared by
	// the first save after every hook is done.
	Untold string `json:"untold,omitempty"`
}

// What Untold says.
const (
	untoldPublish = "publish"
	untoldChange  = "change"
)

// saveRecord writes m (as version 1) to the metadata file of the tmpfs at target
// atomically (temp file + rename), mode 0600, never following a symlink.
func saveRecord(target string, m record) error {
	m.Version = 1
	data, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if err := atomicwriter.ReplaceFile(target, recordFile, data, 0o600); err != nil {
		return fmt.Errorf("writing volume metadata: %w", err)
	}
	return nil
}

// saveRecordAt is saveRecord into the tmpfs root root (a descriptor).
func saveRecordAt(root int, m record) error {
	m.Version = 1
	data, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if err := atomicwriter.ReplaceFileAt(root, recordFile, data, 0o600); err != nil {
		return fmt.Errorf("writing volume metadata: %w", err)
	}
	return nil
}

// loadRecord reads the metadata of the secretfs tmpfs mounted at target.
func loadRecord(target string) (*record, error) {
	root, err := os.OpenRoot(target)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	fi, err := root.Lstat(recordFile)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() || fi.Size() > 1<<20 {
		return nil, errors.New("volume metadata is not a regular file of sane size")
	}
	data, err := root.ReadFile(recordFile)
	if err != nil {
		return nil, err
	}
	var m record
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("volume metadata is corrupt: %w", err)
	}
	if m.Version != 1 || checkVolumeID(m.VolumeID) != nil {
		return nil, fmt.Errorf("volume metadata has version %d / an invalid volume id", m.Version)
	}
	return &m, nil
}
