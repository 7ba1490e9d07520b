package azure

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
)

// certClient reads certificates (GET /certificates/{name}/{version} and the
// versions list). The azcertificates module is not available to this build,
// so this is the two operations on the azcore pipeline the SDK clients use:
// same transport, retries, logging, and the same Key Vault challenge
// authentication (bearer token scoped by the 401 challenge, whose resource
// must match the vault's domain).
type certClient struct {
	vaultURL string
	client   *azcore.Client
}

// certAPIVersion is a Key Vault data-plane version all clouds serve.
const certAPIVersion = "7.5"

func newCertClient(vaultURL string, cred azcore.TokenCredential, co azcore.ClientOptions) (*certClient, error) {
	ch := &challengeAuth{}
	auth := runtime.NewBearerTokenPolicy(cred, nil, &policy.BearerTokenOptions{
		AuthorizationHandler: policy.AuthorizationHandler{OnRequest: ch.onRequest, OnChallenge: ch.onChallenge},
	})
	c, err := azcore.NewClient("secretfs/azure.certificates", "v1.0.0", runtime.PipelineOptions{PerRetry: []policy.Policy{auth}}, &co)
	if err != nil {
		return nil, err
	}
	return &certClient{vaultURL: strings.TrimSuffix(vaultURL, "/"), client: c}, nil
}

type certBundle struct {
	ID  string `json:"id"`
	Cer []byte `json:"cer"`
}

type certItem struct {
	ID         string `json:"id"`
	Attributes *struct {
		Enabled *bool  `json:"enabled"`
		Created *int64 `json:"created"`
	} `json:"attributes"`
}

type certList struct {
	Value    []certItem `json:"value"`
	NextLink string     `json:"nextLink"`
}

func (c *certClient) get(ctx context.Context, name, version string) (*certBundle, error) {
	u := c.vaultURL + "/certificates/" + url.PathEscape(name) + "/" + url.PathEscape(version)
	var out certBundle
	if err := c.do(ctx, u, true, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// versions lists every version of a certificate, following nextLink.
func (c *certClient) versions(ctx context.Context, name string) ([]versionInfo, error) {
	next := c.vaultURL + "/certificates/" + url.PathEscape(name) + "/versions"
	first := true
	var out []versionInfo
	for pages := 0; next != ""; pages++ {
		if pages > maxListPages {
			return nil, fmt.Errorf("certificate %q has more than %d pages of versions", name, maxListPages)
		}
		if !first && !strings.HasPrefix(next, c.vaultURL+"/") {
			return nil, errors.New("the vault answered with a nextLink outside the vault")
		}
		var page certList
		if err := c.do(ctx, next, first, &page); err != nil {
			return nil, err
		}
		first = false
		for _, it := range page.Value {
			if it.Attributes == nil || (it.Attributes.Enabled != nil && !*it.Attributes.Enabled) {
				continue
			}
			v := versionInfo{version: lastSegment(it.ID)}
			if it.Attributes.Created != nil {
				v.created = time.Unix(*it.Attributes.Created, 0)
			}
			out = append(out, v)
		}
		next = page.NextLink
	}
	return out, nil
}

func (c *certClient) do(ctx context.Context, u string, addVersion bool, out any) error {
	req, err := runtime.NewRequest(ctx, http.MethodGet, u)
	if err != nil {
		return err
	}
	if addVersion {
		q := req.Raw().URL.Query()
		q.Set("api-version", certAPIVersion)
		req.Raw().URL.RawQuery = q.Encode()
	}
	req.Raw().Header.Set("Accept", "application/json")
	resp, err := c.client.Pipeline().Do(req)
	if err != nil {
		return err
	}
	if !runtime.HasStatusCode(resp, http.StatusOK) {
		return runtime.NewResponseError(resp)
	}
	return runtime.UnmarshalAsJSON(resp, out)
}

func lastSegment(id string) string {
	id = strings.TrimSuffix(id, "/")
	return id[strings.LastIndex(id, "/")+1:]
}

// challengeAuth implements Key Vault's challenge-based authentication: send
// the first request without a token, read the scope and tenant from the 401
// challenge, check the scope belongs to the vault's domain, then authorize.
type challengeAuth struct {
	mu  sync.Mutex
	tro policy.TokenRequestOptions
}

func (a *challengeAuth) onRequest(_ *policy.Request, authNZ func(policy.TokenRequestOptions) error) error {
	a.mu.Lock()
	tro := a.tro
	a.mu.Unlock()
	if len(tro.Scopes) == 0 {
		return nil // no token until the vault has told us its scope
	}
	return authNZ(tro)
}

func (a *challengeAuth) onChallenge(req *policy.Request, resp *http.Response, authNZ func(policy.TokenRequestOptions) error) error {
	params := parseChallenge(resp.Header.Get("WWW-Authenticate"))
	scope := params["scope"]
	if scope == "" {
		scope = params["resource"]
	}
	if scope == "" {
		return errors.New("the vault's authentication challenge names no resource")
	}
	su, err := url.Parse(scope)
	if err != nil || su.Host == "" {
		return fmt.Errorf("the vault's authentication challenge resource %q is not a URL", scope)
	}
	if !strings.HasSuffix(req.Raw().URL.Host, "."+su.Host) {
		return fmt.Errorf("the vault's authentication challenge resource %q does not match the vault's domain", scope)
	}
	if !strings.HasSuffix(scope, "/.default") {
		scope = strings.TrimSuffix(scope, "/") + "/.default"
	}
	tro := policy.TokenRequestOptions{Scopes: []string{scope}}
	if au, err := url.Parse(params["authorization"]); err == nil {
		if parts := strings.Split(strings.Trim(au.Path, "/"), "/"); len(parts) > 0 && parts[0] != "" {
			tro.TenantID = parts[0]
		}
	}
	a.mu.Lock()
	a.tro = tro
	a.mu.Unlock()
	return authNZ(tro)
}

// parseChallenge reads `Bearer k="v", k2="v2"` into a map.
func parseChallenge(h string) map[string]string {
	out := map[string]string{}
	h = strings.TrimSpace(h)
	if i := strings.IndexByte(h, ' '); i > 0 && strings.EqualFold(h[:i], "bearer") {
		h = h[i+1:]
	}
	for _, part := range strings.Split(h, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if ok {
			out[strings.TrimSpace(k)] = strings.Trim(strings.TrimSpace(v), `"`)
		}
	}
	return out
}
