package driver

import (
	"fmt"
	"os"

	"github.com/secretfs/secretfs/driver/atomicwriter"
	"github.com/secretfs/secretfs/driver/tmpfs"
	"github.com/secretfs/secretfs/provider"
)

// Owner gives every volume of a driver to one local user: the local agent
// outside Kubernetes (secretfs mount and run), where no kubelet directory
// of mode 0750 stands between the volume and the other users of the host.
// The tmpfs root is UID:GID with RootMode, every file and directory
// belongs to UID:GID, and objects without a filePermission of their own
// get FileMode. A class's filePermission still applies.
type Owner struct {
	UID, GID int // >= 0; 0:0 is root
	RootMode os.FileMode
	FileMode os.FileMode
}

// LocalOwner is the local agent's default: root's alone (0700, files 0600).
var LocalOwner = Owner{RootMode: 0o700, FileMode: 0o600}

func (o *Owner) validate() error {
	switch {
	case o.UID < 0 || o.GID < 0:
		return fmt.Errorf("driver: Owner %d:%d: user and group must be >= 0", o.UID, o.GID)
	case o.RootMode&^0o777 != 0 || o.RootMode&0o700 != 0o700:
		return fmt.Errorf("driver: Owner root mode %04o: only permission bits, and the owner needs rwx", o.RootMode)
	case o.FileMode&^0o777 != 0 || o.FileMode == 0:
		return fmt.Errorf("driver: Owner file mode %04o: only permission bits, and not 0", o.FileMode)
	}
	return nil
}

// mountOptions are the tmpfs options of v's root: the owner's, or the
// pod's fsGroup with kubelet's modes (see rootModeWithGroup).
func (d *Driver) mountOptions(v *volume) tmpfs.Options {
	opts := tmpfs.Options{SizeBytes: d.mountBytes, Mode: rootModeNoGroup, GID: v.gid, Inodes: d.limits.Inodes(), Logger: d.log}
	switch {
	case d.owner != nil:
		opts.Mode, opts.UID, opts.GID = d.owner.RootMode, d.owner.UID, d.owner.GID
	case v.gid >= 0:
		opts.Mode = rootModeWithGroup
	}
	return opts
}

// writer writes v's files, after checking (with statfs on the very
// directory it writes to) that v's target is a tmpfs; grow is the node
// budget's (see Writer.Grow).
func (d *Driver) writer(v *volume, grow func() error) *atomicwriter.Writer {
	w := &atomicwriter.Writer{Dir: v.target, GID: v.gid, Check: func(fd int) error { return tmpfs.VerifyFd(fd, v.target) }, Grow: grow}
	if o := d.owner; o != nil {
		w.UID, w.GID = o.UID, o.GID
	}
	return w
}

// defaultFileMode is the mode of objects without a filePermission.
func (d *Driver) defaultFileMode() os.FileMode {
	if d.owner != nil {
		return d.owner.FileMode
	}
	return provider.DefaultFileMode
}
