package azure

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/secretfs/secretfs/provider"
	"github.com/secretfs/secretfs/test/fakeazure"
	"google.golang.org/grpc/codes"
	pkcs12 "software.sslmate.com/src/go-pkcs12"
)

func TestSecretsEncodingsAliasModes(t *testing.T) {
	e := newTestEnv(t, nil)
	v1 := e.vault.SetSecret("plain", "hello", "")
	e.vault.SetSecret("b64", base64.StdEncoding.EncodeToString([]byte{0, 1, 2, 255}), "")
	e.vault.SetSecret("hexed", hex.EncodeToString([]byte("hexed!")), "")
	// The upstream `array:` spelling, with whitespace upstream trims.
	objects := "array:\n" +
		"  - |\n    objectName: plain\n    objectType: secret\n    objectAlias: ' greeting '\n    filePermission: \"0440\"\n" +
		"  - |\n    objectName: b64\n    objectType: secret\n    objectEncoding: base64\n" +
		"  - |\n    objectName: hexed\n    objectType: secret\n    objectEncoding: HEX\n    objectVersion: latest\n"
	res := e.fetch(t, e.spRequest(objects))
	files := fileMap(res)
	if got := files["greeting"]; string(got.Contents) != "hello" || got.Mode != 0o440 {
		t.Fatalf("greeting: %q %o", got.Contents, got.Mode)
	}
	if got := files["b64"]; string(got.Contents) != "\x00\x01\x02\xff" || got.Mode != 0o644 {
		t.Fatalf("b64: %q %o", got.Contents, got.Mode)
	}
	if got := files["hexed"]; string(got.Contents) != "hexed!" {
		t.Fatalf("hexed: %q", got.Contents)
	}
	if len(res.Files) != 3 || len(res.Versions) != 3 {
		t.Fatalf("got %d files, %d versions", len(res.Files), len(res.Versions))
	}
	if res.Versions[0] != (provider.ObjectVersion{ID: "secret/plain", Version: v1}) {
		t.Fatalf("version: %+v, want secret/plain %s", res.Versions[0], v1)
	}
}

func TestSecretPinnedVersionAndDisabled(t *testing.T) {
	e := newTestEnv(t, nil)
	old := e.vault.SetSecret("s", "one", "")
	newest := e.vault.SetSecret("s", "two", "")
	res := e.fetch(t, e.spRequest("- objectName: s\n  objectType: secret\n  objectVersion: "+old+"\n"))
	if string(res.Files[0].Contents) != "one" || res.Versions[0].Version != old {
		t.Fatalf("pinned: %q %+v", res.Files[0].Contents, res.Versions[0])
	}
	e.vault.Disable("secrets", "s", newest)
	_, err := e.p.Fetch(context.Background(), e.spRequest("- objectName: s\n  objectType: secret\n"))
	wantCode(t, err, codes.FailedPrecondition, "disabled", `"s"`, "kv-test")
	if strings.Contains(err.Error(), "two") {
		t.Fatalf("error leaks the value: %v", err)
	}
}

func TestVersionHistory(t *testing.T) {
	e := newTestEnv(t, nil)
	var ids []string
	for i := range 5 {
		ids = append(ids, e.vault.SetSecret("hist", fmt.Sprintf("v%d", i), ""))
	}
	e.vault.Disable("secrets", "hist", ids[3]) // newest-but-one is skipped
	res := e.fetch(t, e.spRequest("- objectName: hist\n  objectType: secret\n  objectAlias: h\n  objectVersionHistory: 3\n"))
	want := map[string]string{"h/0": "v4", "h/1": "v2", "h/2": "v1"}
	files := fileMap(res)
	if len(files) != 3 {
		t.Fatalf("files: %v", res.Files)
	}
	for p, v := range want {
		if string(files[p].Contents) != v {
			t.Fatalf("%s = %q, want %q", p, files[p].Contents, v)
		}
	}
	if res.Versions[0] != (provider.ObjectVersion{ID: "secret/hist/0", Version: ids[4]}) {
		t.Fatalf("versions: %+v", res.Versions)
	}
	// 5 versions at 2 a page: the listing followed nextLink 3 times.
	if got := e.fake.Count("vault.secrets.list"); got < 3 {
		t.Fatalf("listing made %d requests, want >= 3 (paging)", got)
	}

	// Starting at a pinned version, as upstream.
	res = e.fetch(t, e.spRequest("- objectName: hist\n  objectType: secret\n  objectVersion: "+ids[2]+"\n  objectVersionHistory: 2\n"))
	files = fileMap(res)
	if string(files["hist/0"].Contents) != "v2" || string(files["hist/1"].Contents) != "v1" || len(files) != 2 {
		t.Fatalf("pinned history: %v", res.Files)
	}
}

