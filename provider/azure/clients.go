package azure

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azkeys"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"
	"google.golang.org/grpc/codes"

	"github.com/secretfs/secretfs/provider"
)

// vaultClients are the SDK clients for one identity and one vault. They are
// built once and reused by every mount with the same identity and vault.
type vaultClients struct {
	secrets *azsecrets.Client
	keys    *azkeys.Client
	certs   *certClient
	// token is read by a workload-identity credential each time it needs a
	// new Entra ID token; every fetch stores the pod's current token first.
	token    *tokenHolder
	lastUsed time.Time
}

// tokenHolder hands the newest service-account token to the assertion
// callback. One holder serves one service account only.
type tokenHolder struct {
	mu    sync.Mutex
	token string
}

func (h *tokenHolder) set(t string) {
	h.mu.Lock()
	h.token = t
	h.mu.Unlock()
}

func (h *tokenHolder) get(context.Context) (string, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.token == "" {
		return "", errors.New("no service-account token for workload identity")
	}
	return h.token, nil
}

// clientCache holds vaultClients keyed by identity and vault URL.
type clientCache struct {
	mu      sync.Mutex
	max     int
	entries map[string]*vaultClients
	hmacKey []byte // keys the hash of service principal secrets
}

func newClientCache(max int) *clientCache {
	k := make([]byte, 32)
	_, _ = rand.Read(k)
	return &clientCache{max: max, entries: map[string]*vaultClients{}, hmacKey: k}
}

// key identifies an identity and vault. A workload identity is keyed by the
// pod's service account too: an Entra ID token obtained with one service
// account's assertion must never serve another service account.
func (c *clientCache) key(cfg *config, pod podIdentity, vaultURL string) string {
	parts := []string{cfg.cloud.name, cfg.tenantID, string(cfg.mode), cfg.clientID, vaultURL}
	switch cfg.mode {
	case modeServicePrincipal:
		m := hmac.New(sha256.New, c.hmacKey)
		m.Write([]byte(cfg.clientID + "\x00" + cfg.clientSecret))
		parts = append(parts, hex.EncodeToString(m.Sum(nil)))
	case modeWorkload:
		parts = append(parts, pod.namespace, pod.serviceAccount)
	}
	return strings.Join(parts, "\x00")
}

type podIdentity struct{ namespace, serviceAccount string }

// get returns cached clients or builds them with build.
func (c *clientCache) get(key string, build func() (*vaultClients, error)) (*vaultClients, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if vc, ok := c.entries[key]; ok {
		vc.lastUsed = time.Now()
		return vc, nil
	}
	// Building makes no network calls, so holding the lock is cheap.
	vc, err := build()
	if err != nil {
		return nil, err
	}
	vc.lastUsed = time.Now()
	if len(c.entries) >= c.max {
		var oldestKey string
		var oldest time.Time
		for k, e := range c.entries {
			if oldestKey == "" || e.lastUsed.Before(oldest) {
				oldestKey, oldest = k, e.lastUsed
			}
		}
		delete(c.entries, oldestKey)
	}
	c.entries[key] = vc
	return vc, nil
}

func (c *clientCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}

// newHTTPClient builds the one HTTP client shared by all SDK clients.
func newHTTPClient(o *Options) (*http.Client, error) {
	roots, err := x509.SystemCertPool()
	if err != nil || roots == nil {
		roots = x509.NewCertPool()
	}
	if len(o.ExtraCAPEM) > 0 && !roots.AppendCertsFromPEM(o.ExtraCAPEM) {
		return nil, errors.New("azure: ExtraCAPEM holds no PEM certificate")
	}
	dialer := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}
	dial := dialer.DialContext
	if o.DialContext != nil {
		dial = o.DialContext
	}
	if o.VaultAddress != "" {
		suffix := "." + strings.ToLower(o.VaultDNSSuffix)
		next := dial
		dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			host, _, err := net.SplitHostPort(addr)
			if err == nil && strings.HasSuffix(strings.ToLower(host), suffix) {
				addr = o.VaultAddress
			}
			return next(ctx, network, addr)
		}
	}
	tr := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           dial,
		TLSClientConfig:       &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          100,
		MaxIdleConnsPerHost:   16,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 30 * time.Second,
	}
	if o.DialContext != nil || o.VaultAddress != "" {
		tr.Proxy = nil // a dial override targets the real address, not a proxy
	}
	return &http.Client{Transport: tr}, nil
}

