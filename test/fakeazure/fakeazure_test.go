package fakeazure

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

func start(t *testing.T) (*Server, *http.Client) {
	t.Helper()
	s, err := Start(Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(s.CACertPEM)
	return s, &http.Client{Transport: &http.Transport{DialContext: s.DialContext, TLSClientConfig: &tls.Config{RootCAs: pool}}}
}

func getJSON(t *testing.T, c *http.Client, method, u string, form url.Values, hdr map[string]string) (int, map[string]any, http.Header) {
	t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, _ := http.NewRequestWithContext(context.Background(), method, u, body)
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out, resp.Header
}

func TestRefusesNonLoopback(t *testing.T) {
	if _, err := Start(Config{Addr: "0.0.0.0:0"}); err == nil {
		t.Fatal("listening on all interfaces was allowed")
	}
	// In the machine's own network namespace (where unit tests run) no
	// other address is allowed: neither the machine's own addresses nor an
	// address it does not have.
	route, err := defaultRoute()
	if err != nil {
		t.Fatal(err)
	}
	if !ownNamespace() && route == "" {
		t.Skip("neither in the machine's own network namespace nor in one with a default route")
	}
	candidates := []string{"10.240.0.1"}
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && !n.IP.IsLoopback() {
			candidates = append(candidates, n.IP.String())
		}
	}
	for _, ip := range candidates {
		s, err := Start(Config{Addr: net.JoinHostPort(ip, "0")})
		if err == nil {
			_ = s.Close()
			t.Errorf("listening on %s in the machine's own network namespace was allowed", ip)
		}
	}
}

func TestClientAssertionChecks(t *testing.T) {
	s, c := start(t)
	key, _ := rsa.GenerateKey(rand.Reader, 2048)
	other, _ := rsa.GenerateKey(rand.Reader, 2048)
	jwks, _ := json.Marshal(map[string]any{"keys": []map[string]any{{"kty": "RSA", "kid": "k1",
		"n": base64.RawURLEncoding.EncodeToString(key.N.Bytes()), "e": base64.RawURLEncoding.EncodeToString(big.NewInt(int64(key.E)).Bytes())}}})
	if err := s.SetJWKS(jwks); err != nil {
		t.Fatal(err)
	}
	s.AddFederatedCredential("wi", "system:serviceaccount:ns:sa")
	sign := func(k *rsa.PrivateKey, claims map[string]any) string {
		h, _ := json.Marshal(map[string]string{"alg": "RS256", "kid": "k1"})
		b, _ := json.Marshal(claims)
		in := base64.RawURLEncoding.EncodeToString(h) + "." + base64.RawURLEncoding.EncodeToString(b)
		sum := sha256.Sum256([]byte(in))
		sig, _ := rsa.SignPKCS1v15(rand.Reader, k, crypto.SHA256, sum[:])
		return in + "." + base64.RawURLEncoding.EncodeToString(sig)
	}
	good := func() map[string]any {
		return map[string]any{"iss": s.Issuer(), "sub": "system:serviceaccount:ns:sa", "aud": []string{exchangeAudience}, "exp": time.Now().Add(time.Hour).Unix()}
	}
	tokenURL := s.URL + "/" + s.TenantID() + "/oauth2/v2.0/token"
	try := func(k *rsa.PrivateKey, mod func(map[string]any)) int {
		cl := good()
		if mod != nil {
			mod(cl)
		}
		code, _, _ := getJSON(t, c, http.MethodPost, tokenURL, url.Values{
			"grant_type": {"client_credentials"}, "client_id": {"wi"}, "scope": {"https://vault.azure.test/.default"},
			"client_assertion_type": {assertionType}, "client_assertion": {sign(k, cl)},
		}, nil)
		return code
	}
	if got := try(key, nil); got != http.StatusOK {
		t.Fatalf("valid assertion: %d", got)
	}
	for name, tc := range map[string]struct {
		k   *rsa.PrivateKey
		mod func(map[string]any)
	}{
		"wrong key":      {other, nil},
		"wrong issuer":   {key, func(m map[string]any) { m["iss"] = "https://evil" }},
		"wrong audience": {key, func(m map[string]any) { m["aud"] = "api://other" }},
		"expired":        {key, func(m map[string]any) { m["exp"] = time.Now().Add(-time.Minute).Unix() }},
		"wrong subject":  {key, func(m map[string]any) { m["sub"] = "system:serviceaccount:ns:other" }},
	} {
		if got := try(tc.k, tc.mod); got != http.StatusUnauthorized {
			t.Errorf("%s: status %d, want 401", name, got)
		}
	}
	if s.Count("token.refused") != 5 {
		t.Fatalf("refused = %d", s.Count("token.refused"))
	}
}

