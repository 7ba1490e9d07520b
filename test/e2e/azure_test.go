//go:build e2e

package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/secretfs/secretfs/test/ci"
	"github.com/secretfs/secretfs/test/fakeazure"
)

// The Azure backend with workload identity, against the fake Key Vault and
// Entra ID on loopback: kubelet mints the pod's token for the audience
// api://AzureADTokenExchange, the fake Entra ID verifies it with the API
// server's own service-account keys and exchanges it for an access token
// of the federated client, and the fake Key Vault serves a secret and a
// certificate's backing secret (PKCS#12, written as PEM). A class naming a
// client that is not federated with the pod's service account fails with
// the reason in the pod's events.
func TestAzureWorkloadIdentity(t *testing.T) {
	t.Parallel()
	srv := startFakeAzure(t)
	ns := newNamespace(t)
	createServiceAccount(t, ns, "workload")
	subject := "system:serviceaccount:" + ns + ":workload"

	const (
		vaultName   = "secretfs-e2e"
		clientID    = "6b1f8c7e-0000-4000-8000-00000000e2e1"
		otherClient = "6b1f8c7e-0000-4000-8000-00000000e2e2"
	)
	srv.AddFederatedCredential(clientID, subject)
	// Federated, but with another service account only.
	srv.AddFederatedCredential(otherClient, "system:serviceaccount:"+ns+":someone-else")
	vault := srv.AddVault(vaultName)
	vault.Allow(clientID, otherClient)
	password := "kv-" + randHex(8)
	vault.SetSecret("db-password", password, "")
	leaf, bundle, err := fakeazure.SelfSignedBundle("app.secretfs.test", "application/x-pkcs12")
	if err != nil {
		t.Fatal(err)
	}
	vault.AddCertificate("tls", leaf, bundle, "application/x-pkcs12")

	objects := `array:
  - |
    objectName: db-password
    objectType: secret
    filePermission: "0440"
  - |
    objectName: tls
    objectType: secret
    objectAlias: tls.pem
`
	params := func(client string) map[string]any {
		return map[string]any{
			"usePodIdentity": "false",
			"clientID":       client,
			"tenantID":       srv.TenantID(),
			"keyvaultName":   vaultName,
			"objects":        objects,
		}
	}
	createClass(t, ns, "kv", "azure", params(clientID))
	createClass(t, ns, "kv-not-federated", "azure", params(otherClient))

	start := time.Now()
	pod := waitReady(t, createAppPodAs(t, ns, "app", "workload", "kv"))
	t.Logf("pod Ready with its Key Vault volume %v after creation", time.Since(start).Round(time.Millisecond))
	files := readVolume(t, pod)
	if got := files["db-password"]; got != (file{Mode: "0440", Content: password}) {
		t.Fatalf("db-password = %+v, want mode 0440 and the vault's value", got)
	}
	assertKeyAndCert(t, []byte(files["tls.pem"].Content), leaf)
	if len(files) != 2 {
		t.Fatalf("pod sees %d files, want db-password and tls.pem", len(files))
	}
	// The fake really exchanged a client assertion (the kubelet-minted
	// token, verified against the API server's keys) and Key Vault served
	// both objects.
	if n := srv.Count("token.assertion"); n < 1 {
		t.Fatalf("the fake Entra ID saw %d client assertions, want >= 1", n)
	}
	if n := srv.Count("token.refused"); n != 0 {
		t.Fatalf("the fake Entra ID refused %d token requests for a federated client", n)
	}
	if n := srv.Count("vault.secrets.get"); n < 2 {
		t.Fatalf("the fake Key Vault served %d secret gets, want >= 2", n)
	}
	t.Logf("fake Azure: %d token requests (%d client assertions), %d vault requests",
		srv.Count("token"), srv.Count("token.assertion"), srv.Count("vault"))

	refusedBefore := srv.Count("token.refused")
	denied := createAppPodAs(t, ns, "not-federated", "workload", "kv-not-federated")
	msg := waitEvent(t, denied, "FailedMount", "Unauthenticated", otherClient)
	t.Logf("event: %s", msg)
	if strings.Contains(msg, password) {
		t.Fatalf("event reveals the secret: %s", msg)
	}
	if n := srv.Count("token.refused"); n <= refusedBefore {
		t.Fatalf("the fake Entra ID refused no token for the client that is not federated")
	}
	denied, err = client.CoreV1().Pods(ns).Get(context.Background(), denied.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if denied.Status.Phase != corev1.PodPending {
		t.Fatalf("pod with a client that is not federated is %s, want Pending", denied.Status.Phase)
	}
	if mounts := nodeMounts(t, denied.Spec.NodeName, string(denied.UID)); len(mounts) != 0 {
		t.Fatalf("a refused pod has mounts %+v", mounts)
	}
	deletePod(t, denied)

	deletePod(t, pod)
	assertNoTraces(t, pod, password)
}

// startFakeAzure starts the fake Key Vault and Entra ID where the driver
// expects them (its --azure-vault-address and --azure-authority-host),
// with a serving certificate signed by the CA the driver trusts
// (--azure-ca-file), verifying client assertions against the API server's
// service-account keys and issuer. It stops when the test ends.
func startFakeAzure(t *testing.T) *fakeazure.Server {
	t.Helper()
	ctx := context.Background()
	args := driverArgs(t)
	addr, suffix, authority := args["--azure-vault-address"], args["--azure-vault-suffix"], args["--azure-authority-host"]
	if addr == "" || suffix == "" || authority != "https://"+addr+"/" {
		ci.Missing(t, "the driver is not set up for the fake Azure (--azure-vault-address, --azure-vault-suffix, "+
			"--azure-authority-host=https://<address>/, --azure-ca-file; the local cluster of `make e2e` is, kind's is not)")
	}
	caCert := envOr("SECRETFS_E2E_FAKEAZURE_CA_CERT", filepath.Join(filepath.Dir(os.Getenv("KUBECONFIG")), "pki", "fakeazure-ca.crt"))
	caKey := envOr("SECRETFS_E2E_FAKEAZURE_CA_KEY", filepath.Join(filepath.Dir(os.Getenv("KUBECONFIG")), "pki", "fakeazure-ca.key"))
	ca, err := tls.LoadX509KeyPair(caCert, caKey)
	if err != nil {
		ci.Missing(t, "no CA for the fake Azure (SECRETFS_E2E_FAKEAZURE_CA_CERT/_KEY): %v", err)
	}

	// What a real Entra ID reads from the issuer's discovery document.
	raw, err := client.CoreV1().RESTClient().Get().AbsPath("/.well-known/openid-configuration").DoRaw(ctx)
	if err != nil {
		t.Fatalf("service-account issuer discovery: %v", err)
	}
	var discovery struct {
		Issuer string `json:"issuer"`
	}
	if err := json.Unmarshal(raw, &discovery); err != nil || discovery.Issuer == "" {
		t.Fatalf("service-account issuer discovery: %q: %v", raw, err)
	}
	jwks, err := client.CoreV1().RESTClient().Get().AbsPath("/openid/v1/jwks").DoRaw(ctx)
	if err != nil {
		t.Fatalf("service-account issuer keys: %v", err)
	}

	srv, err := fakeazure.Start(fakeazure.Config{Addr: addr, VaultSuffix: suffix, Issuer: discovery.Issuer, CA: &ca})
	if err != nil {
		t.Fatalf("starting the fake Azure on %s: %v", addr, err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	if err := srv.SetJWKS(jwks); err != nil {
		t.Fatalf("the API server's JWKS: %v", err)
	}
	t.Logf("fake Azure on %s (issuer %s, vaults *.%s)", srv.URL, discovery.Issuer, suffix)
	return srv
}

// driverArgs returns the driver container's --name=value arguments.
func driverArgs(t *testing.T) map[string]string {
	t.Helper()
	ds, err := client.AppsV1().DaemonSets(driverNamespace).Get(context.Background(), "secretfs-node", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("driver DaemonSet: %v", err)
	}
	return containerArgs(ds, "driver")
}

func containerArgs(ds *appsv1.DaemonSet, container string) map[string]string {
	args := map[string]string{}
	for _, c := range ds.Spec.Template.Spec.Containers {
		if c.Name != container {
			continue
		}
		for _, a := range c.Args {
			if k, v, ok := strings.Cut(a, "="); ok {
				args[k] = v
			}
		}
	}
	return args
}

// assertKeyAndCert checks that data is a PEM private key followed by the
// certificate leafDER, as the Azure provider writes a certificate's backing
// secret.
func assertKeyAndCert(t *testing.T, data, leafDER []byte) {
	t.Helper()
	var keys, certs int
	rest := data
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		switch {
		case strings.HasSuffix(b.Type, "PRIVATE KEY"):
			keys++
		case b.Type == "CERTIFICATE":
			certs++
			c, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				t.Fatalf("tls.pem: %v", err)
			}
			if certs == 1 && !c.Equal(mustCert(t, leafDER)) {
				t.Fatalf("tls.pem holds certificate %q, not the vault's", c.Subject)
			}
		}
	}
	if keys != 1 || certs != 1 {
		t.Fatalf("tls.pem has %d private keys and %d certificates, want 1 and 1", keys, certs)
	}
}

func mustCert(t *testing.T, der []byte) *x509.Certificate {
	t.Helper()
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
