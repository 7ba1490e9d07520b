// Package azure reads secrets, keys and certificates from Azure Key Vault.
//
// It accepts the SecretProviderClass parameters of the Azure Key Vault
// provider for the Secrets Store CSI Driver unchanged and produces the same
// files:
//
//   - keyvaultName, tenantID (or the deprecated tenantId), cloudName
//     (AzurePublicCloud, AzureChinaCloud, AzureUSGovernmentCloud);
//   - one identity: clientID (workload identity: the pod's service-account
//     token for audience api://AzureADTokenExchange is exchanged for an
//     Entra ID token), useVMManagedIdentity with an optional
//     userAssignedIdentityID (managed identity), or a nodePublishSecretRef
//     with clientid and clientsecret (service principal);
//   - usePodIdentity: "false" is accepted and ignored; "true" is refused,
//     AAD pod identity being deprecated upstream;
//   - objects: objectName, objectType (secret, key, cert), objectVersion,
//     objectVersionHistory, objectAlias, objectEncoding, objectFormat,
//     filePermission; and, a secretfs addition, selectors of secrets by
//     objectNamePrefix, objectNameRegex and objectTags (select.go).
//
// Endpoints (vault DNS suffix, authority host, extra CAs) are set only by
// Options, that is by driver flags, never by a class.
package azure

import (
	"context"
	"errors"
	"net/http"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"
	"github.com/secretfs/secretfs/provider"
	"google.golang.org/grpc/codes"
)

// Provider fetches Key Vault objects. It is safe for concurrent use.
type Provider struct {
	opts  Options
	http  *http.Client
	cache *clientCache

	semMu sync.Mutex
	sems  map[string]chan struct{} // per vault URL

	httpOnce sync.Once
	initErr  error // set in New or by the first client()
}

// New returns a Provider. An invalid option (such as ExtraCAPEM without a
// certificate) makes every Fetch fail with a message saying so.
func New(opts Options) *Provider {
	if opts.MaxConcurrentPerVault <= 0 {
		opts.MaxConcurrentPerVault = 8
	}
	if opts.RetryBase <= 0 {
		opts.RetryBase = time.Second
	}
	if opts.ThrottleBudget <= 0 {
		opts.ThrottleBudget = 60 * time.Second
	}
	if opts.MaxCachedClients <= 0 {
		opts.MaxCachedClients = 256
	}
	p := &Provider{opts: opts, cache: newClientCache(opts.MaxCachedClients), sems: map[string]chan struct{}{}}
	if err := opts.validate(); err != nil {
		p.initErr = err
		return p
	}
	return p
}

// client builds the HTTP client on first use: loading the system CA pool
// costs a node whose classes never name azure some 2.5 MiB of memory.
func (p *Provider) client() error {
	p.httpOnce.Do(func() {
		if p.initErr != nil {
			return
		}
		hc, err := newHTTPClient(&p.opts)
		if err != nil {
			p.initErr = err
		} else {
			p.http = hc
		}
	})
	return p.initErr
}

var _ provider.Provider = (*Provider)(nil)

