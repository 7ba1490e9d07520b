package secretsync

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"github.com/secretfs/secretfs/provider"
	"math/big"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/secretfs/secretfs/driver/class"
)

func files(kv ...string) []provider.File {
	var out []provider.File
	for i := 0; i < len(kv); i += 2 {
		out = append(out, provider.File{Path: kv[i], Mode: 0o644, Contents: []byte(kv[i+1])})
	}
	return out
}

func TestBuildOpaque(t *testing.T) {
	objs := []class.SecretObject{{
		SecretName: "db", Labels: map[string]string{"team": "a"},
		Annotations: map[string]string{"note": "x"},
		Data:        []class.SecretObjectData{{ObjectName: "user", Key: "username"}, {ObjectName: "pass.txt", Key: "password"}},
	}}
	ds, errs := build(objs, files("user", "admin", "pass.txt", "s3cret", "other", "unused"))
	if len(errs) != 0 || len(ds) != 1 {
		t.Fatalf("build: %v, %d secrets", errs, len(ds))
	}
	d := ds[0]
	if d.name != "db" || d.typ != corev1.SecretTypeOpaque {
		t.Errorf("name %q type %q", d.name, d.typ)
	}
	if string(d.data["username"]) != "admin" || string(d.data["password"]) != "s3cret" || len(d.data) != 2 {
		t.Errorf("data %q", d.data)
	}
	if d.labels[ManagedLabel] != "true" || d.labels["team"] != "a" || d.annotations["note"] != "x" {
		t.Errorf("labels %v annotations %v: the managed label is always true", d.labels, d.annotations)
	}
	// The class is not changed by building.
	if _, ok := objs[0].Labels[ManagedLabel]; ok {
		t.Error("build changed the class's labels")
	}
	again, _ := build(objs, files("user", "admin", "pass.txt", "s3cret"))
	changed, _ := build(objs, files("user", "admin", "pass.txt", "s3cret2"))
	if again[0].hash != d.hash || changed[0].hash == d.hash {
		t.Error("the content hash must be equal for equal content and differ for different content")
	}
}

func TestBuildErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		obj  class.SecretObject
		want string
	}{
		{"no name", class.SecretObject{Data: []class.SecretObjectData{{ObjectName: "a", Key: "a"}}}, "no secretName"},
		{"bad name", class.SecretObject{SecretName: "Bad_Name", Data: []class.SecretObjectData{{ObjectName: "a", Key: "a"}}}, "not a valid Secret name"},
		{"no data", class.SecretObject{SecretName: "s"}, "no data entries"},
		{"no object", class.SecretObject{SecretName: "s", Data: []class.SecretObjectData{{Key: "a"}}}, "no objectName"},
		{"no key", class.SecretObject{SecretName: "s", Data: []class.SecretObjectData{{ObjectName: "a"}}}, "has no key"},
		{"bad key", class.SecretObject{SecretName: "s", Data: []class.SecretObjectData{{ObjectName: "a", Key: "a/b"}}}, "not a valid Secret key"},
		{"dup key", class.SecretObject{SecretName: "s", Data: []class.SecretObjectData{{ObjectName: "a", Key: "k"}, {ObjectName: "a", Key: "k"}}}, "listed twice"},
		{"missing file", class.SecretObject{SecretName: "s", Data: []class.SecretObjectData{{ObjectName: "nope", Key: "k"}}}, `file matching objectName "nope" not found`},
		{"tls without cert", class.SecretObject{SecretName: "s", Type: "kubernetes.io/tls", Data: []class.SecretObjectData{{ObjectName: "a", Key: "tls.crt"}}}, "no PEM CERTIFICATE"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ds, errs := build([]class.SecretObject{tc.obj}, files("a", "x"))
			if len(ds) != 0 || len(errs) != 1 || !strings.Contains(errs[0].Error(), tc.want) {
				t.Fatalf("got %d secrets, errors %v; want one error with %q", len(ds), errs, tc.want)
			}
		})
	}
}