func TestKeysRSAandEC(t *testing.T) {
	e := newTestEnv(t, nil)
	rk, _ := rsa.GenerateKey(rand.Reader, 2048)
	ek, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	rv, _ := e.vault.AddKey("rsa", &rk.PublicKey)
	if _, err := e.vault.AddKey("ec", &ek.PublicKey); err != nil {
		t.Fatal(err)
	}
	res := e.fetch(t, e.spRequest("- objectName: rsa\n  objectType: key\n- objectName: ec\n  objectType: key\n"))
	files := fileMap(res)
	for name, want := range map[string]any{"rsa": &rk.PublicKey, "ec": &ek.PublicKey} {
		block, rest := pem.Decode(files[name].Contents)
		if block == nil || block.Type != "PUBLIC KEY" || len(rest) != 0 {
			t.Fatalf("%s: not one PUBLIC KEY block: %q", name, files[name].Contents)
		}
		got, err := x509.ParsePKIXPublicKey(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		if !got.(interface{ Equal(crypto.PublicKey) bool }).Equal(want) {
			t.Fatalf("%s: public key differs", name)
		}
	}
	if res.Versions[0] != (provider.ObjectVersion{ID: "key/rsa", Version: rv}) {
		t.Fatalf("versions: %+v", res.Versions)
	}
}

func TestCertObjectIsLeafPEM(t *testing.T) {
	e := newTestEnv(t, nil)
	ca := newPKI(t, true)
	pfx := pfxB64(t, ca, ca.leaf, ca.inter, ca.root)
	v := e.vault.AddCertificate("site", ca.leaf.Raw, pfx, contentTypePFX)
	res := e.fetch(t, e.spRequest("- objectName: site\n  objectType: cert\n"))
	if string(res.Files[0].Contents) != string(mustCertPEM(ca.leaf)) {
		t.Fatalf("cert content:\n%s", res.Files[0].Contents)
	}
	if res.Versions[0] != (provider.ObjectVersion{ID: "cert/site", Version: v}) {
		t.Fatalf("versions: %+v", res.Versions)
	}
	// Version history of certificates uses the certificates list.
	e.vault.AddCertificate("site", ca.leaf.Raw, pfx, contentTypePFX)
	res = e.fetch(t, e.spRequest("- objectName: site\n  objectType: cert\n  objectVersionHistory: 2\n"))
	if len(res.Files) != 2 || res.Files[1].Path != "site/1" || res.Versions[1] != (provider.ObjectVersion{ID: "cert/site/1", Version: v}) {
		t.Fatalf("cert history: %+v", res.Versions)
	}
}

func pfxB64(t testing.TB, ca *pki, first *x509.Certificate, rest ...*x509.Certificate) string {
	t.Helper()
	// The first certificate bag need not be the leaf: Key Vault imports
	// bundles in whatever order they were uploaded.
	data, err := pkcs12.Legacy.Encode(ca.leafKey, first, rest, "")
	if err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(data)
}

func TestCertificateBackedSecretPEMChainOrdered(t *testing.T) {
	e := newTestEnv(t, nil)
	ca := newPKI(t, true)
	// Stored shuffled: root, leaf, intermediate.
	e.vault.AddCertificate("bundle", ca.leaf.Raw, pfxB64(t, ca, ca.root, ca.leaf, ca.inter), contentTypePFX)
	res := e.fetch(t, e.spRequest("- objectName: bundle\n  objectType: secret\n"))
	out := res.Files[0].Contents
	block, rest := pem.Decode(out)
	if block == nil || block.Type != "PRIVATE KEY" {
		t.Fatalf("first block is not a PKCS#8 PRIVATE KEY: %v", block)
	}
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil || !key.(*ecdsa.PrivateKey).Equal(ca.leafKey) {
		t.Fatalf("private key: %v", err)
	}
	if string(rest) != mustPEMList(ca.leaf, ca.inter, ca.root) {
		t.Fatalf("chain not ordered leaf->intermediate->root:\n%s", rest)
	}

	// Upstream --construct-pem-chain=false keeps the stored order.
	e2 := newTestEnv(t, func(o *Options) { o.DisablePEMChainOrdering = true })
	e2.vault.AddCertificate("bundle", ca.leaf.Raw, pfxB64(t, ca, ca.root, ca.leaf, ca.inter), contentTypePFX)
	res = e2.fetch(t, e2.spRequest("- objectName: bundle\n  objectType: secret\n"))
	_, rest = pem.Decode(res.Files[0].Contents)
	if string(rest) != mustPEMList(ca.root, ca.leaf, ca.inter) {
		t.Fatalf("unordered chain changed")
	}
}

func TestCertificateBackedSecretPFXAndPEMContentTypes(t *testing.T) {
	e := newTestEnv(t, nil)
	ca := newPKI(t, true)
	pfx := pfxB64(t, ca, ca.leaf, ca.inter, ca.root)
	e.vault.AddCertificate("pfx", ca.leaf.Raw, pfx, contentTypePFX)
	stored := "-----BEGIN PRIVATE KEY-----\nstored as is\n-----END PRIVATE KEY-----\n" + mustPEMList(ca.root, ca.leaf)
	e.vault.AddCertificate("pemcert", ca.leaf.Raw, stored, contentTypePEM)
	res := e.fetch(t, e.spRequest(
		"- objectName: pfx\n  objectType: secret\n  objectFormat: pfx\n  objectEncoding: base64\n  objectAlias: raw.pfx\n"+
			"- objectName: pfx\n  objectType: secret\n  objectFormat: PFX\n  objectAlias: b64.pfx\n"+
			"- objectName: pemcert\n  objectType: secret\n"))
	files := fileMap(res)
	raw, _ := base64.StdEncoding.DecodeString(pfx)
	if string(files["raw.pfx"].Contents) != string(raw) {
		t.Fatal("objectFormat pfx + objectEncoding base64 must give the PFX bytes")
	}
	if string(files["b64.pfx"].Contents) != pfx {
		t.Fatal("objectFormat pfx without encoding must give the base64 text, as upstream")
	}
	if string(files["pemcert"].Contents) != stored {
		t.Fatal("application/x-pem-file must be written as stored")
	}
}

func TestOrderCertChain(t *testing.T) {
	for _, keyIDs := range []bool{true, false} {
		ca := newPKI(t, keyIDs)
		want := describeCerts([]*x509.Certificate{ca.leaf, ca.inter, ca.root})
		perms := [][]*x509.Certificate{
			{ca.leaf, ca.inter, ca.root}, {ca.leaf, ca.root, ca.inter}, {ca.inter, ca.leaf, ca.root},
			{ca.inter, ca.root, ca.leaf}, {ca.root, ca.leaf, ca.inter}, {ca.root, ca.inter, ca.leaf},
		}
		for _, p := range perms {
			if got := describeCerts(orderCertChain(p)); got != want {
				t.Errorf("keyIDs=%v %s -> %s, want %s", keyIDs, describeCerts(p), got, want)
			}
		}
	}
	// Not one chain (two leaves of one issuer): original order.
	a, b := newPKI(t, true), newPKI(t, true)
	mixed := []*x509.Certificate{a.root, b.leaf, a.leaf}
	if got := describeCerts(orderCertChain(mixed)); got != describeCerts(mixed) {
		t.Fatalf("non-chain reordered: %s", got)
	}
}

func TestEncodingMismatchIsFailedPrecondition(t *testing.T) {
	e := newTestEnv(t, nil)
	e.vault.SetSecret("notb64", "this is *not* base64 and is secret", "")
	_, err := e.p.Fetch(context.Background(), e.spRequest("- objectName: notb64\n  objectType: secret\n  objectEncoding: base64\n"))
	wantCode(t, err, codes.FailedPrecondition, "base64", "notb64")
	if strings.Contains(err.Error(), "secret is") {
		t.Fatalf("value leaked: %v", err)
	}
}

func TestWorkloadIdentityUsesCurrentPodToken(t *testing.T) {
	e := newTestEnv(t, nil)
	e.vault.SetSecret("s", "wi", "")
	req := e.spRequest("- objectName: s\n  objectType: secret\n")
	req.Secrets = nil
	req.Parameters["clientID"] = wiClient
	req.Tokens = map[string]provider.Token{WorkloadIdentityAudience: {Token: e.saToken(t, "system:serviceaccount:team-a:app", time.Hour)}}
	res := e.fetch(t, req)
	if string(res.Files[0].Contents) != "wi" || e.fake.Count("token.assertion") != 1 {
		t.Fatalf("content %q, assertions %d", res.Files[0].Contents, e.fake.Count("token.assertion"))
	}

	// Another service account federated to nothing: gets its own credential
	// (never the cached token of team-a/app) and is refused by Entra ID.
	other := e.spRequest("- objectName: s\n  objectType: secret\n")
	other.Secrets = nil
	other.Pod.ServiceAccount = "intruder"
	other.Parameters["clientID"] = wiClient
	other.Tokens = map[string]provider.Token{WorkloadIdentityAudience: {Token: e.saToken(t, "system:serviceaccount:team-a:intruder", time.Hour)}}
	_, err := e.p.Fetch(context.Background(), other)
	wantCode(t, err, codes.Unauthenticated, "workload identity", wiClient, "invalid_client")
	if strings.Contains(err.Error(), other.Tokens[WorkloadIdentityAudience].Token) {
		t.Fatal("token leaked into error")
	}

	// No token from kubelet.
	req.Tokens = nil
	_, err = e.p.Fetch(context.Background(), req)
	wantCode(t, err, codes.InvalidArgument, "api://AzureADTokenExchange", "tokenRequests")
}

func TestWorkloadIdentityAssertionReadsNewestToken(t *testing.T) {
	// Entra ID tokens that live 1s force a new exchange on the second mount;
	// the fake's clock is then moved past the first pod token's expiry, so
	// success proves the assertion callback read the newest one.
	var skew atomic.Int64
	now := func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }
	e := newTestEnvWith(t, fakeazure.Config{TokenLifetime: time.Second, Now: now}, nil)
	e.vault.SetSecret("s", "x", "")
	req := e.spRequest("- objectName: s\n  objectType: secret\n")
	req.Secrets = nil
	req.Parameters["clientID"] = wiClient
	req.Tokens = map[string]provider.Token{WorkloadIdentityAudience: {Token: e.saToken(t, "system:serviceaccount:team-a:app", 1*time.Second)}}
	e.fetch(t, req)
	skew.Store(int64(3 * time.Second)) // the first pod token (exp at most now+2s) has expired for Entra ID
	before := e.fake.Count("token.assertion")
	req.Tokens = map[string]provider.Token{WorkloadIdentityAudience: {Token: e.saToken(t, "system:serviceaccount:team-a:app", time.Hour)}}
	e.fetch(t, req)
	if got := e.fake.Count("token.assertion"); got <= before {
		t.Fatalf("no new exchange after the Entra ID token expired (%d -> %d)", before, got)
	}
	if got := e.fake.Count("token.refused"); got != 0 {
		t.Fatalf("refused = %d: an expired pod token was used", got)
	}
}