func TestSeedChallengePagingDisabled(t *testing.T) {
	s, c := start(t)
	seed := `
clients:
  - clientID: sp
    clientSecret: pw
vaults:
  - name: kv1
    secrets:
      - {name: a, value: one}
      - {name: a, value: two}
      - {name: a, value: three, enabled: false}
    keys:
      - {name: k, kty: EC}
    certificates:
      - {name: tls, commonName: app.example}
`
	if err := s.LoadSeed([]byte(seed)); err != nil {
		t.Fatal(err)
	}
	base := "https://kv1." + s.VaultSuffix()
	code, _, hdr := getJSON(t, c, http.MethodGet, base+"/secrets/a?api-version=7.5", nil, nil)
	if code != http.StatusUnauthorized || !strings.Contains(hdr.Get("WWW-Authenticate"), `resource="https://`+s.VaultSuffix()+`"`) {
		t.Fatalf("challenge: %d %q", code, hdr.Get("WWW-Authenticate"))
	}
	code, tok, _ := getJSON(t, c, http.MethodPost, s.URL+"/"+s.TenantID()+"/oauth2/v2.0/token", url.Values{
		"grant_type": {"client_credentials"}, "client_id": {"sp"}, "client_secret": {"pw"}, "scope": {"https://" + s.VaultSuffix() + "/.default"},
	}, nil)
	if code != http.StatusOK {
		t.Fatalf("token: %d %v", code, tok)
	}
	auth := map[string]string{"Authorization": "Bearer " + tok["access_token"].(string)}
	// Newest version is disabled: 403 with innererror SecretDisabled.
	code, body, _ := getJSON(t, c, http.MethodGet, base+"/secrets/a/?api-version=7.5", nil, auth)
	if code != http.StatusForbidden || !strings.Contains(toJSON(body), "SecretDisabled") {
		t.Fatalf("disabled: %d %v", code, body)
	}
	// Paging: 3 versions, 2 per page.
	code, body, _ = getJSON(t, c, http.MethodGet, base+"/secrets/a/versions?api-version=7.5", nil, auth)
	next, _ := body["nextLink"].(string)
	if code != http.StatusOK || len(body["value"].([]any)) != 2 || !strings.HasPrefix(next, base+"/") {
		t.Fatalf("page 1: %d %v", code, body)
	}
	code, body, _ = getJSON(t, c, http.MethodGet, next, nil, auth)
	if code != http.StatusOK || len(body["value"].([]any)) != 1 || body["nextLink"] != nil {
		t.Fatalf("page 2: %d %v", code, body)
	}
	for _, p := range []string{"/keys/k/", "/certificates/tls/", "/secrets/tls/"} {
		if code, body, _ := getJSON(t, c, http.MethodGet, base+p+"?api-version=7.5", nil, auth); code != http.StatusOK {
			t.Fatalf("%s: %d %v", p, code, body)
		}
	}
	if code, _, _ := getJSON(t, c, http.MethodGet, base+"/secrets/nope/?api-version=7.5", nil, auth); code != http.StatusNotFound {
		t.Fatalf("missing: %d", code)
	}
	// Throttling with Retry-After, counted.
	s.Throttle(1, "7")
	code, _, hdr = getJSON(t, c, http.MethodGet, base+"/secrets/tls/?api-version=7.5", nil, auth)
	if code != http.StatusTooManyRequests || hdr.Get("Retry-After") != "7" || s.Count("vault.throttled") != 1 {
		t.Fatalf("throttle: %d %q", code, hdr.Get("Retry-After"))
	}
	// Unknown vault names do not resolve.
	if _, err := c.Get("https://nope." + s.VaultSuffix() + "/secrets/a"); err == nil || !strings.Contains(err.Error(), "no such host") {
		t.Fatalf("unknown vault: %v", err)
	}
}