// Fetch returns the files of one volume: all objects, or an error.
func (p *Provider) Fetch(ctx context.Context, req *provider.Request) (*provider.Result, error) {
	if err := p.client(); err != nil {
		return nil, provider.Errorf(codes.Internal, "azure provider is misconfigured: %v", err)
	}
	end, err := req.TakeTurn()
	if err != nil {
		return nil, err
	}
	cfg, err := parseConfig(req.Parameters, req.Secrets, req.DefaultMode)
	end()
	if err != nil {
		return nil, err
	}
	if cfg.mode == modeManaged && !p.opts.managedIdentityAllowed(req.Pod.Namespace) {
		return nil, provider.PermissionDenied("the node's managed identity (useVMManagedIdentity) is not available to namespace %q on this node: "+
			"the node admin allows it with the driver flag %s (Helm value azure.managedIdentityNamespaces); "+
			"otherwise use workload identity (clientID)", req.Pod.Namespace, ManagedIdentityFlag)
	}
	var wiToken string
	if cfg.mode == modeWorkload {
		t, ok := req.Tokens[WorkloadIdentityAudience]
		if !ok || t.Token == "" {
			return nil, provider.InvalidArgument("clientID is set (workload identity) but kubelet passed no service-account token for audience %q: add it to the CSIDriver's spec.tokenRequests", WorkloadIdentityAudience)
		}
		wiToken = t.Token
	}
	vaultURL := p.vaultURL(cfg)
	pod := podIdentity{namespace: req.Pod.Namespace, serviceAccount: req.Pod.ServiceAccount}
	vc, err := p.cache.get(p.cache.key(cfg, pod, vaultURL), func() (*vaultClients, error) {
		return p.buildClients(cfg, vaultURL)
	})
	if err != nil {
		return nil, provider.Errorf(codes.Internal, "creating Key Vault client for vault %q: %v", cfg.vaultName, err)
	}
	if vc.token != nil {
		vc.token.set(wiToken)
	}

	// Every Key Vault response body is charged to the volume's budget as
	// it is read (budgetTransport), and every file's content before it is
	// kept: a class cannot make the driver hold more than its allowance.
	budget := provider.NewBudget(req)
	if n, most := len(cfg.objects), budget.Limits().MaxFiles; n > most {
		return nil, provider.Errorf(codes.ResourceExhausted, "the class lists %d objects; a volume holds at most %d files (driver flag --max-files): split the class", n, most)
	}
	f := &fetcher{p: p, cfg: cfg, vc: vc, sem: p.vaultSem(vaultURL), budget: budget}
	ctx, cancel := context.WithCancel(provider.WithBudget(ctx, budget))
	defer cancel()
	// Selectors become named objects first: listing the vault's names,
	// counted against --max-files before any value is read (select.go).
	objects, err := f.expand(ctx, cfg.objects, budget.Limits().MaxFiles)
	if err != nil {
		return nil, err
	}
	results := make([][]objectFile, len(objects))
	errs := make([]error, len(objects))
	// At most MaxConcurrentPerVault objects in progress: the vault's
	// semaphore bounds requests, this bounds goroutines and responses held.
	var wg sync.WaitGroup
	next := make(chan int)
	for range min(p.opts.MaxConcurrentPerVault, len(objects)) {
		wg.Go(func() {
			for i := range next {
				o := objects[i]
				results[i], errs[i] = f.object(ctx, o)
				if o.Optional && provider.CodeOf(errs[i]) == codes.NotFound {
					results[i], errs[i] = nil, nil
				}
				if errs[i] != nil {
					cancel() // all or nothing: stop the others early
				}
			}
		})
	}
	for i := range objects {
		next <- i
	}
	close(next)
	wg.Wait()
	if err := firstError(errs); err != nil {
		return nil, err
	}

	res := &provider.Result{}
	for _, files := range results {
		for _, of := range files {
			res.Files = append(res.Files, of.file)
			res.Versions = append(res.Versions, of.version)
		}
	}
	return res, nil
}

// firstError prefers a real cause over the cancellations it triggered.
func firstError(errs []error) error {
	var first error
	for _, err := range errs {
		if err == nil {
			continue
		}
		if provider.CodeOf(err) != codes.Canceled {
			return err
		}
		if first == nil {
			first = err
		}
	}
	return first
}

func (p *Provider) vaultSem(vaultURL string) chan struct{} {
	p.semMu.Lock()
	defer p.semMu.Unlock()
	s, ok := p.sems[vaultURL]
	if !ok {
		s = make(chan struct{}, p.opts.MaxConcurrentPerVault)
		p.sems[vaultURL] = s
	}
	return s
}

// objectFile is one file with the version it came from.
type objectFile struct {
	file    provider.File
	version provider.ObjectVersion
}

