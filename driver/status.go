package driver

import (
	"cmp"
	"encoding/json"
	"net/http"
	"slices"
	"sync"
	"time"
)

// VolumeStatus is what `secretfs status` shows of one mounted volume: where
// it is, what it holds in counts, and how its refreshes go. Never a secret
// value, a token or a file name: only counts, times and the last error's
// message (the message kubelet or the pod's events would show).
type VolumeStatus struct {
	VolumeID  string `json:"volumeID"`
	Namespace string `json:"namespace"`
	Pod       string `json:"pod"`
	Class     string `json:"class"`
	Provider  string `json:"provider"`
	// Files and Bytes are the files and bytes of content last written (for
	// a volume recovered after a restart and not refreshed since: the
	// objects mounted, and 0 bytes).
	Files int   `json:"files"`
	Bytes int64 `json:"bytes"`
	// LastFetch is when the backend call behind the content started.
	LastFetch time.Time `json:"lastFetch"`
	// RotationInterval is the volume's rotation interval: its class's own
	// (secretfs.dev/rotationInterval, clamped) or the driver's.
	RotationInterval Interval `json:"rotationInterval"`
	// NextRefresh is when the next republish refreshes the volume (a
	// provider watch can refresh it sooner).
	NextRefresh time.Time `json:"nextRefresh"`
	// LastError is the message of the last failed refresh, empty after a
	// successful one.
	LastError string `json:"lastError,omitempty"`
}

// Interval is a duration written as text ("5m0s") in JSON, formatted only
// when the status is asked for.
type Interval time.Duration

func (i Interval) String() string { return time.Duration(i).String() }

// MarshalText writes the duration as Go writes it.
func (i Interval) MarshalText() ([]byte, error) { return []byte(i.String()), nil }

// UnmarshalText reads what MarshalText wrote.
func (i *Interval) UnmarshalText(b []byte) error {
	d, err := time.ParseDuration(string(b))
	*i = Interval(d)
	return err
}

// statusBoard holds a VolumeStatus per volume, written by the holder of the
// volume's lock and read without it, so `secretfs status` never waits for a
// publish or a slow backend.
type statusBoard struct {
	mu   sync.Mutex
	vols map[string]VolumeStatus
}

// Status returns the mounted volumes, by namespace, pod and volume id.
func (d *Driver) Status() []VolumeStatus {
	d.status.mu.Lock()
	out := make([]VolumeStatus, 0, len(d.status.vols))
	for _, s := range d.status.vols {
		out = append(out, s)
	}
	d.status.mu.Unlock()
	slices.SortFunc(out, func(a, b VolumeStatus) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Pod, b.Pod), cmp.Compare(a.VolumeID, b.VolumeID))
	})
	return out
}

// StatusHandler serves Status as JSON (GET /volumes), for `secretfs status`
// over the driver's local status socket.
func (d *Driver) StatusHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /volumes", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(d.Status())
	})
	return mux
}