// clientOptions are the azcore options for Key Vault and Entra ID clients:
// our transport, few fast retries for transient faults, and none for 429,
// which fetcher.call retries within its own budget.
func (p *Provider) clientOptions(cfg *config) azcore.ClientOptions {
	authority := cfg.cloud.authorityHost
	if p.opts.AuthorityHost != "" {
		authority = p.opts.AuthorityHost
	}
	return azcore.ClientOptions{
		Cloud:     cloud.Configuration{ActiveDirectoryAuthorityHost: authority},
		Transport: budgetTransport{p.http},
		Retry: policy.RetryOptions{
			MaxRetries:    2,
			RetryDelay:    p.opts.RetryBase,
			MaxRetryDelay: 4 * p.opts.RetryBase,
			TryTimeout:    30 * time.Second,
			ShouldRetry:   shouldRetryTransient,
		},
		Telemetry: policy.TelemetryOptions{ApplicationID: "secretfs"},
	}
}

// shouldRetryTransient retries server errors and dropped connections, but
// not 429 (handled above the SDK), nor an unknown host or a refused
// connection, which do not heal in seconds.
func shouldRetryTransient(resp *http.Response, err error) bool {
	if err != nil {
		if pe := (*provider.Error)(nil); errors.As(err, &pe) && (pe.Code == codes.ResourceExhausted || pe.Code == codes.Unavailable) {
			return false // the volume's budget is spent, or the node's is full: a retry reads more
		}
		var dnsErr *net.DNSError
		if errors.As(err, &dnsErr) || errors.Is(err, syscall.ECONNREFUSED) {
			return false
		}
		var certErr *tls.CertificateVerificationError
		return !errors.As(err, &certErr)
	}
	switch resp.StatusCode {
	case http.StatusRequestTimeout, http.StatusInternalServerError, http.StatusBadGateway,
		http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return true
	}
	return false
}

// buildClients makes the credential and the SDK clients for one identity.
func (p *Provider) buildClients(cfg *config, vaultURL string) (*vaultClients, error) {
	co := p.clientOptions(cfg)
	// A custom authority is not in MSAL's list of known hosts; instance
	// discovery would ask the public cloud about it, so skip it.
	noDiscovery := p.opts.AuthorityHost != ""
	vc := &vaultClients{}
	var cred azcore.TokenCredential
	var err error
	switch cfg.mode {
	case modeWorkload:
		vc.token = &tokenHolder{}
		cred, err = azidentity.NewClientAssertionCredential(cfg.tenantID, cfg.clientID, vc.token.get,
			&azidentity.ClientAssertionCredentialOptions{ClientOptions: co, DisableInstanceDiscovery: noDiscovery})
	case modeServicePrincipal:
		cred, err = azidentity.NewClientSecretCredential(cfg.tenantID, cfg.clientID, cfg.clientSecret,
			&azidentity.ClientSecretCredentialOptions{ClientOptions: co, DisableInstanceDiscovery: noDiscovery})
	case modeManaged:
		mo := &azidentity.ManagedIdentityCredentialOptions{ClientOptions: co}
		if cfg.clientID != "" {
			mo.ID = azidentity.ClientID(cfg.clientID)
		}
		cred, err = azidentity.NewManagedIdentityCredential(mo)
	default:
		err = fmt.Errorf("unknown identity mode %q", cfg.mode)
	}
	if err != nil {
		return nil, fmt.Errorf("creating %s credential: %w", cfg.mode, err)
	}
	if vc.secrets, err = azsecrets.NewClient(vaultURL, cred, &azsecrets.ClientOptions{ClientOptions: co}); err != nil {
		return nil, err
	}
	if vc.keys, err = azkeys.NewClient(vaultURL, cred, &azkeys.ClientOptions{ClientOptions: co}); err != nil {
		return nil, err
	}
	if vc.certs, err = newCertClient(vaultURL, cred, co); err != nil {
		return nil, err
	}
	return vc, nil
}

// vaultURL is https://<name>.<suffix>/ for the class's cloud, or for the
// suffix the driver was started with.
func (p *Provider) vaultURL(cfg *config) string {
	suffix := cfg.cloud.vaultSuffix
	if p.opts.VaultDNSSuffix != "" {
		suffix = p.opts.VaultDNSSuffix
	}
	return (&url.URL{Scheme: "https", Host: strings.ToLower(cfg.vaultName) + "." + suffix, Path: "/"}).String()
}

// budgetTransport charges every response body of a request made for a fetch
// to that fetch's provider.Budget (found in the request context) as it is
// read, so the SDK, which reads whole bodies into memory, stops at the
// volume's allowance.
type budgetTransport struct{ next *http.Client }

func (t budgetTransport) Do(req *http.Request) (*http.Response, error) {
	resp, err := t.next.Do(req)
	if b := provider.BudgetFrom(req.Context()); b != nil && resp != nil && resp.Body != nil {
		resp.Body = b.Reader(resp.Body)
	}
	return resp, err
}