func TestManagedIdentity(t *testing.T) {
	// MSAL caches managed identity tokens process-wide by resource; a vault
	// suffix of its own keeps tokens of earlier fakes (-count=N) out.
	e := newTestEnvWith(t, fakeazure.Config{VaultSuffix: fmt.Sprintf("mi%d.azure.test", time.Now().UnixNano())},
		func(o *Options) { o.ManagedIdentityNamespaces = []string{"other", "team-a"} })
	t.Setenv("IDENTITY_ENDPOINT", e.fake.ManagedIdentityEndpoint())
	t.Setenv("IDENTITY_HEADER", e.fake.IdentityHeader())
	e.vault.SetSecret("s", "mi", "")
	req := e.spRequest("- objectName: s\n  objectType: secret\n")
	req.Secrets = nil
	req.Parameters["useVMManagedIdentity"] = "true"
	req.Parameters["userAssignedIdentityID"] = miClient
	res := e.fetch(t, req)
	if string(res.Files[0].Contents) != "mi" || e.fake.Count("token.managed") != 1 {
		t.Fatalf("content %q managed tokens %d", res.Files[0].Contents, e.fake.Count("token.managed"))
	}
	delete(req.Parameters, "userAssignedIdentityID") // system-assigned
	e.fetch(t, req)
	if e.fake.Count("token.managed") != 2 {
		t.Fatal("system-assigned identity did not get its own token")
	}
}

