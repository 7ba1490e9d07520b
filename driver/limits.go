package driver

import (
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"

	"github.com/secretfs/secretfs/driver/atomicwriter"
	"github.com/secretfs/secretfs/provider"
)

// Per-volume limits on the shape of a file set (Config.MaxFiles, MaxDirs,
// MaxDepth). Directories and deep paths cost inodes and kernel memory but no
// tmpfs pages, so the size cap alone does not bound them.
const (
	DefaultMaxFiles = provider.DefaultMaxFiles
	DefaultMaxDirs  = 1024
	DefaultMaxDepth = 16
)

// pageSize is what tmpfs charges per started page.
const pageSize = 4096

// volumeLimits are the per-volume caps in force.
type volumeLimits struct {
	maxFiles, maxDirs, maxDepth int
}

// inodes is the nr_inodes= cap of a volume's tmpfs: two generations (old
// and new during a swap) of files and directories with their generation
// directory, the top-level links, and the root, ..data, ..data_tmp and the
// metadata file with its temporary.
func (l volumeLimits) inodes() int64 {
	return int64(2*(1+l.maxFiles+l.maxDirs) + l.maxFiles + 8)
}

// checkFiles turns a backend result into the file set to write, refusing
// one that is unusable (bad paths or modes) or over a per-volume cap: files,
// directories, path depth, and tmpfs bytes counted as the kernel charges
// them (data pages, and a page for each top-level link with a long name).
// need is what the volume holds on this node: its tmpfs pages, the metadata
// file, and with the node cache the copy of the content the cache keeps.
func (d *Driver) checkFiles(v *volume, req *provider.Request, res *provider.Result) (files []atomicwriter.File, need int64, err error) {
	where := func() string { return "class \"" + v.class + "\" in namespace \"" + v.pod.Namespace + "\"" }
	if len(res.Files) > d.limits.maxFiles {
		return nil, 0, provider.Errorf(codes.ResourceExhausted, "%s yields %d files; a volume holds at most %d (driver flag --max-files): split the class", where(), len(res.Files), d.limits.maxFiles)
	}
	files = make([]atomicwriter.File, len(res.Files))
	var content int64
	for i, f := range res.Files {
		mode := f.Mode
		if mode == 0 {
			mode = req.DefaultMode
		}
		files[i] = atomicwriter.File{Path: f.Path, Mode: mode, Data: f.Contents}
		content += int64(len(f.Contents))
	}
	if err := atomicwriter.ValidateFiles(files); err != nil {
		return nil, 0, provider.InvalidArgument("provider %q returned an unusable file set for %s: %v", v.provider, where(), err)
	}
	u := atomicwriter.Measure(files)
	switch {
	case u.Depth > d.limits.maxDepth:
		return nil, 0, provider.Errorf(codes.ResourceExhausted, "%s has a file path %d directories deep; a volume allows %d (driver flag --max-depth): use shorter paths", where(), u.Depth, d.limits.maxDepth)
	case u.Dirs > d.limits.maxDirs:
		return nil, 0, provider.Errorf(codes.ResourceExhausted, "%s needs %d directories; a volume holds at most %d (driver flag --max-dirs): use fewer directories in the file paths", where(), u.Dirs, d.limits.maxDirs)
	case u.Bytes > d.capBytes:
		return nil, 0, provider.Errorf(codes.ResourceExhausted, "%s needs %d bytes of tmpfs for %d files (data pages, and a page for each top-level name longer than 120 bytes), more than the per-volume limit of %d bytes (driver flag --tmpfs-size): split the class", where(), u.Bytes, len(files), d.capBytes)
	}
	need = u.Bytes + pageSize
	if d.cache != nil {
		need += content
	}
	return files, need, nil
}

// reserveFor makes room in the node budget for v to hold need bytes; the
// returned grow is for atomicwriter.Writer.Grow (old and new generation
// side by side until the swap) and settle records what v holds once the
// write is over. Without a node budget both do nothing.
func (d *Driver) reserveFor(v *volume, need int64) (grow func() error, settle func(written bool)) {
	if d.budget == nil {
		return nil, func(bool) {}
	}
	old := d.budget.Held(v.id)
	grow = func() error {
		if err := d.budget.Reserve(v.id, old+need); err != nil {
			return provider.Errorf(codes.ResourceExhausted, "%s: %s", "class \""+v.class+"\" in namespace \""+v.pod.Namespace+"\"", err.Error())
		}
		return nil
	}
	settle = func(written bool) {
		if written {
			_ = d.budget.Reserve(v.id, need) // shrinks: never fails
		} else {
			_ = d.budget.Reserve(v.id, old)
		}
		d.metrics.budgetUsed.Set(float64(d.budget.Used()))
	}
	return grow, settle
}

// holdMounted counts a volume found mounted (after a restart, or adopted)
// in the node budget with the pages its tmpfs holds now: they are charged
// already, whatever the budget says.
func (d *Driver) holdMounted(v *volume) {
	if d.budget == nil {
		return
	}
	var st unix.Statfs_t
	if err := unix.Statfs(v.target, &st); err != nil {
		return
	}
	d.budget.Hold(v.id, int64(st.Blocks-st.Bfree)*st.Bsize)
	d.metrics.budgetUsed.Set(float64(d.budget.Used()))
}