func TestBuildBounds(t *testing.T) {
	var objs []class.SecretObject
	for i := range MaxSecretObjects + 3 {
		objs = append(objs, class.SecretObject{SecretName: "s" + strings.Repeat("x", i%3) + string(rune('a'+i%26)) + string(rune('a'+i/26)),
			Data: []class.SecretObjectData{{ObjectName: "a", Key: "k"}}})
	}
	ds, errs := build(objs, files("a", "x"))
	if len(ds) != MaxSecretObjects || len(errs) != 1 || !strings.Contains(errs[0].Error(), "only the first") {
		t.Fatalf("%d secrets, errors %v", len(ds), errs)
	}
	big := []provider.File{{Path: "a", Contents: make([]byte, MaxSecretBytes)}}
	_, errs = build([]class.SecretObject{{SecretName: "s", Data: []class.SecretObjectData{{ObjectName: "a", Key: "k"}}}}, big)
	if len(errs) != 1 || !strings.Contains(errs[0].Error(), "bytes of data") {
		t.Fatalf("oversized: %v", errs)
	}
	dup := []class.SecretObject{
		{SecretName: "s", Data: []class.SecretObjectData{{ObjectName: "a", Key: "k"}}},
		{SecretName: "s", Data: []class.SecretObjectData{{ObjectName: "a", Key: "j"}}},
	}
	ds, errs = build(dup, files("a", "x"))
	if len(ds) != 1 || len(errs) != 1 || !strings.Contains(errs[0].Error(), "declared twice") {
		t.Fatalf("duplicate: %d, %v", len(ds), errs)
	}
}

// bundle returns a PEM bundle as Key Vault gives a certificate-backed
// secret: the private key (PKCS#8) followed by the chain, and the chain.
func bundle(t *testing.T, key any) (pemBundle, chain []byte) {
	t.Helper()
	signer := key.(crypto.Signer)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "leaf"},
		NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	leaf, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, signer.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	p8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	chain = append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leaf}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leaf})...)
	return append(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: p8}), chain...), chain
}

func TestBuildTLS(t *testing.T) {
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	for _, tc := range []struct {
		name    string
		key     any
		pemType string
	}{
		{"rsa", rsaKey, "RSA PRIVATE KEY"},
		{"ec", ecKey, "EC PRIVATE KEY"},
		{"ed25519", edKey, "PRIVATE KEY"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, chain := bundle(t, tc.key)
			ds, errs := build([]class.SecretObject{{SecretName: "tls", Type: "kubernetes.io/tls", Data: []class.SecretObjectData{
				{ObjectName: "cert.pem", Key: "tls.key"}, {ObjectName: "cert.pem", Key: "tls.crt"}, {ObjectName: "cert.pem", Key: "ca.pem"},
			}}}, []provider.File{{Path: "cert.pem", Contents: b}})
			if len(errs) != 0 {
				t.Fatal(errs)
			}
			d := ds[0]
			if d.typ != corev1.SecretTypeTLS || !bytes.Equal(d.data["tls.crt"], chain) || !bytes.Equal(d.data["ca.pem"], b) {
				t.Errorf("tls.crt must be the chain in order, other keys the content as it is")
			}
			blk, rest := pem.Decode(d.data["tls.key"])
			if blk == nil || blk.Type != tc.pemType || len(bytes.TrimSpace(rest)) != 0 {
				t.Fatalf("tls.key is not one %s block", tc.pemType)
			}
			// The key must pair with the certificate, as an Ingress controller checks.
			if _, err := tls.X509KeyPair(d.data["tls.crt"], d.data["tls.key"]); err != nil {
				t.Errorf("key and certificate do not pair: %v", err)
			}
		})
	}
}

func FuzzCertPart(f *testing.F) {
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 1024)
	p8, _ := x509.MarshalPKCS8PrivateKey(rsaKey)
	f.Add(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: p8}), "tls.key")
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), "tls.crt")
	f.Add([]byte("not pem"), "other")
	f.Fuzz(func(t *testing.T, data []byte, key string) {
		out, err := certPart(data, key)
		if err != nil {
			return
		}
		if key == "tls.crt" || key == "tls.key" {
			if b, _ := pem.Decode(out); b == nil {
				t.Fatalf("certPart(%q) returned no PEM", key)
			}
		}
	})
}
