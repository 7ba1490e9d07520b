// Package kubernetes is the `provider: kubernetes` backend: it mounts
// Kubernetes Secrets of the pod's own namespace, read with the pod's own
// service-account token, so the API server's RBAC decides what a pod may
// mount. The driver's identity is never used; it needs no access to Secrets.
//
// Class parameters:
//
//	objects: |
//	  - secretName: db          # a Secret in the pod's namespace (required)
//	    key: password           # one key; empty: every key of the Secret
//	    path: db/password       # file name (default: the key); for every key
//	                            # a directory prefix (default: none)
//	    filePermission: "0400"  # octal (default: the volume's default mode)
//	    optional: true          # a missing Secret or key is skipped
//	  - labelSelector: app=shop # every Secret of the namespace with these
//	    path: shop              # labels, each key as <path>/<secret>/<key>
//	                            # (path optional; no secretName, key, optional)
//
// The Azure provider's spelling (`array:` of YAML strings) is accepted too.
// There is no namespace field: Secrets are always read from the pod's
// namespace. A Secret is watched (one API watch per Secret and service
// account on the node, shared by all volumes) and changes are reported to
// the driver within seconds; a volume's first fetch reads the Secret from
// the start of that watch (prime.go), so mounting costs the API server one
// request per Secret and node, as kubelet's own Secret volume does.
//
// Cluster setup. The CSIDriver must ask kubelet for the pod's token for the
// API server itself:
//
//	spec:
//	  podInfoOnMount: true
//	  requiresRepublish: true
//	  tokenRequests:
//	  - audience: ""   # kubelet requests no audiences, so the token gets the
//	                   # API server's own (--api-audiences, default its issuer);
//	                   # it arrives under the key "" in serviceAccount.tokens
//
// and each pod's service account needs a Role in its namespace with
// apiGroups [""], resources [secrets], verbs [get, watch] and resourceNames
// of the Secrets it mounts (without watch, each fetch is a GET and changes
// arrive on republish only);
// for a labelSelector, verbs [list, watch] without resourceNames. Selected
// Secrets are listed in pages counted against the volume's file limit
// (selector.go), and each selector is watched like a Secret: one API watch
// per (namespace, selector, service account), whose every event is a change.
package kubernetes

import (
	"context"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/flowcontrol"

	"github.com/secretfs/secretfs/internal/kube/kubecore"
	"github.com/secretfs/secretfs/provider"
)

// Provider implements provider.Provider and provider.Watcher.
type Provider struct {
	opts    Options
	client  *kubecore.Client
	limiter flowcontrol.RateLimiter // Options.QPS and Burst, GETs and watches alike
	now     func() time.Time

	streams atomic.Int64 // open API watch streams

	// noInitialEvents: the API server refused a watch that starts with
	// the current state's events (prime.go), so fetches GET.
	noInitialEvents atomic.Bool
	// holdFor is how long a fetch keeps a watch it opened for its
	// volume's Watch (prime.go); held counts those holds now.
	holdFor time.Duration
	held    atomic.Int64

	mu      sync.Mutex
	watches map[watchKey]*sharedWatch
	// forbidden holds keys whose watch was refused 403, so a fetch GETs
	// them without trying a watch first; true once the refusal is logged.
	forbidden map[watchKey]bool
}

var (
	_ provider.Provider = (*Provider)(nil)
	_ provider.Watcher  = (*Provider)(nil)
)

// New returns a Provider for the API server in opts.
func New(opts Options) (*Provider, error) {
	if err := opts.setDefaults(); err != nil {
		return nil, err
	}
	// One limit for every request of this process: client-go never
	// limits watches, so opening one waits here (stream.go).
	limiter := flowcontrol.NewTokenBucketRateLimiter(opts.QPS, opts.Burst)
	client, err := newClient(opts, limiter)
	if err != nil {
		return nil, err
	}
	return &Provider{
		opts:      opts,
		client:    client,
		limiter:   limiter,
		now:       time.Now,
		holdFor:   defaultHoldFor,
		watches:   make(map[watchKey]*sharedWatch),
		forbidden: make(map[watchKey]bool),
	}, nil
}

// fetchedSecret is the outcome of one GET, or of reading a watch (prime.go).
type fetchedSecret struct {
	secret *corev1.Secret // nil when not found
	err    error
}

// Fetch reads every Secret named in the class as the pod, from the initial
// events of its shared watch or with one GET, and every selection with a
// list, and returns all files or an error.
func (p *Provider) Fetch(ctx context.Context, req *provider.Request) (res *provider.Result, err error) {
	if req.Pod.Namespace == "" {
		return nil, provider.InvalidArgument("the pod's namespace is unknown: the CSIDriver csi.secretfs.dev needs podInfoOnMount: true")
	}
	end, err := req.TakeTurn()
	if err != nil {
		return nil, err
	}
	specs, err := parseObjects(req.Parameters["objects"], req.DefaultMode)
	end()
	if err != nil {
		return nil, err
	}
	token, err := p.podToken(req)
	if err != nil {
		return nil, err
	}
	budget := provider.NewBudget(req)
	// Selectors first: a selection over the file limit fails before any
	// named Secret is read.
	lists := p.listAll(ctx, token, req.Pod, selectors(specs), budget)
	for _, sel := range selectors(specs) {
		if err := lists[sel].err; err != nil {
			return nil, err
		}
	}
	// Each named Secret from the start of its watch, where the node opens
	// one anyway for rotation; a GET where no watch can tell.
	names := secretNames(specs)
	secrets, rest, release := p.fromWatches(ctx, req, token, names, budget)
	defer func() {
		if err != nil {
			release() // no volume will subscribe
		}
	}()
	for name, f := range p.getAll(ctx, token, req.Pod, rest, budget) {
		secrets[name] = f
	}
	return buildResult(req.Pod, specs, secrets, lists, budget)
}

