package agent

import (
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"sync"

	"github.com/secretfs/secretfs/internal/mask"
)

// masker keeps the values `secretfs run --mask` hides from the command's
// output: the content of every file of the volume, of the current files
// and of the ones they replaced (a rotated-out secret is still a secret,
// and output written around a swap may hold either), in the forms of
// mask.Forms. The command's stdout and stderr each pass through a
// mask.Writer of src.
type masker struct {
	src    *mask.Source
	volume string // the held mount's root
	base64 bool
	log    *slog.Logger

	mu   sync.Mutex
	prev [][]byte // the values of the files before the last change
}

func newMasker(volume string, base64 bool, log *slog.Logger) (*masker, error) {
	m := &masker{src: mask.NewSource(nil), volume: volume, base64: base64, log: log}
	if err := m.reload(); err != nil {
		return nil, err
	}
	return m, nil
}

// reload reads the files of the volume and makes their values (and those of
// the files before) the set to mask.
func (m *masker) reload() error {
	cur, err := volumeValues(m.volume)
	if err != nil {
		return fmt.Errorf("--mask: reading the files of the volume: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	all := append(append([][]byte{}, m.prev...), cur...)
	set := mask.NewSet(mask.Forms(all, m.base64))
	m.src.Store(set)
	m.prev = cur
	m.log.Debug("masking the values of the files in the command's output", "forms", set.Len(), "longest", set.Longest())
	return nil
}

// changed is called when new files were swapped in. On error the previous
// set stays (it still masks the values it had).
func (m *masker) changed() {
	if err := m.reload(); err != nil {
		m.log.Warn("the values of the new files are not masked", "error", err)
	}
}

// writers returns a fresh stdout and stderr filter for one run of the
// command.
func (m *masker) writers(stdout, stderr io.Writer) (*mask.Writer, *mask.Writer) {
	return mask.NewWriter(stdout, m.src), mask.NewWriter(stderr, m.src)
}

// volumeValues reads every regular file of the current data directory of
// the volume (atomic writer layout: ..data points at it), never out of the
// volume. The volume's tmpfs size bounds what is read.
func volumeValues(volume string) ([][]byte, error) {
	root, err := os.OpenRoot(volume)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	data, err := root.Readlink("..data")
	if err != nil {
		return nil, err
	}
	if !fs.ValidPath(data) || path.Dir(data) != "." {
		return nil, fmt.Errorf("..data points at %q, not at a directory of the volume", data)
	}
	var values [][]byte
	err = fs.WalkDir(root.FS(), data, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		b, err := root.ReadFile(p)
		if err != nil {
			return err
		}
		if len(bytes.TrimSpace(b)) > 0 {
			values = append(values, b)
		}
		return nil
	})
	return values, err
}