func TestServicePrincipalBadSecret(t *testing.T) {
	e := newTestEnv(t, nil)
	e.vault.SetSecret("s", "x", "")
	req := e.spRequest("- objectName: s\n  objectType: secret\n")
	req.Secrets["clientsecret"] = "wrong-secret-value"
	_, err := e.p.Fetch(context.Background(), req)
	wantCode(t, err, codes.Unauthenticated, "service principal", spClient, "AADSTS7000215")
	if strings.Contains(err.Error(), "wrong-secret-value") {
		t.Fatal("secret leaked")
	}
}

func TestChallengeFlowAndClientReuse(t *testing.T) {
	e := newTestEnv(t, nil)
	for i := range 5 {
		e.vault.SetSecret(fmt.Sprintf("s%d", i), "v", "")
	}
	objects := "- {objectName: s0, objectType: secret}\n- {objectName: s1, objectType: secret}\n- {objectName: s2, objectType: secret}\n- {objectName: s3, objectType: secret}\n- {objectName: s4, objectType: secret}\n"
	for range 10 {
		e.fetch(t, e.spRequest(objects))
	}
	// One credential, one token for 50 reads; the challenge happened once
	// per concurrently started request of the first mount at most.
	if got := e.fake.Count("token"); got != 1 {
		t.Fatalf("token requests = %d, want 1", got)
	}
	if got := e.fake.Count("vault.challenge"); got < 1 || got > 5 {
		t.Fatalf("challenges = %d, want 1..5", got)
	}
	if got := e.fake.Count("vault.secrets.get"); got != 50 {
		t.Fatalf("secret gets = %d, want 50", got)
	}
	if e.p.cache.len() != 1 {
		t.Fatalf("cache holds %d client sets", e.p.cache.len())
	}
	// A rotated client secret is a new cache entry, not a stale credential.
	e.fake.AddClientSecret(spClient, "rotated")
	req := e.spRequest(objects)
	req.Secrets["clientsecret"] = "rotated"
	e.fetch(t, req)
	if e.p.cache.len() != 2 || e.fake.Count("token") != 2 {
		t.Fatalf("rotated secret: cache %d tokens %d", e.p.cache.len(), e.fake.Count("token"))
	}
}