// versionInfo is one enabled version of an object.
type versionInfo struct {
	version string
	created time.Time
}

// maxListPages bounds a versions listing (25 versions a page).
const maxListPages = 400

type fetcher struct {
	p      *Provider
	cfg    *config
	vc     *vaultClients
	sem    chan struct{}
	budget *provider.Budget
}

// object fetches one object spec: one file, or with objectVersionHistory N
// the N newest enabled versions as <file>/0 (newest) ... <file>/N-1.
func (f *fetcher) object(ctx context.Context, o *object) ([]objectFile, error) {
	if o.ObjectVersionHistory <= 1 {
		content, version, err := f.content(ctx, o, o.sdkVersion())
		if err != nil {
			return nil, err
		}
		return []objectFile{{
			file:    provider.File{Path: o.fileName(), Mode: o.mode, Contents: content},
			version: provider.ObjectVersion{ID: o.id(), Version: version},
		}}, nil
	}
	versions, err := f.versions(ctx, o)
	if err != nil {
		return nil, err
	}
	// Newest first; start at objectVersion when one is given (as upstream).
	sort.SliceStable(versions, func(i, j int) bool { return versions[i].created.After(versions[j].created) })
	if !o.latest() {
		start := -1
		for i, v := range versions {
			if v.version == o.ObjectVersion {
				start = i
				break
			}
		}
		if start < 0 {
			return nil, provider.NotFound("%s has no enabled version %q in Key Vault %q", o.describe(), o.ObjectVersion, f.cfg.vaultName)
		}
		versions = versions[start:]
	}
	if len(versions) > int(o.ObjectVersionHistory) {
		versions = versions[:o.ObjectVersionHistory]
	}
	if len(versions) == 0 {
		return nil, provider.NotFound("%s has no enabled versions in Key Vault %q", o.describe(), f.cfg.vaultName)
	}
	out := make([]objectFile, len(versions))
	errs := make([]error, len(versions))
	var wg sync.WaitGroup
	for i, v := range versions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			content, version, err := f.content(ctx, o, v.version)
			if err != nil {
				errs[i] = err
				return
			}
			idx := strconv.Itoa(i)
			out[i] = objectFile{
				file:    provider.File{Path: o.fileName() + "/" + idx, Mode: o.mode, Contents: content},
				version: provider.ObjectVersion{ID: o.id() + "/" + idx, Version: version},
			}
		}()
	}
	wg.Wait()
	if err := firstError(errs); err != nil {
		return nil, err
	}
	return out, nil
}

// content reads one version of an object and converts it to file bytes.
func (f *fetcher) content(ctx context.Context, o *object, version string) ([]byte, string, error) {
	var content []byte
	var gotVersion string
	err := f.call(ctx, o, func(ctx context.Context) error {
		switch o.ObjectType {
		case typeSecret:
			resp, err := f.vc.secrets.GetSecret(ctx, o.ObjectName, version, nil)
			if err != nil {
				return err
			}
			if resp.Value == nil || resp.ID == nil {
				return contentErrorf("Key Vault returned a secret without value or id")
			}
			ct := ""
			if resp.ContentType != nil {
				ct = *resp.ContentType
			}
			certBacked := resp.KID != nil && *resp.KID != ""
			content, err = secretContent(o, *resp.Value, ct, certBacked, !f.p.opts.DisablePEMChainOrdering)
			gotVersion = resp.ID.Version()
			return err
		case typeKey:
			resp, err := f.vc.keys.GetKey(ctx, o.ObjectName, version, nil)
			if err != nil {
				return err
			}
			if resp.Key == nil || resp.Key.KID == nil {
				return contentErrorf("Key Vault returned a key without key material or id")
			}
			content, err = publicKeyPEM(resp.Key)
			gotVersion = resp.Key.KID.Version()
			return err
		default:
			cb, err := f.vc.certs.get(ctx, o.ObjectName, version)
			if err != nil {
				return err
			}
			content, err = certificatePEM(cb.Cer)
			gotVersion = lastSegment(cb.ID)
			return err
		}
	})
	if err != nil {
		return nil, "", err
	}
	if err := f.budget.File(int64(len(content))); err != nil {
		clear(content)
		return nil, "", err
	}
	return content, gotVersion, nil
}

