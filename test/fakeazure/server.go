// Package fakeazure is a TLS fake of Azure Key Vault and Entra ID for tests
// and local clusters. It speaks the REST dialects the Azure SDK for Go uses:
// Key Vault secrets, keys and certificates (with the 401 challenge, paging,
// disabled versions, 403, 404 and programmable 429s), Entra ID discovery and
// token endpoints (client secret and federated client assertions verified
// against a JWKS), and an App Service style managed identity endpoint.
//
// It listens on loopback, or on an address inside a network namespace of
// its own that routes nowhere off the machine (see Config.Addr). Vault hosts are <name>.<VaultSuffix>; point
// clients at them with DialContext (or a dial override to Addr).
package fakeazure

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Config configures a Server. Zero values get defaults.
type Config struct {
	// Addr to listen on (default 127.0.0.1:0): a loopback address, or an
	// address of this process's network namespace if that is not the
	// machine's own and has no default route (a namespace a test suite
	// made, such as the local cluster's control plane namespace).
	Addr string
	// TenantID is the only tenant the fake serves (default a fixed GUID).
	TenantID string
	// VaultSuffix is the vault DNS suffix (default "vault.azure.test").
	VaultSuffix string
	// Issuer is the required `iss` of client assertions (default
	// "https://kubernetes.default.svc").
	Issuer string
	// IdentityHeader is the secret the managed identity endpoint requires in
	// X-IDENTITY-HEADER (default random).
	IdentityHeader string
	// PageSize is the number of versions per list page (default 2, so that
	// paging is exercised).
	PageSize int
	// TokenLifetime of issued access tokens (default 1h).
	TokenLifetime time.Duration
	// CA, if set, signs the server certificate instead of a fresh CA made
	// at start, so that clients configured before the fake starts (a
	// driver reading its CA file once) can trust it.
	CA *tls.Certificate
	// Now is the clock for issuing tokens and checking their expiry
	// (default time.Now), so tests can expire tokens without waiting.
	Now func() time.Time
}

// DefaultTenantID is the tenant used when Config.TenantID is empty.
const DefaultTenantID = "72f988bf-86f1-41af-91ab-2d7cd011db47"

// Server is a running fake.
type Server struct {
	cfg Config

	// URL is https://127.0.0.1:port, the authority host and MI base.
	URL string
	// Addr is the listening host:port.
	Addr string
	// CACertPEM is the CA that signed the server certificate.
	CACertPEM []byte

	srv *http.Server
	ln  net.Listener

	mu        sync.Mutex
	vaults    map[string]*Vault
	secrets   map[string]string   // clientID -> client secret
	federated map[string][]string // clientID -> allowed subjects
	managed   map[string]bool     // clientIDs of managed identities
	jwks      *keySet
	tokens    map[string]tokenInfo
	throttle  throttleState
	latency   time.Duration
	created   time.Time // clock for version creation times

	counts   sync.Map // name -> *atomic.Int64
	inFlight atomic.Int64
	maxIn    atomic.Int64
}

// SystemAssignedClientID is the client id the managed identity endpoint
// reports for the node's system-assigned identity.
const SystemAssignedClientID = "00000000-0000-0000-0000-00000000a11e"

type tokenInfo struct {
	clientID string
	resource string
	expires  time.Time
}

type throttleState struct {
	remaining  int // -1: until cleared
	retryAfter string
}

