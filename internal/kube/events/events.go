// Package events posts Kubernetes Events about the pods whose volumes the
// driver keeps: a Warning when a refresh of a mounted volume fails (the pod
// keeps its last good files, so nothing else would tell its owner), and
// optionally a Normal event when a refresh rotated the files. Two more say
// what a publish did that its owner would not otherwise see: a Normal event
// when optional objects were not found and left out, and a Warning when a
// new pod was served cached content because the backend failed.
//
// Posting never blocks the caller (a full queue drops the event), and the
// poster (post.go) aggregates similar events and rate-limits each pod's
// events as client-go's event correlator does, so a broken backend cannot
// flood the API server. Publish errors are not posted here: kubelet
// already reports them on the pod as FailedMount.
package events

import (
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"k8s.io/utils/clock"

	"github.com/secretfs/secretfs/internal/kube/kubecore"
	"github.com/secretfs/secretfs/provider"
)

// Reasons of the events this package posts.
const (
	ReasonRefreshFailed = "SecretRefreshFailed"
	ReasonRotated       = "SecretRotated"
	ReasonOmitted       = "SecretObjectsOmitted"
	ReasonServedStale   = "SecretServedStale"
)

// MaxMessage caps an event's message in bytes. The API server accepts more
// on core/v1 Events, but events.k8s.io/v1 notes are limited to 1 KiB, and an
// error that long is noise on `kubectl describe pod`.
const MaxMessage = 1024

// Options configure a Recorder.
type Options struct {
	// Component is the event source (kubectl shows it as "From"): the
	// driver name.
	Component string
	// Host is the node the driver runs on.
	Host string
	// Rotated also posts a Normal SecretRotated event for every refresh that
	// changed a volume's files.
	Rotated bool
}

// Recorder posts events about pods. Its methods are safe for concurrent use
// and never block on the API server.
type Recorder struct {
	poster  *poster
	rotated bool
}

// New returns a Recorder that posts core/v1 Events through the API server
// of cfg. It needs create and patch on events (patch: a repeated event's
// count is updated instead of another one created).
func New(cfg *rest.Config, opts Options) (*Recorder, error) {
	cfg = rest.CopyConfig(cfg)
	cfg.UserAgent = rest.DefaultKubernetesUserAgent() + " secretfs-events"
	client, err := kubecore.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("creating the events client: %w", err)
	}
	return newWithAPI(client, clock.RealClock{}, opts), nil
}

// newWithAPI returns a Recorder that posts through api (the API server, or
// a fake in tests) on clock's time.
func newWithAPI(api kubecore.EventsGetter, c clock.PassiveClock, opts Options) *Recorder {
	p := newPoster(api, corev1.EventSource{Component: opts.Component, Host: opts.Host}, c)
	return &Recorder{poster: p, rotated: opts.Rotated}
}

// RefreshFailed posts a Warning SecretRefreshFailed event on pod: the
// class, the gRPC code and the error's message (errors never carry secret
// values or tokens), capped at MaxMessage bytes.
func (r *Recorder) RefreshFailed(pod provider.Pod, class string, err error) {
	ref, ok := podRef(pod)
	if !ok || err == nil {
		return
	}
	r.poster.enqueue(ref, corev1.EventTypeWarning, ReasonRefreshFailed, RefreshFailedMessage(class, err))
}

// Rotated posts a Normal SecretRotated event on pod when the Recorder was
// made with Options.Rotated.
func (r *Recorder) Rotated(pod provider.Pod, class string) {
	ref, ok := podRef(pod)
	if !ok || !r.rotated {
		return
	}
	r.poster.enqueue(ref, corev1.EventTypeNormal, ReasonRotated,
		clip(fmt.Sprintf("Refreshed the files of SecretProviderClass %q with new content", class)))
}

// Omitted posts a Normal SecretObjectsOmitted event on pod: optional
// objects of class were not found and are not in the volume.
func (r *Recorder) Omitted(pod provider.Pod, class string, objects []string) {
	ref, ok := podRef(pod)
	if !ok || len(objects) == 0 {
		return
	}
	r.poster.enqueue(ref, corev1.EventTypeNormal, ReasonOmitted, OmittedMessage(class, objects))
}

// OmittedMessage is the message of a SecretObjectsOmitted event.
func OmittedMessage(class string, objects []string) string {
	return clip(fmt.Sprintf("SecretProviderClass %q: optional objects not found, left out of the volume: %s",
		class, strings.Join(objects, ", ")))
}

// ServedStale posts a Warning SecretServedStale event on pod: its backend
// failed with err, and the volume got this node's cached content of the
// same identity and class, fetched age ago.
func (r *Recorder) ServedStale(pod provider.Pod, class string, age time.Duration, err error) {
	ref, ok := podRef(pod)
	if !ok || err == nil {
		return
	}
	r.poster.enqueue(ref, corev1.EventTypeWarning, ReasonServedStale, ServedStaleMessage(class, age, err))
}

// ServedStaleMessage is the message of a SecretServedStale event.
func ServedStaleMessage(class string, age time.Duration, err error) string {
	return clip(fmt.Sprintf("The backend of SecretProviderClass %q failed, so the volume holds content this node fetched %s ago for the same service account and class (staleIfError): %s: %s",
		class, age.Round(time.Second), provider.CodeOf(err), errorMessage(err)))
}

// Warning posts a Warning event with reason and message on pod (for the
// Secret sync and other hooks). The message must not hold a secret value
// or a token; it is capped at MaxMessage bytes.
func (r *Recorder) Warning(pod provider.Pod, reason, message string) {
	ref, ok := podRef(pod)
	if !ok {
		return
	}
	r.poster.enqueue(ref, corev1.EventTypeWarning, reason, clip(message))
}

// Normal posts a Normal event with reason and message on pod (a hook's
// report of what it did, such as a restart on change). The message must not
// hold a secret value or a token; it is capped at MaxMessage bytes.
func (r *Recorder) Normal(pod provider.Pod, reason, message string) {
	ref, ok := podRef(pod)
	if !ok {
		return
	}
	r.poster.enqueue(ref, corev1.EventTypeNormal, reason, clip(message))
}

// Close stops posting; events still queued are dropped.
func (r *Recorder) Close() {
	r.poster.close()
}

// RefreshFailedMessage is the message of a SecretRefreshFailed event.
func RefreshFailedMessage(class string, err error) string {
	return clip(fmt.Sprintf("Refreshing the files of SecretProviderClass %q failed; the volume keeps its last good content: %s: %s",
		class, provider.CodeOf(err), errorMessage(err)))
}

// errorMessage is err's message without the "rpc error: code = ..." prefix
// of a gRPC status, cut to what an event can hold before it is formatted
// into one (an error may be long; the caller is a refresh or a publish).
func errorMessage(err error) string {
	if st, ok := status.FromError(err); ok {
		return clip(st.Message())
	}
	return clip(err.Error())
}

// podRef refers to pod; without a namespace and name there is nothing to
// post on.
func podRef(pod provider.Pod) (*corev1.ObjectReference, bool) {
	if pod.Namespace == "" || pod.Name == "" {
		return nil, false
	}
	return &corev1.ObjectReference{
		APIVersion: "v1", Kind: "Pod",
		Namespace: pod.Namespace, Name: pod.Name, UID: types.UID(pod.UID),
	}, true
}

// clip bounds an Event message to what the API server accepts.
func clip(s string) string { return provider.Clip(s, MaxMessage) }
