// Package ignored tells a pod's owner, with one Warning Event per volume,
// what of the pod's SecretProviderClass the driver does not act on: spec
// fields it does not know, spec.secretObjects while sync to Kubernetes
// Secrets is off, and secretfs.dev/onChange: restart while restarts on
// change are off. The volume still mounts; nothing is dropped silently.
package ignored

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"github.com/secretfs/secretfs/driver/hook"
	"github.com/secretfs/secretfs/provider"
)

// Reason of the Event.
const Reason = "SecretProviderClassIgnored"

// EventSink posts an Event on a pod; it must not block.
type EventSink interface {
	Warning(pod provider.Pod, reason, message string)
}

// Hook is a driver hook (hook.Hook) that posts the Event on a volume's first
// Changed (after a driver restart, once more).
type Hook struct {
	events EventSink
	// syncOn: spec.secretObjects are acted on (internal/kube/secretsync).
	syncOn bool
	// restartOn: secretfs.dev/onChange: restart is acted on
	// (internal/kube/restart).
	restartOn bool

	mu   sync.Mutex
	told map[string]bool // volume ids already told
}

var _ hook.Hook = (*Hook)(nil)

// New returns a Hook posting to events; syncOn says whether Secret sync
// is on, restartOn whether restarts on change are.
func New(events EventSink, syncOn, restartOn bool) *Hook {
	return &Hook{events: events, syncOn: syncOn, restartOn: restartOn, told: map[string]bool{}}
}

// Changed posts the Event if v's class has something the driver ignores
// and v's pod has not been told yet.
func (h *Hook) Changed(_ context.Context, v hook.Volume) {
	if v.Class == nil {
		return
	}
	restart, _ := v.Class.RestartOnChange()
	msg := Message(v.Class.Name, v.Class.Unknown, len(v.Class.SecretObjects), h.syncOn, restart && !h.restartOn)
	if msg == "" {
		return
	}
	h.mu.Lock()
	told := h.told[v.ID]
	h.told[v.ID] = true
	h.mu.Unlock()
	if !told {
		h.events.Warning(v.Pod, Reason, msg)
	}
}

// Gone forgets v.
func (h *Hook) Gone(v hook.Volume) {
	h.mu.Lock()
	delete(h.told, v.ID)
	h.mu.Unlock()
}

// Message says what of class is ignored and how to change that; empty when
// nothing is.
// restartIgnored: the class asks for restarts on change, which are off.
func Message(class string, unknown []string, secretObjects int, syncOn, restartIgnored bool) string {
	var parts []string
	if restartIgnored {
		parts = append(parts, "secretfs.dev/onChange: restart has no effect: restarts on change are off on this driver; an admin turns them on with --restart-on-change and the restart-on-change RBAC (kustomize component deploy/components/restart-on-change, or the chart's restartOnChange.enabled=true)")
	}
	if secretObjects > 0 && !syncOn {
		parts = append(parts, fmt.Sprintf("spec.secretObjects (%d Secrets) is not synced: Secret sync is off on this driver; an admin turns it on with --sync-secrets and the sync-secrets RBAC (kustomize component deploy/components/sync-secrets, or the chart's syncSecret.enabled=true)", secretObjects))
	}
	if len(unknown) > 0 {
		names := unknown
		if len(names) > 16 {
			names = append(names[:16:16], fmt.Sprintf("and %d more", len(unknown)-16))
		}
		parts = append(parts, fmt.Sprintf("the spec fields %s are not known to this driver and have no effect: remove them, or check the field names", strings.Join(names, ", ")))
	}
	if len(parts) == 0 {
		return ""
	}
	return fmt.Sprintf("SecretProviderClass %q: the volume is mounted, but %s", class, strings.Join(parts, "; "))
}