// Start starts a fake with cfg.
func Start(cfg Config) (*Server, error) {
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	ip, err := checkListenAddr(cfg.Addr)
	if err != nil {
		return nil, err
	}
	if cfg.TenantID == "" {
		cfg.TenantID = DefaultTenantID
	}
	if cfg.VaultSuffix == "" {
		cfg.VaultSuffix = "vault.azure.test"
	}
	cfg.VaultSuffix = strings.ToLower(strings.Trim(cfg.VaultSuffix, "."))
	if cfg.Issuer == "" {
		cfg.Issuer = "https://kubernetes.default.svc"
	}
	if cfg.IdentityHeader == "" {
		cfg.IdentityHeader = randomHex(16)
	}
	if cfg.PageSize <= 0 {
		cfg.PageSize = 2
	}
	if cfg.TokenLifetime <= 0 {
		cfg.TokenLifetime = time.Hour
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	s := &Server{
		cfg:       cfg,
		vaults:    map[string]*Vault{},
		secrets:   map[string]string{},
		federated: map[string][]string{},
		managed:   map[string]bool{SystemAssignedClientID: true},
		jwks:      &keySet{},
		tokens:    map[string]tokenInfo{},
		created:   time.Unix(1_700_000_000, 0),
	}
	caPEM, cert, err := newTLSCert(cfg.VaultSuffix, cfg.CA, ip)
	if err != nil {
		return nil, err
	}
	s.CACertPEM = caPEM
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, err
	}
	s.ln = ln
	s.Addr = ln.Addr().String()
	s.URL = "https://" + s.Addr
	s.srv = &http.Server{
		Handler:           s,
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		ReadHeaderTimeout: 10 * time.Second,
	}
	go func() { _ = s.srv.ServeTLS(ln, "", "") }()
	return s, nil
}

// Close stops the server and drops its connections.
func (s *Server) Close() error { return s.srv.Close() }

// TenantID is the served tenant.
func (s *Server) TenantID() string { return s.cfg.TenantID }

// VaultSuffix is the vault DNS suffix.
func (s *Server) VaultSuffix() string { return s.cfg.VaultSuffix }

// AuthorityHost is the Entra ID authority host URL (with trailing slash).
func (s *Server) AuthorityHost() string { return s.URL + "/" }

// ManagedIdentityEndpoint is the value for IDENTITY_ENDPOINT.
func (s *Server) ManagedIdentityEndpoint() string { return s.URL + "/msi/token" }

// IdentityHeader is the value for IDENTITY_HEADER.
func (s *Server) IdentityHeader() string { return s.cfg.IdentityHeader }

// Issuer is the required issuer of client assertions.
func (s *Server) Issuer() string { return s.cfg.Issuer }

// DialContext connects <vault>.<suffix> hosts to the fake and reports any
// other name under the suffix as not found, like DNS would. Other addresses
// are dialed as given but only on loopback.
func (s *Server) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	lh := strings.ToLower(host)
	var d net.Dialer
	if name, ok := strings.CutSuffix(lh, "."+s.cfg.VaultSuffix); ok {
		if s.vault(name) == nil {
			return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
		}
		return d.DialContext(ctx, network, s.Addr)
	}
	if addr != s.Addr {
		if err := requireLoopback(addr); err != nil {
			return nil, err
		}
	}
	return d.DialContext(ctx, network, addr)
}

// AddClientSecret registers an app registration with a client secret.
func (s *Server) AddClientSecret(clientID, secret string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.secrets[clientID] = secret
}

// AddFederatedCredential lets subject (system:serviceaccount:<ns>:<name>)
// of the configured issuer sign in as clientID with a client assertion.
func (s *Server) AddFederatedCredential(clientID, subject string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.federated[clientID] = append(s.federated[clientID], subject)
}

// AddManagedIdentity registers a user-assigned managed identity.
func (s *Server) AddManagedIdentity(clientID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.managed[clientID] = true
}

// SetJWKS sets the keys that verify client assertions (a JSON Web Key Set,
// such as the Kubernetes service-account issuer's /openid/v1/jwks).
func (s *Server) SetJWKS(jwks []byte) error {
	ks, err := parseJWKS(jwks)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.jwks = ks
	return nil
}

// Throttle makes the next n authenticated vault requests fail with 429
// (n < 0: until Throttle(0, "")). retryAfter, if not empty, is sent as the
// Retry-After header.
func (s *Server) Throttle(n int, retryAfter string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.throttle = throttleState{remaining: n, retryAfter: retryAfter}
}

