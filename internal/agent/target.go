package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"

	"github.com/secretfs/secretfs/driver"
	"github.com/secretfs/secretfs/driver/tmpfs"
)

// hostTarget is the target directory of `secretfs mount` (and of `secretfs
// run`, in its private mount namespace), held by descriptor from its check
// to its cleanup.
//
// The target and its parent may belong to a local user (a service's
// runtime directory), who can rename, remove and replace entries there at
// any moment, while the agent fetches for example. Everything the agent
// (and the in-process driver) does to the target therefore goes through a
// descriptor of its parent, opened once, and names only the target's last
// component, never following it:
//
//  1. the parent is resolved once, and must be the directory its path
//     names now (checked through /proc/self/fd; a parent swapped while it
//     was opened is refused);
//  2. the target is checked (lstat, created if missing) and opened
//     O_PATH|O_NOFOLLOW|O_DIRECTORY; the descriptor must be the directory
//     checked (device and inode);
//  3. the driver gets the target as /proc/self/fd/<parent>/<name>, so each
//     of its calls resolves the held parent and then one name, which the
//     tmpfs package opens O_NOFOLLOW and mounts onto by descriptor
//     (driver/tmpfs, fd.go): a target swapped for a symlink is refused,
//     never followed;
//  4. after the mount, the mount's root is opened and checked: a tmpfs
//     mounted on the directory of step 2 (mountinfo names its mount point),
//     or a volume of a previous run of this agent, adopted by the driver;
//  5. on stop, the mount is detached through its root's descriptor, wherever
//     it is now, and only then does the driver remove the directory.
type hostTarget struct {
	path    string // as given (absolute and clean), for messages and the volume id
	parent  int    // O_PATH descriptor of the parent directory
	name    string // the last component
	dir     int    // O_PATH|O_NOFOLLOW descriptor of the directory checked
	adopted bool   // a tmpfs was mounted there already (step 4)
	mount   int    // O_PATH descriptor of the mounted tmpfs's root, or -1
}

// openTarget does steps 1 and 2 for target (absolute and clean); a missing
// target (and missing parents) are created.
func openTarget(target string) (*hostTarget, error) {
	t := &hostTarget{path: target, parent: -1, dir: -1, mount: -1, name: filepath.Base(target)}
	if target == "/" || t.name == "." || t.name == ".." {
		return nil, fmt.Errorf("target %s is not a directory name", target)
	}
	// 1.
	parentPath := filepath.Dir(target)
	if err := os.MkdirAll(parentPath, 0o755); err != nil {
		return nil, err
	}
	canon, err := filepath.EvalSymlinks(parentPath)
	if err != nil {
		return nil, err
	}
	if t.parent, err = unix.Open(canon, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err != nil {
		return nil, fmt.Errorf("opening the parent of target %s: %w", target, err)
	}
	if now, err := os.Readlink(fdPath(t.parent)); err != nil || now != canon {
		t.close()
		return nil, fmt.Errorf("the parent directory of target %s changed while it was opened; refusing it", target)
	}
	// 2.
	var st unix.Stat_t
	err = unix.Fstatat(t.parent, t.name, &st, unix.AT_SYMLINK_NOFOLLOW)
	if errors.Is(err, unix.ENOENT) {
		if err = unix.Mkdirat(t.parent, t.name, 0o700); err == nil || errors.Is(err, unix.EEXIST) {
			err = unix.Fstatat(t.parent, t.name, &st, unix.AT_SYMLINK_NOFOLLOW)
		}
	}
	switch {
	case err != nil:
		t.close()
		return nil, fmt.Errorf("checking target %s: %w", target, err)
	case st.Mode&unix.S_IFMT == unix.S_IFLNK:
		t.close()
		return nil, fmt.Errorf("target %s is a symlink; refusing to mount through it", target)
	case st.Mode&unix.S_IFMT != unix.S_IFDIR:
		t.close()
		return nil, fmt.Errorf("target %s exists and is not a directory", target)
	}
	if t.dir, err = unix.Openat(t.parent, t.name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err != nil {
		t.close()
		return nil, fmt.Errorf("opening target %s: %w", target, err)
	}
	var held unix.Statx_t
	if err := unix.Statx(t.dir, "", unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW, unix.STATX_INO, &held); err != nil {
		t.close()
		return nil, err
	}
	if held.Ino != st.Ino || unix.Mkdev(held.Dev_major, held.Dev_minor) != st.Dev {
		t.close()
		return nil, fmt.Errorf("target %s changed while it was checked; refusing it", target)
	}
	t.adopted = held.Attributes_mask&unix.STATX_ATTR_MOUNT_ROOT != 0 && held.Attributes&unix.STATX_ATTR_MOUNT_ROOT != 0
	return t, nil
}

// via is the target as the driver gets it (step 3): the held parent, then
// the one name.
func (t *hostTarget) via() string { return fdPath(t.parent) + "/" + t.name }

// checkMounted is step 4, after the driver mounted: it keeps a descriptor
// of the mount's root for detach.
func (t *hostTarget) checkMounted() error {
	mfd, err := unix.Openat(t.parent, t.name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("opening the mounted target %s: %w", t.path, err)
	}
	t.mount = mfd
	if err := tmpfs.VerifyFd(mfd, t.path); err != nil {
		return err
	}
	if t.adopted {
		// The driver adopted it only as the volume its metadata names: this
		// agent's own, from a run that did not clean up.
		return nil
	}
	on, err := tmpfs.MountedOn(mfd, t.dir)
	if err != nil {
		return fmt.Errorf("checking the mount at %s: %w", t.path, err)
	}
	if !on {
		return fmt.Errorf("target %s was replaced while it was mounted; refusing it", t.path)
	}
	return nil
}

// publish publishes req through d at t (steps 3 and 4) and returns the
// unpublish that goes with it (step 5). A mount that fails step 4 is
// undone.
func (t *hostTarget) publish(ctx context.Context, d *driver.Driver, req *csi.NodePublishVolumeRequest) (unpublish func() error, err error) {
	req.TargetPath = t.via()
	unpublish = func() error {
		stop, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		derr := t.detach()
		// The driver finds the tmpfs gone, removes the directory and
		// forgets the volume.
		_, err := d.NodeUnpublishVolume(stop, &csi.NodeUnpublishVolumeRequest{VolumeId: req.VolumeId, TargetPath: req.TargetPath})
		return errors.Join(derr, err)
	}
	if _, err := d.NodePublishVolume(ctx, req); err != nil {
		return nil, err
	}
	if err := t.checkMounted(); err != nil {
		return nil, errors.Join(err, unpublish())
	}
	return unpublish, nil
}

// detach is step 5: the mount goes, wherever it is now.
func (t *hostTarget) detach() error {
	if t.mount < 0 {
		return nil
	}
	err := tmpfs.DetachFd(t.mount)
	unix.Close(t.mount)
	t.mount = -1
	if err != nil {
		return fmt.Errorf("detaching the tmpfs of %s: %w", t.path, err)
	}
	return nil
}

// close releases the descriptors (detach first).
func (t *hostTarget) close() {
	for _, fd := range []*int{&t.mount, &t.dir, &t.parent} {
		if *fd >= 0 {
			unix.Close(*fd)
			*fd = -1
		}
	}
}

// fdPath is the magic link of fd in /proc.
func fdPath(fd int) string { return "/proc/self/fd/" + strconv.Itoa(fd) }
