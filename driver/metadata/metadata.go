// Package metadata is the volume metadata file: the non-secret state of a
// volume, kept in the volume's own tmpfs, so it survives a driver restart
// exactly as long as the volume does. Never tokens, never secret values.
package metadata

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/secretfs/secretfs/driver/atomicwriter"
	"github.com/secretfs/secretfs/driver/validate"
	"github.com/secretfs/secretfs/provider"
)

// File is the metadata file's name in the tmpfs root. Reserved ".." name:
// never a user file.
const File = "..secretfs.json"

// Volume is the non-secret state written to File.
type Volume struct {
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

// Save writes m (as version 1) to the metadata file of the tmpfs at target
// atomically (temp file + rename), mode 0600, never following a symlink.
func Save(target string, m Volume) error {
	m.Version = 1
	data, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if err := atomicwriter.ReplaceFile(target, File, data, 0o600); err != nil {
		return fmt.Errorf("writing volume metadata: %w", err)
	}
	return nil
}

// Load reads the metadata of the secretfs tmpfs mounted at target.
func Load(target string) (*Volume, error) {
	root, err := os.OpenRoot(target)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	fi, err := root.Lstat(File)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() || fi.Size() > 1<<20 {
		return nil, errors.New("volume metadata is not a regular file of sane size")
	}
	data, err := root.ReadFile(File)
	if err != nil {
		return nil, err
	}
	var m Volume
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("volume metadata is corrupt: %w", err)
	}
	if m.Version != 1 || validate.VolumeID(m.VolumeID) != nil {
		return nil, fmt.Errorf("volume metadata has version %d / an invalid volume id", m.Version)
	}
	return &m, nil
}