// maxConcurrentGets bounds the GETs of one fetch in flight: a class may name
// hundreds of Secrets, and each GET holds a response in memory.
const maxConcurrentGets = 8

// getAll GETs the named Secrets, at most maxConcurrentGets at a time. Every
// response body is charged to budget as it is read (podTokenTransport), so
// the Secrets of one fetch together cannot exceed the volume's wire
// allowance; once one GET fails so, the others stop.
func (p *Provider) getAll(ctx context.Context, token string, pod provider.Pod, names []string, budget *provider.Budget) map[string]fetchedSecret {
	ctx, cancel := context.WithTimeout(provider.WithBudget(withToken(ctx, token), budget), p.opts.RequestTimeout)
	defer cancel()
	out := make(map[string]fetchedSecret, len(names))
	var mu sync.Mutex
	var wg sync.WaitGroup
	next := make(chan string)
	for range min(maxConcurrentGets, len(names)) {
		wg.Go(func() {
			for name := range next {
				s, err := p.client.Secrets(pod.Namespace).Get(ctx, name, metav1.GetOptions{})
				f := fetchedSecret{secret: s}
				if err != nil {
					f = fetchedSecret{err: apiError(err, "get", pod, name)}
					if provider.CodeOf(f.err) == codes.ResourceExhausted {
						cancel()
					}
				}
				mu.Lock()
				out[name] = f
				mu.Unlock()
			}
		})
	}
	for _, name := range names {
		next <- name
	}
	close(next)
	wg.Wait()
	return out
}

// buildResult maps the fetched Secrets to files, applying optional, and
// rejects two objects that write the same path. Every file is charged to
// budget (content and count).
func buildResult(pod provider.Pod, specs []spec, secrets map[string]fetchedSecret, lists map[string]listed, budget *provider.Budget) (*provider.Result, error) {
	// A fetch stopped by the budget reports that, not the GETs it canceled.
	for _, f := range secrets {
		if provider.CodeOf(f.err) == codes.ResourceExhausted {
			return nil, f.err
		}
	}
	res := &provider.Result{}
	owner := map[string]string{} // path -> what wrote it, for collision messages
	add := func(p string, mode os.FileMode, data []byte, from string) error {
		if prev, dup := owner[p]; dup {
			return provider.InvalidArgument("parameter objects: %s and %s both write file %q: give one a different path", prev, from, p)
		}
		if err := budget.File(int64(len(data))); err != nil {
			return err
		}
		owner[p] = from
		res.Files = append(res.Files, provider.File{Path: p, Mode: mode, Contents: data})
		return nil
	}
	for _, s := range specs {
		if s.selector != "" {
			for _, sec := range lists[s.selector].secrets {
				what := "Secret " + pod.Namespace + "/" + sec.Name + " (labelSelector " + quote(s.selector) + ")"
				for _, key := range sortedKeys(sec) {
					if err := add(s.selectedPath(sec.Name, key), s.mode, sec.Data[key], what+" key "+key); err != nil {
						return nil, err
					}
				}
			}
			continue
		}
		f := secrets[s.SecretName]
		if f.err != nil {
			if s.Optional && provider.CodeOf(f.err) == codes.NotFound {
				continue
			}
			return nil, f.err
		}
		what := "Secret " + pod.Namespace + "/" + s.SecretName
		if s.Key != "" {
			data, ok := f.secret.Data[s.Key]
			if !ok {
				if s.Optional {
					continue
				}
				return nil, provider.NotFound("%s has no key %q (it has: %s)", what, s.Key, keyList(f.secret))
			}
			if err := add(s.filePath(s.Key), s.mode, data, what+" key "+s.Key); err != nil {
				return nil, err
			}
			continue
		}
		for _, key := range sortedKeys(f.secret) {
			if err := add(s.filePath(key), s.mode, f.secret.Data[key], what+" key "+key); err != nil {
				return nil, err
			}
		}
	}
	for _, name := range sortedNames(secrets) {
		v := provider.ObjectVersion{ID: versionID(name)}
		if s := secrets[name].secret; s != nil {
			v.Version = s.ResourceVersion
		}
		res.Versions = append(res.Versions, v)
	}
	for _, sel := range sortedSelectors(lists) {
		res.Versions = append(res.Versions, provider.ObjectVersion{ID: selectorVersionID(sel), Version: lists[sel].rv})
	}
	return res, nil
}

// versionID is the stable ID of a Secret in Result.Versions.
func versionID(secret string) string { return "secret/" + secret }

func sortedKeys(s *corev1.Secret) []string {
	keys := make([]string, 0, len(s.Data))
	for k := range s.Data {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func sortedNames(m map[string]fetchedSecret) []string {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

func sortedSelectors(m map[string]listed) []string {
	sels := make([]string, 0, len(m))
	for s := range m {
		sels = append(sels, s)
	}
	sort.Strings(sels)
	return sels
}

// keyList names a Secret's keys (never values) for a missing-key message.
func keyList(s *corev1.Secret) string {
	keys := sortedKeys(s)
	if len(keys) == 0 {
		return "no keys"
	}
	if len(keys) > 20 {
		keys = append(keys[:20], "...")
	}
	return strings.Join(keys, ", ")
}
