package azure

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math/big"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/secretfs/secretfs/provider"
	"github.com/secretfs/secretfs/test/fakeazure"
	"google.golang.org/grpc/codes"
)

const (
	spClient = "11111111-1111-1111-1111-111111111111"
	spSecret = "sp-secret-value"
	wiClient = "22222222-2222-2222-2222-222222222222"
	miClient = "33333333-3333-3333-3333-333333333333"
)

type testEnv struct {
	fake  *fakeazure.Server
	vault *fakeazure.Vault
	p     *Provider
	// saKey signs service-account tokens like the Kubernetes issuer.
	saKey *rsa.PrivateKey
}

func newTestEnv(t testing.TB, mod func(*Options)) *testEnv {
	t.Helper()
	return newTestEnvWith(t, fakeazure.Config{}, mod)
}

func newTestEnvWith(t testing.TB, fcfg fakeazure.Config, mod func(*Options)) *testEnv {
	t.Helper()
	fake, err := fakeazure.Start(fcfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = fake.Close() })
	fake.AddClientSecret(spClient, spSecret)
	fake.AddFederatedCredential(wiClient, "system:serviceaccount:team-a:app")
	fake.AddManagedIdentity(miClient)
	saKey := testSAKey(t)
	jwks, _ := json.Marshal(map[string]any{"keys": []map[string]any{{
		"kty": "RSA", "kid": "sa-key", "alg": "RS256", "use": "sig",
		"n": base64.RawURLEncoding.EncodeToString(saKey.N.Bytes()),
		"e": base64.RawURLEncoding.EncodeToString(big.NewInt(int64(saKey.E)).Bytes()),
	}}})
	if err := fake.SetJWKS(jwks); err != nil {
		t.Fatal(err)
	}
	opts := Options{
		VaultDNSSuffix: fake.VaultSuffix(),
		AuthorityHost:  fake.AuthorityHost(),
		ExtraCAPEM:     fake.CACertPEM,
		DialContext:    fake.DialContext,
		RetryBase:      time.Millisecond,
		ThrottleBudget: 2 * time.Second,
	}
	if mod != nil {
		mod(&opts)
	}
	return &testEnv{fake: fake, vault: fake.AddVault("kv-test"), p: New(opts), saKey: saKey}
}

var (
	saKeyOnce sync.Once
	saKeyVal  *rsa.PrivateKey
)

// testSAKey is the service-account issuer key, made once per test binary.
func testSAKey(t testing.TB) *rsa.PrivateKey {
	saKeyOnce.Do(func() {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			panic(err)
		}
		saKeyVal = k
	})
	return saKeyVal
}

// spRequest is a service-principal request for objects (plain YAML list).
func (e *testEnv) spRequest(objects string) *provider.Request {
	return &provider.Request{
		Pod:         provider.Pod{Namespace: "team-a", Name: "app-0", ServiceAccount: "app"},
		Class:       "kv",
		Parameters:  map[string]string{"keyvaultName": "kv-test", "tenantID": e.fake.TenantID(), "objects": objects},
		Secrets:     map[string]string{"clientid": spClient, "clientsecret": spSecret},
		DefaultMode: 0o644,
	}
}

// saToken mints a service-account token as kubelet would hand it over.
func (e *testEnv) saToken(t testing.TB, sub string, ttl time.Duration) string {
	t.Helper()
	hdr, _ := json.Marshal(map[string]string{"alg": "RS256", "kid": "sa-key", "typ": "JWT"})
	claims, _ := json.Marshal(map[string]any{
		"iss": e.fake.Issuer(), "sub": sub, "aud": []string{WorkloadIdentityAudience},
		// exp is whole seconds: round up so the token lives at least ttl (a
		// truncated exp minted late in a second could expire at once).
		"exp": time.Now().Add(ttl + time.Second - 1).Unix(), "iat": time.Now().Unix(), "nbf": time.Now().Unix(),
	})
	signed := base64.RawURLEncoding.EncodeToString(hdr) + "." + base64.RawURLEncoding.EncodeToString(claims)
	sum := sha256.Sum256([]byte(signed))
	sig, err := rsa.SignPKCS1v15(rand.Reader, e.saKey, crypto.SHA256, sum[:])
	if err != nil {
		t.Fatal(err)
	}
	return signed + "." + base64.RawURLEncoding.EncodeToString(sig)
}

func (e *testEnv) fetch(t testing.TB, req *provider.Request) *provider.Result {
	t.Helper()
	res, err := e.p.Fetch(context.Background(), req)
	if err != nil {
		t.Fatalf("Fetch: %v", err)
	}
	return res
}

func fileMap(res *provider.Result) map[string]provider.File {
	m := map[string]provider.File{}
	for _, f := range res.Files {
		m[f.Path] = f
	}
	return m
}

func wantCode(t testing.TB, err error, code codes.Code, contains ...string) {
	t.Helper()
	if provider.CodeOf(err) != code {
		t.Fatalf("want %v, got %v: %v", code, provider.CodeOf(err), err)
	}
	for _, c := range contains {
		if !strings.Contains(err.Error(), c) {
			t.Fatalf("error %q does not mention %q", err, c)
		}
	}
}

// pki is a generated root -> intermediate -> leaf chain.
type pki struct {
	root, inter, leaf *x509.Certificate
	leafKey           *ecdsa.PrivateKey
}

func newPKI(t testing.TB, keyIDs bool) *pki {
	t.Helper()
	mk := func(cn string, parent *x509.Certificate, parentKey *ecdsa.PrivateKey, ca bool, serial int64) (*x509.Certificate, *ecdsa.PrivateKey) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		tmpl := &x509.Certificate{
			SerialNumber:          big.NewInt(serial),
			Subject:               pkix.Name{CommonName: cn},
			NotBefore:             time.Now().Add(-time.Hour),
			NotAfter:              time.Now().Add(time.Hour),
			IsCA:                  ca,
			BasicConstraintsValid: true,
			KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		}
		if parent == nil {
			parent, parentKey = tmpl, key
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
		if err != nil {
			t.Fatal(err)
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		if !keyIDs {
			// crypto/x509 always writes key identifiers; drop them from the
			// parsed certificate to exercise the issuer/subject fallback.
			c.SubjectKeyId, c.AuthorityKeyId = nil, nil
		}
		return c, key
	}
	root, rootKey := mk("Test Root", nil, nil, true, 1)
	inter, interKey := mk("Test Intermediate", root, rootKey, true, 2)
	leaf, leafKey := mk("leaf.example", inter, interKey, false, 3)
	return &pki{root: root, inter: inter, leaf: leaf, leafKey: leafKey}
}

func mustPEMList(certs ...*x509.Certificate) string {
	var b strings.Builder
	for _, c := range certs {
		b.WriteString(string(mustCertPEM(c)))
	}
	return b.String()
}

func mustCertPEM(c *x509.Certificate) []byte {
	out, _ := certificatePEM(c.Raw)
	return out
}

func describeCerts(certs []*x509.Certificate) string {
	var names []string
	for _, c := range certs {
		names = append(names, c.Subject.CommonName)
	}
	return fmt.Sprint(names)
}