func TestForbiddenAndNotFound(t *testing.T) {
	e := newTestEnv(t, nil)
	e.vault.SetSecret("s", "x", "")
	_, err := e.p.Fetch(context.Background(), e.spRequest("- objectName: missing\n  objectType: secret\n"))
	wantCode(t, err, codes.NotFound, "missing", "kv-test")

	e.vault.Allow("someone-else")
	_, err = e.p.Fetch(context.Background(), e.spRequest("- objectName: s\n  objectType: secret\n"))
	wantCode(t, err, codes.PermissionDenied, "kv-test", `"s"`, "service principal", spClient)
}

func TestUnknownVaultIsUnavailable(t *testing.T) {
	e := newTestEnv(t, nil)
	req := e.spRequest("- objectName: s\n  objectType: secret\n")
	req.Parameters["keyvaultName"] = "no-such-vault"
	start := time.Now()
	_, err := e.p.Fetch(context.Background(), req)
	wantCode(t, err, codes.Unavailable, "no-such-vault", "could not be reached", "does not resolve")
	_ = start
}

func TestThrottlingRetriedThenSucceeds(t *testing.T) {
	e := newTestEnv(t, nil)
	e.vault.SetSecret("s", "x", "")
	e.fetch(t, e.spRequest("- objectName: s\n  objectType: secret\n")) // warm: token + challenge
	e.fake.ResetCounts()
	e.fake.Throttle(3, "")
	e.fetch(t, e.spRequest("- objectName: s\n  objectType: secret\n"))
	if got := e.fake.Count("vault.throttled"); got != 3 {
		t.Fatalf("throttled = %d", got)
	}
	if got := e.fake.Count("vault"); got != 4 {
		t.Fatalf("vault requests = %d, want 3 throttled + 1 ok", got)
	}
	e.fake.ResetCounts()
	e.fake.Throttle(2, "0") // Retry-After: 0 means now
	e.fetch(t, e.spRequest("- objectName: s\n  objectType: secret\n"))
	if got := e.fake.Count("vault"); got != 3 {
		t.Fatalf("with Retry-After 0: vault requests = %d, want 3", got)
	}
}