// SetLatency delays every vault response by d.
func (s *Server) SetLatency(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.latency = d
}

// Count returns a request counter. Names: "vault" (every vault request),
// "vault.challenge" (401s), "vault.throttled" (429s), "vault.ok",
// "vault.secrets.get", "vault.secrets.list", "vault.keys.get",
// "vault.keys.list", "vault.certificates.get", "vault.certificates.list",
// "vault.secrets.listnames" (pages of GET /secrets, the secrets' list),
// "token" (every token request), "token.secret", "token.assertion",
// "token.managed", "token.refused".
func (s *Server) Count(name string) int64 {
	if c, ok := s.counts.Load(name); ok {
		return c.(*atomic.Int64).Load()
	}
	return 0
}

// MaxInFlight is the most vault requests seen in flight at once.
func (s *Server) MaxInFlight() int64 { return s.maxIn.Load() }

// ResetCounts zeroes all counters.
func (s *Server) ResetCounts() {
	s.counts.Range(func(k, _ any) bool { s.counts.Delete(k); return true })
	s.maxIn.Store(0)
}

func (s *Server) inc(name string) {
	c, _ := s.counts.LoadOrStore(name, new(atomic.Int64))
	c.(*atomic.Int64).Add(1)
}

// ServeHTTP routes vault hosts to the Key Vault handlers and everything
// else to Entra ID.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	host := strings.ToLower(r.Host)
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	if name, ok := strings.CutSuffix(host, "."+s.cfg.VaultSuffix); ok {
		s.serveVault(w, r, name)
		return
	}
	s.serveEntra(w, r)
}

// nextCreated returns strictly increasing creation times, so version order
// is deterministic.
func (s *Server) nextCreated() time.Time {
	s.created = s.created.Add(time.Minute)
	return s.created
}

func requireLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if host == "localhost" {
		return nil
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("fakeazure: %q is not a loopback address", addr)
	}
	return nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// newTLSCert makes a server certificate for loopback, extra (the listen
// address, if not loopback) and *.<suffix>, signed
// by ca or, if nil, by a new CA. It returns the CA certificate as PEM.
func newTLSCert(suffix string, ca *tls.Certificate, extra net.IP) ([]byte, tls.Certificate, error) {
	now := time.Now()
	if ca == nil {
		var err error
		if ca, err = newCA(now); err != nil {
			return nil, tls.Certificate{}, err
		}
	}
	if len(ca.Certificate) == 0 {
		return nil, tls.Certificate{}, errors.New("fakeazure: the CA has no certificate")
	}
	caCert, err := x509.ParseCertificate(ca.Certificate[0])
	if err != nil {
		return nil, tls.Certificate{}, fmt.Errorf("fakeazure: CA certificate: %w", err)
	}
	if !caCert.IsCA {
		return nil, tls.Certificate{}, errors.New("fakeazure: the CA certificate is not a CA (basicConstraints CA:TRUE)")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: "fakeazure"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"localhost", "*." + suffix},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	if extra != nil {
		tmpl.IPAddresses = append(tmpl.IPAddresses, extra)
	}
	if caCert.NotAfter.Before(tmpl.NotAfter) {
		tmpl.NotAfter = caCert.NotAfter
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, ca.PrivateKey)
	if err != nil {
		return nil, tls.Certificate{}, fmt.Errorf("fakeazure: signing the server certificate: %w", err)
	}
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Certificate[0]})
	return caPEM, tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

// serial is a random positive certificate serial number, so two servers
// signed by one CA never reuse one.
func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n.Add(n, big.NewInt(1))
}

// newCA makes a self-signed ECDSA CA.
func newCA(now time.Time) (*tls.Certificate, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "fakeazure CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	return &tls.Certificate{Certificate: [][]byte{caDER}, PrivateKey: caKey}, nil
}
