package driver

import (
	"errors"
	"io/fs"
	"os"
	"path"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/secretfs/secretfs/driver/atomicwriter"
	"github.com/secretfs/secretfs/driver/content"
	"github.com/secretfs/secretfs/driver/limits"
	"github.com/secretfs/secretfs/driver/metadata"
	"github.com/secretfs/secretfs/driver/tmpfs"
	"github.com/secretfs/secretfs/provider"
)

// What the driver does differently for external providers (provider.External):
//
//   - They may write the files into the target themselves and return none
//     (the Secrets Store CSI Driver's provider-writes mode, the AWS
//     provider's default). So the tmpfs is mounted and verified before they
//     are called (mountTmpfs, verifyTarget): no provider ever sees a target
//     that is not the volume's own tmpfs, and what it writes is bounded by
//     the tmpfs size. What they wrote is checked against the volume's cap
//     (checkWritten).
//   - Their answers may differ per pod or per call, so the node cache shares
//     them only where the admin or the class opts in (content.Shareable).

// mountTmpfs mounts v's tmpfs if it is not mounted yet.
func (d *Driver) mountTmpfs(v *volume) error {
	if v.mounted {
		return nil
	}
	if err := tmpfs.Mount(v.target, d.mountOptions(v)); err != nil {
		return status.Errorf(codes.Internal, "mounting tmpfs: %v", err)
	}
	v.mounted = true
	return nil
}

// verifyTarget refuses to hand an external provider a target that is not
// v's tmpfs (unmounted or replaced behind the driver's back).
func verifyTarget(v *volume) error {
	if mounted, err := tmpfs.IsMountPoint(v.target); err != nil || !mounted {
		return status.Errorf(codes.Internal, "not calling provider %q: target %s is not mounted", v.provider, v.target)
	}
	if err := tmpfs.Verify(v.target); err != nil {
		return status.Errorf(codes.Internal, "not calling provider %q: %v", v.provider, err)
	}
	return nil
}

// checkWritten checks what an external provider wrote into v's tmpfs: the
// target is still a tmpfs and holds at most the volume's cap (plus a page
// for the driver's metadata file); the tmpfs size already stopped anything
// larger than the mount. It reports whether the versions changed and, when
// they did and hooks want the files, reads them back (wipe them after use).
func (d *Driver) checkWritten(v *volume, external, first bool, plan *content.Plan, res *provider.Result) ([]atomicwriter.File, bool, error) {
	if !external {
		return nil, false, status.Errorf(codes.Internal, "built-in provider %q returned no files", v.provider)
	}
	if plan.NeedsFiles() {
		return nil, false, provider.Errorf(codes.FailedPrecondition, "class %q in namespace %q uses templates, keyPath or optional objects, which need the files from the provider, but provider %q wrote them into the volume itself: configure it to return the files (the AWS provider: driverWritesSecrets) or drop those settings", v.class, v.pod.Namespace, v.provider)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(v.target, &st); err != nil || st.Type != unix.TMPFS_MAGIC {
		return nil, false, status.Errorf(codes.Internal, "after provider %q wrote the files, %s is not a tmpfs", v.provider, v.target)
	}
	used := int64(st.Blocks-st.Bfree) * st.Bsize
	if used > d.limits.MaxBytes+limits.PageSize {
		return nil, false, provider.Errorf(codes.ResourceExhausted, "provider %q wrote %d bytes into the volume of class %q in namespace %q, more than the per-volume limit of %d bytes: split the class or raise the driver's tmpfs size", v.provider, used, v.class, v.pod.Namespace, d.limits.MaxBytes)
	}
	changed := first || !slices.Equal(v.versions, res.Versions)
	if !changed || len(d.hooks) == 0 {
		return nil, changed, nil
	}
	files, err := d.readWritten(v)
	return files, changed, err
}

// wipeFiles zeroes the contents of files.
func wipeFiles(files []atomicwriter.File) {
	for _, f := range files {
		clear(f.Data)
	}
}

// readWritten reads back the files an external provider wrote, for the
// hooks: regular files below target (no symlink leaves it), without the
// driver's own, at most MaxFiles and MaxBytes.
func (d *Driver) readWritten(v *volume) ([]atomicwriter.File, error) {
	root, err := os.OpenRoot(v.target)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	var files []atomicwriter.File
	var total int64
	errTooMuch := errors.New("too many files or bytes")
	err = fs.WalkDir(root.FS(), ".", func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if e.IsDir() {
			if p != "." && strings.HasPrefix(path.Base(p), "..") {
				return fs.SkipDir
			}
			return nil
		}
		if p == metadata.File || !e.Type().IsRegular() {
			return nil
		}
		fi, err := e.Info()
		if err != nil {
			return err
		}
		if total += fi.Size(); total > d.limits.MaxBytes || len(files) >= d.limits.MaxFiles {
			return errTooMuch
		}
		data, err := root.ReadFile(p)
		if err != nil {
			return err
		}
		files = append(files, atomicwriter.File{Path: p, Mode: fi.Mode().Perm(), Data: data})
		return nil
	})
	if err != nil {
		wipeFiles(files)
		return nil, status.Errorf(codes.Internal, "reading back the files provider %q wrote: %v", v.provider, err)
	}
	return files, nil
}
