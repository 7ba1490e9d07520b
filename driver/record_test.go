package driver

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/secretfs/secretfs/provider"
)

func TestSaveLoad(t *testing.T) {
	dir := t.TempDir()
	in := record{VolumeID: "csi-0123abcd", Target: dir, Pod: provider.Pod{Namespace: "team-a", Name: "app"},
		Class: "app", Provider: "fake", GID: 2000, LastFetch: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
		Versions: []provider.ObjectVersion{{ID: "a", Version: "1"}}, RotationInterval: "1m0s"}
	if err := saveRecord(dir, in); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Lstat(filepath.Join(dir, recordFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("metadata file mode: %v %v", fi, err)
	}
	out, err := loadRecord(dir)
	if err != nil {
		t.Fatal(err)
	}
	if out.Version != 1 || out.VolumeID != in.VolumeID || out.Pod != in.Pod || out.GID != 2000 ||
		!out.LastFetch.Equal(in.LastFetch) || len(out.Versions) != 1 || out.RotationInterval != "1m0s" {
		t.Fatalf("loaded %+v", out)
	}
}

func TestLoadRefuses(t *testing.T) {
	for name, setup := range map[string]func(dir string) error{
		"missing":   func(string) error { return nil },
		"symlink":   func(dir string) error { return os.Symlink("/etc/hostname", filepath.Join(dir, recordFile)) },
		"directory": func(dir string) error { return os.Mkdir(filepath.Join(dir, recordFile), 0o700) },
		"corrupt":   func(dir string) error { return os.WriteFile(filepath.Join(dir, recordFile), []byte("{"), 0o600) },
		"version 2": func(dir string) error {
			return os.WriteFile(filepath.Join(dir, recordFile), []byte(`{"version":2,"volumeID":"v"}`), 0o600)
		},
		"bad id": func(dir string) error {
			return os.WriteFile(filepath.Join(dir, recordFile), []byte(`{"version":1,"volumeID":"a\u0001b"}`), 0o600)
		},
		"empty id": func(dir string) error {
			return os.WriteFile(filepath.Join(dir, recordFile), []byte(`{"version":1}`), 0o600)
		},
		"too large": func(dir string) error {
			return os.WriteFile(filepath.Join(dir, recordFile), make([]byte, 1<<20+1), 0o600)
		},
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			if err := setup(dir); err != nil {
				t.Fatal(err)
			}
			if m, err := loadRecord(dir); err == nil {
				t.Fatalf("loaded %+v", m)
			}
		})
	}
}

// FuzzLoad: the metadata file lives in the volume's tmpfs, which the pod
// sees; whatever it holds, Load returns an error or a volume with a valid
// id, and never panics.
func FuzzLoad(f *testing.F) {
	f.Add([]byte(`{"version":1,"volumeID":"csi-0123","targetPath":"/t","pod":{"namespace":"a","name":"p"},"class":"c","provider":"fake","gid":-1,"lastFetch":"2026-01-02T03:04:05Z","versions":[{"id":"a","version":"1"}],"rotationInterval":"1m"}`))
	f.Add([]byte(`{"version":1,"volumeID":""}`))
	f.Add([]byte(`{"version":1,"volumeID":"v","lastFetch":"not a time"}`))
	f.Add([]byte(`[]`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, recordFile), data, 0o600); err != nil {
			t.Fatal(err)
		}
		m, err := loadRecord(dir)
		if err != nil {
			return
		}
		if m.Version != 1 || m.VolumeID == "" {
			t.Fatalf("accepted %+v", m)
		}
	})
}
