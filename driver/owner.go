package driver

import (
	"fmt"
	"os"
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

// Root directory modes: with the pod's fsGroup (VOLUME_MOUNT_GROUP) the tmpfs
// root is root:fsGroup 0750; without one it must be world-traversable for a
// non-root pod to read its files at all. Either way only this pod's
// containers can reach it: kubelet's pod directories are 0750 root.
const (
	rootModeWithGroup = 0o750
	rootModeNoGroup   = 0o755
)

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
