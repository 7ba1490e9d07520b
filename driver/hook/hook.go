// Package hook is the contract of the driver's two hook points (Config.Hooks):
// a volume's content changed, and a volume is gone. The driver calls them
// from apply and forget; the Secret sync, the pod status writer, the
// restart on change, the ignored-fields Event and the local agent
// implement them.
package hook

import (
	"context"

	"github.com/secretfs/secretfs/driver/class"
	"github.com/secretfs/secretfs/provider"
)

// Volume is what hooks are told about a volume. It never carries tokens
// or nodePublishSecretRef data.
type Volume struct {
	ID     string
	Target string
	Pod    provider.Pod
	// Class is the class as apply last looked it up; nil for a volume
	// recovered after a restart and not refreshed since.
	Class    *class.Class
	Provider string
	// First: this Changed is the volume's first publish (its content is
	// new to the pod, not a change of it). A volume recovered after a
	// driver restart is not first again, except when the driver died while
	// telling the hooks of its first publish (see Hold).
	First bool
	// Files is the content just written (Changed only), modes resolved. The
	// contents belong to the driver and are wiped after the hook returns:
	// copy what you keep.
	Files []provider.File
	// Versions are the object versions the backend reported for the files
	// mounted now.
	Versions []provider.ObjectVersion
	// Hold is for a hook that finishes its part of a change after Changed
	// returns (a queue): it holds the change open until the returned func
	// is called (once; more calls do nothing). A change that the driver
	// was telling the hooks, or that a hook still held, when the driver
	// died is told again by the next driver, at the volume's first
	// republish after the restart: First as it was, the files as they are
	// then. So a hook must take one change twice without doing it twice.
	// Nil outside the driver.
	Hold func() (done func())
}

// Hook is told when a volume's content changed and when it is gone.
// Both run under the volume's lock, so calls for one volume never overlap;
// they should not block for long (a first publish waits for Changed).
type Hook interface {
	// Changed: new content is on the tmpfs. On a first publish it is called
	// before NodePublishVolume returns; on a refresh only when the files
	// changed.
	Changed(ctx context.Context, v Volume)
	// Gone: the volume is no longer on this node (unpublished, found
	// unmounted, or its first publish failed after Changed was not called).
	Gone(v Volume)
}
