// Package tmpfs mounts, verifies, finds and unmounts the per-volume tmpfs
// file systems of secretfs.
//
// Mounting uses the mount system calls directly, onto a descriptor of the
// target (fd.go): k8s.io/mount-utils would exec /bin/mount for every
// volume, which costs milliseconds and a binary in the image, and would
// resolve the target by path.
// Detection and the mountinfo format use mount-utils, which knows the corner
// cases. Unmounting is umount(2) followed by rmdir(2).
package tmpfs

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
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
	UID       int         // owner of the root directory; 0 keeps root
	// Inodes is the nr_inodes= cap: files, directories and symlinks of the
	// volume together. 0 leaves the kernel's default (half the pages of
	// RAM), which is far more than any volume needs.
	Inodes int64
	// Logger is told once per process whether mounts use noswap.
	Logger *slog.Logger
}

// params are the tmpfs options of a mount, in fsconfig(2)'s key=value form
// (mount(2)'s data string joins them with commas).
func (o Options) params(noswap bool) [][2]string {
	mode := strconv.FormatUint(uint64(o.Mode.Perm()), 8) // at most 3 digits
	p := make([][2]string, 0, 6)
	p = append(p, [2]string{"size", strconv.FormatInt(o.SizeBytes, 10)}, [2]string{"mode", "0000"[len(mode):] + mode})
	if o.Inodes > 0 {
		p = append(p, [2]string{"nr_inodes", strconv.FormatInt(o.Inodes, 10)})
	}
	if o.GID >= 0 {
		p = append(p, [2]string{"gid", strconv.Itoa(o.GID)})
	}
	if o.UID > 0 {
		p = append(p, [2]string{"uid", strconv.Itoa(o.UID)})
	}
	if noswap {
		p = append(p, [2]string{"noswap", ""})
	}
	return p
}

// Whether the kernel takes the noswap option (Linux 6.4 and later): unknown
// until the first mount tries it.
const (
	swapUnknown int32 = iota
	swapNoSwap
	swapMaySwap
)

var swapMode atomic.Int32

// NoSwap reports whether mounts are made with noswap, and whether that is
// known yet (it is after the first successful Mount).
func NoSwap() (noswap, known bool) {
	m := swapMode.Load()
	return m == swapNoSwap, m != swapUnknown
}

// Mount mounts a fresh tmpfs at target, an existing directory, and checks
// that target now is that tmpfs.
//
// Target is resolved once, without following a final symlink
// (O_PATH|O_NOFOLLOW|O_DIRECTORY), and the tmpfs is attached to that very
// directory (fd.go): a target swapped for a symlink after the caller checked
// it is refused, never followed, and the check afterwards looks at the new
// mount through its own descriptor, not by path.
//
// Secrets must not reach a disk, so the tmpfs is mounted noswap: its pages
// are never written to swap. Kernels before 6.4 reject the option with
// EINVAL; then Mount mounts without it (a node without swap loses nothing)
// and every later mount does the same. Either way opts.Logger hears once
// which it is.
func Mount(target string, opts Options) error {
	mfd, err := MountRoot(target, opts)
	if err != nil {
		return err
	}
	return unix.Close(mfd)
}

// MountRoot is Mount that returns an O_PATH descriptor of the new tmpfs's
// root, checked to be a tmpfs: the caller can write into the very mount it
// made (the *at system calls take it as a directory) without looking the
// target up again, and closes it.
func MountRoot(target string, opts Options) (int, error) {
	if opts.SizeBytes <= 0 {
		return -1, fmt.Errorf("tmpfs size must be positive, got %d", opts.SizeBytes)
	}
	dirfd, err := unix.Open(target, unix.O_PATH|unix.O_NOFOLLOW|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.ELOOP) {
		return -1, fmt.Errorf("%s is not a directory (a symlink is never followed): %w", target, err)
	}
	if err != nil {
		return -1, fmt.Errorf("opening %s: %w", target, err)
	}
	defer unix.Close(dirfd)
	mfd, err := MountAt(dirfd, opts)
	if err != nil {
		return -1, fmt.Errorf("mounting tmpfs at %s: %w", target, err)
	}
	if err := verifyFd(mfd, target); err != nil {
		_ = DetachFd(mfd)
		unix.Close(mfd)
		return -1, err
	}
	return mfd, nil
}

// MountAt mounts a fresh tmpfs with opts onto the directory dirfd (any
// descriptor of it, O_PATH included) and returns an O_PATH descriptor of
// the new mount's root; the caller closes it. Noswap as for Mount.
func MountAt(dirfd int, opts Options) (int, error) {
	if opts.SizeBytes <= 0 {
		return -1, fmt.Errorf("tmpfs size must be positive, got %d", opts.SizeBytes)
	}
	mode := swapMode.Load()
	mfd, err := mountFd(dirfd, opts, mode != swapMaySwap)
	if mode == swapUnknown && errors.Is(err, unix.EINVAL) {
		// Either noswap or another option is refused: try without noswap.
		if mfd, err = mountFd(dirfd, opts, false); err == nil {
			decideSwap(swapMaySwap, opts.Logger)
		}
	} else if mode == swapUnknown && err == nil {
		decideSwap(swapNoSwap, opts.Logger)
	}
	return mfd, err
}