func TestThrottlingStormGivesUpWithinBudget(t *testing.T) {
	e := newTestEnv(t, func(o *Options) { o.RetryBase = time.Millisecond; o.ThrottleBudget = 200 * time.Millisecond })
	e.vault.SetSecret("s", "x", "")
	e.fetch(t, e.spRequest("- objectName: s\n  objectType: secret\n"))
	e.fake.ResetCounts()
	e.fake.Throttle(-1, "")
	_, err := e.p.Fetch(context.Background(), e.spRequest("- objectName: s\n  objectType: secret\n"))
	wantCode(t, err, codes.Unavailable, "throttling", "kv-test", "429")
	n := e.fake.Count("vault.throttled")
	if n < 3 {
		t.Fatalf("only %d attempts before giving up", n)
	}
	if n != e.fake.Count("vault") {
		t.Fatal("unexpected non-throttled requests")
	}

	// A Retry-After beyond the budget ends the fetch after one attempt
	// instead of sleeping into kubelet's deadline.
	e.fake.ResetCounts()
	e.fake.Throttle(-1, "120")
	_, err = e.p.Fetch(context.Background(), e.spRequest("- objectName: s\n  objectType: secret\n"))
	wantCode(t, err, codes.Unavailable, "throttling")
	if got := e.fake.Count("vault"); got != 1 {
		t.Fatalf("Retry-After 120: %d attempts, want 1", got)
	}

	// A context deadline shorter than the budget wins.
	e3 := newTestEnv(t, func(o *Options) { o.RetryBase = 50 * time.Millisecond; o.ThrottleBudget = time.Minute })
	e3.vault.SetSecret("s", "x", "")
	e3.fetch(t, e3.spRequest("- objectName: s\n  objectType: secret\n"))
	e3.fake.Throttle(-1, "")
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err = e3.p.Fetch(ctx, e3.spRequest("- objectName: s\n  objectType: secret\n"))
	wantCode(t, err, codes.Unavailable, "throttling")
}

func TestAllOrNothing(t *testing.T) {
	e := newTestEnv(t, nil)
	e.vault.SetSecret("a", "x", "")
	res, err := e.p.Fetch(context.Background(), e.spRequest("- {objectName: a, objectType: secret}\n- {objectName: gone, objectType: secret}\n"))
	if res != nil {
		t.Fatal("partial result returned")
	}
	wantCode(t, err, codes.NotFound, "gone")
}

// optional: true is accepted and leaves out only a missing object; other
// failures of an optional object still fail the volume.
func TestOptionalObject(t *testing.T) {
	e := newTestEnv(t, nil)
	e.vault.SetSecret("a", "x", "")
	res, err := e.p.Fetch(context.Background(), e.spRequest("array:\n  - |\n    objectName: a\n    objectType: secret\n  - |\n    objectName: gone\n    objectType: secret\n    optional: true\n"))
	if err != nil || len(res.Files) != 1 || res.Files[0].Path != "a" {
		t.Fatalf("optional missing object: %v %v", res, err)
	}
	e.vault.Allow("someone-else")
	_, err = e.p.Fetch(context.Background(), e.spRequest("- {objectName: a, objectType: secret, optional: true}\n"))
	wantCode(t, err, codes.PermissionDenied, `"a"`)
}

