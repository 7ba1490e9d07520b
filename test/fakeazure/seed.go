package fakeazure

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"math/big"
	"time"

	"sigs.k8s.io/yaml"
	pkcs12 "software.sslmate.com/src/go-pkcs12"
)

// Seed is the YAML file the standalone server loads:
//
//	clients:
//	  - clientID: 1111...
//	    clientSecret: s3cret            # service principal
//	  - clientID: 2222...
//	    federatedSubjects: [system:serviceaccount:default:app]  # workload identity
//	managedIdentities: [3333...]
//	vaults:
//	  - name: kv1
//	    allow: [1111...]                # empty: every authenticated client
//	    secrets:
//	      - {name: db-password, value: hunter2}
//	      - {name: db-password, value: newer, contentType: text/plain}
//	      - {name: old, value: x, enabled: false}
//	    keys:
//	      - {name: signing, kty: RSA}   # RSA (2048) or EC (P-256)
//	    certificates:
//	      - {name: tls, commonName: app.example, contentType: application/x-pkcs12}
//
// Repeated names add versions, oldest first.
type Seed struct {
	Clients []struct {
		ClientID          string   `json:"clientID"`
		ClientSecret      string   `json:"clientSecret,omitempty"`
		FederatedSubjects []string `json:"federatedSubjects,omitempty"`
	} `json:"clients,omitempty"`
	ManagedIdentities []string    `json:"managedIdentities,omitempty"`
	Vaults            []SeedVault `json:"vaults,omitempty"`
}

// SeedVault is one vault of a Seed.
type SeedVault struct {
	Name    string   `json:"name"`
	Allow   []string `json:"allow,omitempty"`
	Secrets []struct {
		Name        string `json:"name"`
		Value       string `json:"value"`
		ContentType string `json:"contentType,omitempty"`
		Enabled     *bool  `json:"enabled,omitempty"`
	} `json:"secrets,omitempty"`
	Keys []struct {
		Name string `json:"name"`
		Kty  string `json:"kty"`
	} `json:"keys,omitempty"`
	Certificates []struct {
		Name        string `json:"name"`
		CommonName  string `json:"commonName"`
		ContentType string `json:"contentType,omitempty"`
	} `json:"certificates,omitempty"`
}

// LoadSeed applies a YAML seed (see Seed) to the server.
func (s *Server) LoadSeed(data []byte) error {
	var seed Seed
	if err := yaml.UnmarshalStrict(data, &seed); err != nil {
		return fmt.Errorf("fakeazure: seed: %w", err)
	}
	for _, c := range seed.Clients {
		if c.ClientSecret != "" {
			s.AddClientSecret(c.ClientID, c.ClientSecret)
		}
		for _, sub := range c.FederatedSubjects {
			s.AddFederatedCredential(c.ClientID, sub)
		}
	}
	for _, id := range seed.ManagedIdentities {
		s.AddManagedIdentity(id)
	}
	for _, sv := range seed.Vaults {
		v := s.AddVault(sv.Name)
		if len(sv.Allow) > 0 {
			v.Allow(sv.Allow...)
		}
		for _, sec := range sv.Secrets {
			id := v.SetSecret(sec.Name, sec.Value, sec.ContentType)
			if sec.Enabled != nil && !*sec.Enabled {
				v.Disable("secrets", sec.Name, id)
			}
		}
		for _, k := range sv.Keys {
			var pub crypto.PublicKey
			switch k.Kty {
			case "RSA", "":
				key, err := rsa.GenerateKey(rand.Reader, 2048)
				if err != nil {
					return err
				}
				pub = &key.PublicKey
			case "EC":
				key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
				if err != nil {
					return err
				}
				pub = &key.PublicKey
			default:
				return fmt.Errorf("fakeazure: seed: key %q: kty %q is not RSA or EC", k.Name, k.Kty)
			}
			if _, err := v.AddKey(k.Name, pub); err != nil {
				return err
			}
		}
		for _, c := range sv.Certificates {
			leaf, value, err := SelfSignedBundle(c.CommonName, c.ContentType)
			if err != nil {
				return fmt.Errorf("fakeazure: seed: certificate %q: %w", c.Name, err)
			}
			ct := c.ContentType
			if ct == "" {
				ct = "application/x-pkcs12"
			}
			v.AddCertificate(c.Name, leaf, value, ct)
		}
	}
	return nil
}

// SelfSignedBundle makes a self-signed certificate and its backing secret
// value as Key Vault stores it: a base64 PKCS#12 (application/x-pkcs12, the
// default) or PEM key and certificate (application/x-pem-file).
func SelfSignedBundle(commonName, contentType string) (leafDER []byte, secretValue string, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, "", err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: commonName},
		DNSNames:     []string{commonName},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, "", err
	}
	switch contentType {
	case "", "application/x-pkcs12":
		cert, _ := x509.ParseCertificate(der)
		pfx, err := pkcs12.Legacy.Encode(key, cert, nil, "")
		if err != nil {
			return nil, "", err
		}
		return der, base64.StdEncoding.EncodeToString(pfx), nil
	case "application/x-pem-file":
		kder, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return nil, "", err
		}
		return der, string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})) +
			string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})), nil
	}
	return nil, "", fmt.Errorf("content type %q is not application/x-pkcs12 or application/x-pem-file", contentType)
}