func TestManagedIdentityEndpoint(t *testing.T) {
	s, c := start(t)
	s.AddManagedIdentity("mi")
	u := s.ManagedIdentityEndpoint() + "?api-version=2019-08-01&resource=https://vault.azure.test&client_id=mi"
	if code, _, _ := getJSON(t, c, http.MethodGet, u, nil, nil); code != http.StatusUnauthorized {
		t.Fatalf("without header: %d", code)
	}
	code, body, _ := getJSON(t, c, http.MethodGet, u, nil, map[string]string{"X-IDENTITY-HEADER": s.IdentityHeader()})
	if code != http.StatusOK || body["access_token"] == "" || body["expires_on"] == nil {
		t.Fatalf("token: %d %v", code, body)
	}
}

func toJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// A given CA signs the server certificate, so a client that trusted that CA
// before the fake started can connect; a certificate that is not a CA is
// refused.
func TestGivenCA(t *testing.T) {
	ca, err := newCA(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(mustParse(t, ca.Certificate[0]))
	for i := range 2 { // two servers from one CA, like a restarted fake
		s, err := Start(Config{CA: ca})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		if got := mustParsePEM(t, s.CACertPEM); !got.Equal(mustParse(t, ca.Certificate[0])) {
			t.Fatalf("server %d reports CA %q, want the given one", i, got.Subject)
		}
		c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
		code, _, _ := getJSON(t, c, http.MethodGet, s.URL+"/common/discovery/instance", nil, nil)
		if code != http.StatusOK {
			t.Fatalf("server %d: discovery = %d", i, code)
		}
	}

	s, err := Start(Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	leaf := &tls.Certificate{Certificate: s.srv.TLSConfig.Certificates[0].Certificate, PrivateKey: s.srv.TLSConfig.Certificates[0].PrivateKey}
	if _, err := Start(Config{CA: leaf}); err == nil || !strings.Contains(err.Error(), "not a CA") {
		t.Fatalf("a leaf certificate as CA: err = %v, want 'not a CA'", err)
	}
}

func mustParse(t *testing.T, der []byte) *x509.Certificate {
	t.Helper()
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func mustParsePEM(t *testing.T, data []byte) *x509.Certificate {
	t.Helper()
	block, _ := pem.Decode(data)
	if block == nil {
		t.Fatal("no PEM block")
	}
	return mustParse(t, block.Bytes)
}

// An ES256 assertion verifies against an EC key of the JWKS, including a key
// whose coordinates have leading zero bytes (short base64), and not against
// another key.
func TestJWKSECKey(t *testing.T) {
	for i := 0; i < 20; i++ {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		raw, err := key.PublicKey.Bytes() // 0x04 || X || Y
		if err != nil {
			t.Fatal(err)
		}
		trim := func(b []byte) string { return base64.RawURLEncoding.EncodeToString(new(big.Int).SetBytes(b).Bytes()) }
		jwks := fmt.Sprintf(`{"keys":[{"kty":"EC","kid":"ec","crv":"P-256","x":%q,"y":%q}]}`, trim(raw[1:33]), trim(raw[33:]))
		ks, err := parseJWKS([]byte(jwks))
		if err != nil {
			t.Fatal(err)
		}
		signed := []byte("header.claims")
		sum := sha256.Sum256(signed)
		r, s, err := ecdsa.Sign(rand.Reader, key, sum[:])
		if err != nil {
			t.Fatal(err)
		}
		sig := make([]byte, 64)
		r.FillBytes(sig[:32])
		s.FillBytes(sig[32:])
		if !ks.verify("ES256", "ec", signed, sig) {
			t.Fatalf("key %d: a valid ES256 signature does not verify", i)
		}
		if ks.verify("ES256", "ec", []byte("other"), sig) {
			t.Fatalf("key %d: a signature verifies for other content", i)
		}
	}
}
