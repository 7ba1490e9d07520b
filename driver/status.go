package driver

import (
	"cmp"
	"encoding/json"
	"net/http"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/secretfs/secretfs/provider"
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
	// LastRequestedRefresh is when a refresh was last asked for (class
	// annotation or `secretfs refresh`), and RequestedBy by which.
	LastRequestedRefresh time.Time `json:"lastRequestedRefresh,omitzero"`
	RequestedBy          string    `json:"requestedBy,omitempty"`
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

// RefreshReply is the answer to POST /refresh: how many volumes the
// request selected on this node, or why it was refused.
type RefreshReply struct {
	Volumes int    `json:"volumes"`
	Error   string `json:"error,omitempty"`
}

// StatusHandler serves the driver's local status socket: Status as JSON
// (GET /volumes, for `secretfs status`) and requested refreshes (POST
// /refresh with a RefreshTarget as JSON, for `secretfs refresh`).
func (d *Driver) StatusHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /volumes", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(d.Status())
	})
	mux.HandleFunc("POST /refresh", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		var t RefreshTarget
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4<<10))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&t); err != nil {
			w.WriteHeader(http.StatusBadRequest)
			_ = json.NewEncoder(w).Encode(RefreshReply{Error: "the request is not a JSON object with namespace and class or pod"})
			return
		}
		n, err := d.RequestRefresh(t, RequestedByCommand)
		if err != nil {
			code := http.StatusBadRequest
			if provider.CodeOf(err) == codes.ResourceExhausted {
				code = http.StatusTooManyRequests
			}
			w.WriteHeader(code)
			_ = json.NewEncoder(w).Encode(RefreshReply{Error: err.Error()})
			return
		}
		_ = json.NewEncoder(w).Encode(RefreshReply{Volumes: n})
	})
	return mux
}
