// Package provider is the contract between the driver and the secret backends.
//
// The driver resolves a SecretProviderClass, builds a Request from the pod's
// identity and the class parameters, and asks a Provider for the complete set
// of files. Backends live in sub-packages (provider/fake, provider/azure,
// provider/kubernetes, provider/plugin) and never import the driver.
package provider

import (
	"context"
	"os"
	"time"
)

// Pod identifies the workload a volume is published for. Backends must scope
// every read to this identity: Namespace bounds what may be read at all.
type Pod struct {
	Namespace      string
	Name           string
	UID            string
	ServiceAccount string
}

// Token is a service-account token that kubelet minted for one audience
// (CSIDriver spec.tokenRequests). It is a credential: never log it.
type Token struct {
	Token               string    `json:"token"`
	ExpirationTimestamp time.Time `json:"expirationTimestamp"`
}

// ObjectVersion is the version of one object as last mounted. IDs are chosen
// by the backend and are stable for the same object spec.
type ObjectVersion struct {
	ID      string
	Version string
}

// Request asks a backend for the files of one volume.
type Request struct {
	Pod Pod
	// Class is the SecretProviderClass name, for messages and per-class
	// behaviour (such as fake fault injection). Never an authorization input.
	Class string
	// Tokens are keyed by audience, exactly as kubelet passes them in
	// csi.storage.k8s.io/serviceAccount.tokens.
	Tokens map[string]Token
	// Parameters are the class's spec.parameters. Volume attributes never
	// override them.
	Parameters map[string]string
	// Secrets is the data of the volume's nodePublishSecretRef, if any.
	Secrets map[string]string
	// TargetPath is where the volume is mounted. Backends must not write
	// there (the driver writes the returned files itself), except External
	// ones, which may (see Result.WrittenByProvider): for them it is always
	// the volume's mounted tmpfs, verified with statfs before the call.
	TargetPath string
	// DefaultMode is the mode for files whose object sets none.
	DefaultMode os.FileMode
	// CurrentVersions are the versions mounted now (empty on first publish).
	CurrentVersions []ObjectVersion
	// Limits bound what the fetch may allocate; backends enforce them while
	// reading (see Budget). Zero: DefaultMaxBytes and DefaultMaxFiles.
	Limits Limits
	// Flight, when set, is this fetch's share of the node's bound of all
	// fetches' answers (InFlight): Budget.Wire charges it too. The caller
	// that set it calls its Done.
	Flight *Flight
	// Turn, when set, waits for the volume's turn among the node's
	// computations over tenant input and returns what ends it. A backend
	// decodes the class's parameters in a turn (TakeTurn), and never waits
	// for anything else during it.
	Turn func() (end func(), err error)
}

// TakeTurn takes r's turn for a computation over the class's parameters;
// without a Turn it returns at once.
func (r *Request) TakeTurn() (end func(), err error) {
	if r == nil || r.Turn == nil {
		return func() {}, nil
	}
	return r.Turn()
}

// File is one file of a volume. Path is relative and slash-separated; the
// driver validates it before writing.
type File struct {
	Path     string
	Mode     os.FileMode
	Contents []byte
}

// Result is the complete content of a volume: all files or an error, never a
// partial set. It belongs to the caller, which zeroes the file contents once
// they are written (or the node cache lets go of them): a backend must not
// keep or share the Contents slices it returns.
type Result struct {
	Files    []File
	Versions []ObjectVersion
	// WrittenByProvider: an External backend wrote the volume's files into
	// Request.TargetPath itself and returned none (the Secrets Store CSI
	// Driver's provider-writes mode, the AWS provider's default). The files
	// are on that volume's tmpfs only: such a result is never shared.
	WrittenByProvider bool
}

// Clone returns a deep copy of r, the file contents in one allocation.
func (r *Result) Clone() *Result {
	n := 0
	for _, f := range r.Files {
		n += len(f.Contents)
	}
	buf := make([]byte, 0, n)
	out := &Result{Files: make([]File, len(r.Files))}
	for i, f := range r.Files {
		start := len(buf)
		buf = append(buf, f.Contents...)
		out.Files[i] = File{Path: f.Path, Mode: f.Mode, Contents: buf[start:len(buf):len(buf)]}
	}
	if r.Versions != nil {
		out.Versions = append([]ObjectVersion(nil), r.Versions...)
	}
	out.WrittenByProvider = r.WrittenByProvider
	return out
}

// Wipe zeroes the file contents of r; a nil r is fine.
func (r *Result) Wipe() {
	if r == nil {
		return
	}
	for _, f := range r.Files {
		clear(f.Contents)
	}
}

// Provider fetches the files of a volume from one backend.
// Implementations must be safe for concurrent use.
type Provider interface {
	Fetch(ctx context.Context, req *Request) (*Result, error)
}

// External is implemented by backends that are programs of their own,
// reached over the provider protocol. The driver treats them as code it
// does not control: they may write a volume's files into the target path
// themselves, so they are called only once the target is the volume's
// mounted, statfs-verified tmpfs; and their answers may differ per pod or
// per call (dynamic credentials, per-pod certificates), so the node cache
// shares them only where the node admin or the class opts in.
type External interface {
	Provider
	// ExternalProvider is a marker; it does nothing.
	ExternalProvider()
}

// Watcher is implemented by backends that learn of changes as they happen
// (for example through a Kubernetes watch). The driver calls Watch after a
// successful mount and stop when the last volume that needs it goes away.
// changed may be called from any goroutine, more often than strictly needed.
type Watcher interface {
	Watch(req *Request, changed func()) (stop func(), err error)
}

// DefaultFileMode is used when neither the object nor the request sets a mode.
const DefaultFileMode os.FileMode = 0o644
