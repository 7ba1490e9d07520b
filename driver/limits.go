// The per-volume caps on the shape of a file set:
// files, directories, path depth and tmpfs bytes (the driver's flags
// --max-files, --max-dirs, --max-depth and --tmpfs-size). Directories and
// deep paths cost inodes and kernel memory but no tmpfs pages, so the size
// cap alone does not bound them. Every check runs before anything is
// mounted or written.

package driver

import (
	"context"
	"os"

	"google.golang.org/grpc/codes"

	"github.com/secretfs/secretfs/driver/atomicwriter"
	"github.com/secretfs/secretfs/driver/budget"
	"github.com/secretfs/secretfs/provider"
)

// pageSize is what tmpfs charges per started page.
const pageSize = 4096

// volumeLimits are the per-volume caps in force.
type volumeLimits struct {
	MaxFiles, MaxDirs, MaxDepth int
	// MaxSteps caps the steps of the volume's computation (budget.Work).
	MaxSteps int
	// MaxBytes caps the content of one volume in tmpfs bytes.
	MaxBytes int64
}

// work starts the budget of v's computation over its class and values:
// the per-volume caps, the node budget, and turns taken as v's namespace.
// Call its Done when the computation's allocations are released.
func (d *Driver) work(ctx context.Context, v *volume) *budget.Work {
	return d.budget.Work(ctx, v.id, v.pod.Namespace, d.limits.MaxBytes, int64(d.limits.MaxSteps))
}

// Inodes is the nr_inodes= cap of a volume's tmpfs: two generations (old
// and new during a swap) of files and directories with their generation
// directory, the top-level links, and the root, ..data, ..data_tmp and the
// metadata file with its temporary.
func (l volumeLimits) Inodes() int64 {
	return int64(2*(1+l.MaxFiles+l.MaxDirs) + l.MaxFiles + 8)
}

// Files turns a backend result into the file set to write, refusing one
// that is unusable (bad paths or modes) or over a cap: files, directories,
// path depth, and tmpfs bytes counted as the kernel charges them (data
// pages, and a page for each top-level link with a long name). Objects
// without a mode get defaultMode; prov names the provider and where the
// class in errors (called only for an error). need is what the volume
// holds on this node: its tmpfs pages, the metadata file, and with cached
// the copy of the content the node cache keeps.
func (l volumeLimits) files(res *provider.Result, defaultMode os.FileMode, prov string, where string, cached bool) (files []atomicwriter.File, need int64, err error) {
	if len(res.Files) > l.MaxFiles {
		return nil, 0, provider.Errorf(codes.ResourceExhausted, "%s yields %d files; a volume holds at most %d (driver flag --max-files): split the class", where, len(res.Files), l.MaxFiles)
	}
	files = make([]atomicwriter.File, len(res.Files))
	var content int64
	for i, f := range res.Files {
		mode := f.Mode
		if mode == 0 {
			mode = defaultMode
		}
		files[i] = atomicwriter.File{Path: f.Path, Mode: mode, Data: f.Contents}
		content += int64(len(f.Contents))
	}
	if err := atomicwriter.ValidateFiles(files); err != nil {
		return nil, 0, provider.InvalidArgument("provider %q returned an unusable file set for %s: %v", prov, where, err)
	}
	u := atomicwriter.Measure(files)
	switch {
	case u.Depth > l.MaxDepth:
		return nil, 0, provider.Errorf(codes.ResourceExhausted, "%s has a file path %d directories deep; a volume allows %d (driver flag --max-depth): use shorter paths", where, u.Depth, l.MaxDepth)
	case u.Dirs > l.MaxDirs:
		return nil, 0, provider.Errorf(codes.ResourceExhausted, "%s needs %d directories; a volume holds at most %d (driver flag --max-dirs): use fewer directories in the file paths", where, u.Dirs, l.MaxDirs)
	case u.Bytes > l.MaxBytes:
		return nil, 0, provider.Errorf(codes.ResourceExhausted, "%s needs %d bytes of tmpfs for %d files (data pages, and a page for each top-level name longer than 120 bytes), more than the per-volume limit of %d bytes (driver flag --tmpfs-size): split the class", where, u.Bytes, len(files), l.MaxBytes)
	}
	need = u.Bytes + pageSize
	if cached {
		need += content
	}
	return files, need, nil
}
