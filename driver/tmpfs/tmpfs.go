// Package tmpfs mounts, verifies, finds and unmounts the per-volume tmpfs
// file systems of secretfs.
//
// Mounting uses mount(2) directly: k8s.io/mount-utils would exec /bin/mount
// for every volume, which costs milliseconds and a binary in the image.
// Detection and cleanup use mount-utils, which knows the corner cases
// (corrupted mounts, mount-point heuristics, mountinfo format).
package tmpfs

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	mount "k8s.io/mount-utils"
)

// Source is the device name of every secretfs tmpfs; it is how mounts are
// found again in /proc/self/mountinfo after a restart.
const Source = "secretfs"

// Flags keep anything on the volume from becoming a device, a setuid binary
// or an executable.
const Flags = unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC

// Options of one mount.
type Options struct {
	SizeBytes int64       // the tmpfs size= cap
	Mode      os.FileMode // mode of the root directory
	GID       int         // group of the root directory; < 0 keeps root's
}

func (o Options) data() string {
	s := fmt.Sprintf("size=%d,mode=%04o", o.SizeBytes, o.Mode.Perm())
	if o.GID >= 0 {
		s += ",gid=" + strconv.Itoa(o.GID)
	}
	return s
}

// Mount mounts a fresh tmpfs at target, an existing directory, and checks
// that target now is that tmpfs.
func Mount(target string, opts Options) error {
	if opts.SizeBytes <= 0 {
		return fmt.Errorf("tmpfs size must be positive, got %d", opts.SizeBytes)
	}
	if err := unix.Mount(Source, target, "tmpfs", Flags, opts.data()); err != nil {
		return fmt.Errorf("mounting tmpfs at %s: %w", target, err)
	}
	if err := Verify(target); err != nil {
		_ = Unmount(target)
		return err
	}
	return nil
}

// ErrNotTmpfs is returned by Verify for a directory on any other file system.
var ErrNotTmpfs = errors.New("not a tmpfs")

// Verify checks, without following a final symlink, that target is a
// directory on a tmpfs.
func Verify(target string) error {
	fd, err := unix.Open(target, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("opening %s: %w", target, err)
	}
	defer unix.Close(fd)
	var st unix.Statfs_t
	if err := unix.Fstatfs(fd, &st); err != nil {
		return fmt.Errorf("statfs %s: %w", target, err)
	}
	if st.Type != unix.TMPFS_MAGIC {
		return fmt.Errorf("%s: %w (file system magic %#x)", target, ErrNotTmpfs, st.Type)
	}
	return nil
}

var mounter = &syscallUnmounter{Interface: mount.New("")}

// IsMountPoint reports whether target is a mount point. A missing target is
// not one.
func IsMountPoint(target string) (bool, error) {
	notMnt, err := mounter.IsLikelyNotMountPoint(target)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return !notMnt, nil
}

// Unmount unmounts target if it is a mount point and removes the directory.
// A missing target is fine.
func Unmount(target string) error {
	if _, err := os.Lstat(target); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return mount.CleanupMountPoint(target, mounter, false)
}

// List returns the mount points of all secretfs tmpfs mounts visible to this
// process.
func List() ([]string, error) {
	infos, err := mount.ParseMountInfo("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	var out []string
	for _, mi := range infos {
		if mi.FsType == "tmpfs" && mi.Source == Source {
			out = append(out, unescape(mi.MountPoint))
		}
	}
	return out, nil
}

// unescape decodes the octal escapes (\040 for a space) of mountinfo paths.
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// syscallUnmounter replaces mount-utils' Unmount (which execs umount) with
// umount(2). A busy mount is retried briefly and then detached: the tmpfs
// disappears from the tree at once and is freed when the last user lets go,
// so an unpublish never fails because some process still has a file open.
type syscallUnmounter struct {
	mount.Interface
}

func (s *syscallUnmounter) Unmount(target string) error {
	delay := 5 * time.Millisecond
	for attempt := 0; ; attempt++ {
		err := unix.Unmount(target, unix.UMOUNT_NOFOLLOW)
		switch {
		case err == nil, errors.Is(err, unix.EINVAL) && attempt > 0:
			return nil // EINVAL after a try: no longer a mount point
		case errors.Is(err, unix.EBUSY) && attempt < 3:
			time.Sleep(delay)
			delay *= 4
		case errors.Is(err, unix.EBUSY):
			if err := unix.Unmount(target, unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW); err != nil {
				return fmt.Errorf("detaching busy mount %s: %w", target, err)
			}
			return nil
		default:
			return fmt.Errorf("unmounting %s: %w", target, err)
		}
	}
}