func TestConcurrencyBoundPerVault(t *testing.T) {
	e := newTestEnv(t, func(o *Options) { o.MaxConcurrentPerVault = 3 })
	var objs strings.Builder
	for i := range 12 {
		e.vault.SetSecret(fmt.Sprintf("c%d", i), "v", "")
		fmt.Fprintf(&objs, "- {objectName: c%d, objectType: secret}\n", i)
	}
	e.fetch(t, e.spRequest(objs.String())) // warm
	e.fake.ResetCounts()
	e.fake.SetLatency(20 * time.Millisecond)
	var wg sync.WaitGroup
	for range 3 { // three mounts at once share the vault's bound
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := e.p.Fetch(context.Background(), e.spRequest(objs.String())); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if got := e.fake.MaxInFlight(); got > 3 || got < 2 {
		t.Fatalf("max in flight = %d, want 2..3", got)
	}
	if got := e.fake.Count("vault.secrets.get"); got != 36 {
		t.Fatalf("gets = %d, want 36", got)
	}
}

func TestEndpointsOnlyFromOptions(t *testing.T) {
	e := newTestEnv(t, nil)
	e.vault.SetSecret("s", "x", "")
	req := e.spRequest("- objectName: s\n  objectType: secret\n")
	req.Parameters["cloudName"] = "AzureChinaCloud"
	// The driver's suffix override applies whatever cloud the class names.
	if string(e.fetch(t, req).Files[0].Contents) != "x" {
		t.Fatal("wrong content")
	}
	req.Parameters["cloudEnvFileName"] = "/etc/kubernetes/custom.json"
	_, err := e.p.Fetch(context.Background(), req)
	wantCode(t, err, codes.InvalidArgument, "cloudEnvFileName")
}

func TestBadOptions(t *testing.T) {
	for want, o := range map[string]Options{
		"ExtraCAPEM":     {ExtraCAPEM: []byte("not pem")},
		"AuthorityHost":  {AuthorityHost: "http://login.example/"},
		"VaultDNSSuffix": {VaultDNSSuffix: "vault..x"},
		"VaultAddress":   {VaultAddress: "127.0.0.1:1"},
	} {
		_, err := New(o).Fetch(context.Background(), &provider.Request{})
		wantCode(t, err, codes.Internal, want)
	}
}

func TestMain(m *testing.M) {
	// Managed identity detection reads these; start clean.
	for _, k := range []string{"IDENTITY_ENDPOINT", "IDENTITY_HEADER", "MSI_ENDPOINT", "IMDS_ENDPOINT", "IDENTITY_SERVER_THUMBPRINT"} {
		os.Unsetenv(k)
	}
	os.Exit(m.Run())
}

// VaultAddress is how a local cluster reaches the standalone fake: vault
// names keep resolving to nothing, connections go to one loopback address.
func TestVaultAddressOption(t *testing.T) {
	var addr string
	e := newTestEnv(t, func(o *Options) { o.DialContext = nil })
	addr = e.fake.Addr
	e.p = New(Options{VaultDNSSuffix: e.fake.VaultSuffix(), AuthorityHost: e.fake.AuthorityHost(), ExtraCAPEM: e.fake.CACertPEM, VaultAddress: addr, RetryBase: time.Millisecond})
	e.vault.SetSecret("s", "via-address", "")
	if got := string(e.fetch(t, e.spRequest("- objectName: s\n  objectType: secret\n")).Files[0].Contents); got != "via-address" {
		t.Fatalf("got %q", got)
	}
}

// The node's managed identity is for the namespaces the admin names only:
// by default none, and the refusal names the flag. No token is requested.
func TestManagedIdentityNamespaceAllowList(t *testing.T) {
	for name, allow := range map[string][]string{"default": nil, "other namespaces": {"team-b"}} {
		e := newTestEnvWith(t, fakeazure.Config{VaultSuffix: fmt.Sprintf("mi%d.azure.test", time.Now().UnixNano())},
			func(o *Options) { o.ManagedIdentityNamespaces = allow })
		t.Setenv("IDENTITY_ENDPOINT", e.fake.ManagedIdentityEndpoint())
		t.Setenv("IDENTITY_HEADER", e.fake.IdentityHeader())
		e.vault.SetSecret("s", "mi", "")
		req := e.spRequest("- objectName: s\n  objectType: secret\n")
		req.Secrets = nil
		req.Parameters["useVMManagedIdentity"] = "true"
		_, err := e.p.Fetch(context.Background(), req)
		wantCode(t, err, codes.PermissionDenied, ManagedIdentityFlag, `namespace "team-a"`)
		if n := e.fake.Count("token.managed"); n != 0 {
			t.Fatalf("%s: %d managed identity tokens requested", name, n)
		}
	}
	e := newTestEnvWith(t, fakeazure.Config{VaultSuffix: fmt.Sprintf("mi%d.azure.test", time.Now().UnixNano())},
		func(o *Options) { o.ManagedIdentityNamespaces = []string{"*"} })
	t.Setenv("IDENTITY_ENDPOINT", e.fake.ManagedIdentityEndpoint())
	t.Setenv("IDENTITY_HEADER", e.fake.IdentityHeader())
	e.vault.SetSecret("s", "mi", "")
	req := e.spRequest("- objectName: s\n  objectType: secret\n")
	req.Secrets = nil
	req.Parameters["useVMManagedIdentity"] = "true"
	if res := e.fetch(t, req); string(res.Files[0].Contents) != "mi" {
		t.Fatal("\"*\" does not allow every namespace")
	}
}