// versions lists the enabled versions of an object.
func (f *fetcher) versions(ctx context.Context, o *object) ([]versionInfo, error) {
	var out []versionInfo
	err := f.call(ctx, o, func(ctx context.Context) error {
		out = out[:0]
		switch o.ObjectType {
		case typeSecret:
			pager := f.vc.secrets.NewListSecretPropertiesVersionsPager(o.ObjectName, nil)
			for pages := 0; pager.More(); pages++ {
				if pages > maxListPages {
					return contentErrorf("too many pages of versions")
				}
				page, err := pager.NextPage(ctx)
				if err != nil {
					return err
				}
				for _, s := range page.Value {
					out = appendVersion(out, s.ID, s.Attributes)
				}
			}
		case typeKey:
			pager := f.vc.keys.NewListKeyPropertiesVersionsPager(o.ObjectName, nil)
			for pages := 0; pager.More(); pages++ {
				if pages > maxListPages {
					return contentErrorf("too many pages of versions")
				}
				page, err := pager.NextPage(ctx)
				if err != nil {
					return err
				}
				for _, k := range page.Value {
					if k == nil || k.KID == nil || k.Attributes == nil {
						continue
					}
					if k.Attributes.Enabled != nil && !*k.Attributes.Enabled {
						continue
					}
					v := versionInfo{version: k.KID.Version()}
					if k.Attributes.Created != nil {
						v.created = *k.Attributes.Created
					}
					out = append(out, v)
				}
			}
		default:
			vs, err := f.vc.certs.versions(ctx, o.ObjectName)
			if err != nil {
				return err
			}
			out = vs
		}
		return nil
	})
	return out, err
}

func appendVersion(out []versionInfo, id *azsecrets.ID, a *azsecrets.SecretAttributes) []versionInfo {
	if id == nil || a == nil || (a.Enabled != nil && !*a.Enabled) {
		return out
	}
	v := versionInfo{version: id.Version()}
	if a.Created != nil {
		v.created = *a.Created
	}
	return append(out, v)
}

// call runs one Key Vault operation under the vault's concurrency bound,
// retrying 429 responses with jittered exponential backoff (honouring
// Retry-After) within the throttle budget and the context deadline, and maps
// the final error to a gRPC code.
func (f *fetcher) call(ctx context.Context, o *object, op func(context.Context) error) error {
	attempts := 0
	start := time.Now()
	budgetEnd := start.Add(f.p.opts.ThrottleBudget)
	for {
		attempts++
		select {
		case f.sem <- struct{}{}:
		case <-ctx.Done():
			return f.mapError(ctx, o, ctx.Err(), attempts-1, start)
		}
		err := op(ctx)
		<-f.sem
		if err == nil {
			return nil
		}
		retryAfter, throttled := throttleDelay(err)
		if !throttled {
			return f.mapError(ctx, o, err, attempts, start)
		}
		delay := backoff(f.p.opts.RetryBase, attempts)
		if retryAfter > delay {
			delay = retryAfter
		}
		wake := time.Now().Add(delay)
		if dl, ok := ctx.Deadline(); ok && wake.After(dl) || wake.After(budgetEnd) {
			return throttledError(f.cfg, o, attempts, time.Since(start))
		}
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			if errors.Is(ctx.Err(), context.Canceled) {
				// A sibling object failed; report that, not this wait.
				return f.mapError(ctx, o, ctx.Err(), attempts, start)
			}
			return throttledError(f.cfg, o, attempts, time.Since(start))
		}
	}
}