// decideSwap records the kernel's answer; the first to learn it logs it.
func decideSwap(mode int32, log *slog.Logger) {
	if !swapMode.CompareAndSwap(swapUnknown, mode) || log == nil {
		return
	}
	if mode == swapNoSwap {
		log.Info("volume tmpfs mounts use noswap: secret pages are never written to swap")
	} else {
		log.Warn("this kernel does not support the tmpfs noswap option (Linux 6.4 and later do): volume pages can be swapped out if the node has swap; disable swap on the node to keep secrets off disk")
	}
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
	return verifyFd(fd, target)
}

// VerifyFd checks that the open directory fd is on a tmpfs; name is for
// messages.
func VerifyFd(fd int, name string) error { return verifyFd(fd, name) }

func verifyFd(fd int, name string) error {
	var st unix.Statfs_t
	if err := unix.Fstatfs(fd, &st); err != nil {
		return fmt.Errorf("statfs %s: %w", name, err)
	}
	if st.Type != unix.TMPFS_MAGIC {
		return fmt.Errorf("%s: %w (file system magic %#x)", name, ErrNotTmpfs, st.Type)
	}
	return nil
}

// VerifyMounted checks that target is a mount point and (Verify) a
// directory on a tmpfs: unmounted or replaced behind our back, it is not.
func VerifyMounted(target string) error {
	if mounted, err := IsMountPoint(target); err != nil || !mounted {
		return fmt.Errorf("target %s is not mounted", target)
	}
	return Verify(target)
}

// Usage is what the file system at target holds in bytes (the pages a
// tmpfs charges), and whether it is a tmpfs.
func Usage(target string) (used int64, isTmpfs bool, err error) {
	var st unix.Statfs_t
	if err := unix.Statfs(target, &st); err != nil {
		return 0, false, err
	}
	return int64(st.Blocks-st.Bfree) * st.Bsize, st.Type == unix.TMPFS_MAGIC, nil
}

// mounter is built on first use: mount.New runs umount once to probe its
// behaviour, which a process that never asks should not pay at start-up.
var mounter = sync.OnceValue(func() mount.Interface { return mount.New("") })

// IsMountPoint reports whether target is a mount point. A missing target is
// not one.
func IsMountPoint(target string) (bool, error) {
	notMnt, err := mounter().IsLikelyNotMountPoint(target)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return !notMnt, nil
}

// Unmount unmounts target if it is a mount point and removes it (a
// directory, or whatever else is there; a symlink is not followed).
// A missing target is fine. umount(2) itself tells a mount point (and a
// corrupted one) from a plain directory, so this costs two system calls,
// not the stat/unmount/stat/remove round of mount-utils' CleanupMountPoint.
func Unmount(target string) error {
	err := unmount(target)
	switch {
	case errors.Is(err, unix.ENOENT):
		return nil
	case errors.Is(err, errNotMounted):
	case err != nil:
		return err
	}
	err = unix.Rmdir(target)
	switch {
	case err == nil, errors.Is(err, unix.ENOENT):
		return nil
	case errors.Is(err, unix.ENOTDIR):
		if err := unix.Unlink(target); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("removing %s: %w", target, err)
		}
		return nil
	case errors.Is(err, unix.EBUSY):
		return fmt.Errorf("failed to unmount path %s: another file system is still mounted there", target)
	}
	return fmt.Errorf("removing %s: %w", target, err)
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

// IsSecretfs reports whether target is the mount point of a secretfs
// tmpfs: a tmpfs (statfs, not following a final symlink) whose mount source
// in /proc/self/mountinfo is Source.
func IsSecretfs(target string) bool {
	if Verify(target) != nil {
		return false
	}
	list, err := List()
	return err == nil && slices.Contains(list, target)
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

// errNotMounted: target was not a mount point.
var errNotMounted = errors.New("not a mount point")

// unmount is umount(2), never following a symlink. A busy mount is retried
// briefly and then detached: the tmpfs disappears from the tree at once and
// is freed when the last user lets go, so an unpublish never fails because
// some process still has a file open.
func unmount(target string) error {
	delay := 5 * time.Millisecond
	for attempt := 0; ; attempt++ {
		err := unix.Unmount(target, unix.UMOUNT_NOFOLLOW)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, unix.EINVAL) && attempt == 0:
			return errNotMounted
		case errors.Is(err, unix.EINVAL):
			return nil // unmounted between two tries
		case errors.Is(err, unix.ENOENT):
			return err
		case errors.Is(err, unix.EBUSY) && attempt < 3:
			time.Sleep(delay)
			delay *= 4
		case errors.Is(err, unix.EBUSY):
			if err := unix.Unmount(target, unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW); err != nil {
				return fmt.Errorf("detaching busy mount %s: %w", target, err)
			}
			return nil
		case errors.Is(err, unix.EINTR):
		default:
			return fmt.Errorf("unmounting %s: %w", target, err)
		}
	}
}
