package secretsync

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"

	corev1 "k8s.io/api/core/v1"
)

// certPart returns what a kubernetes.io/tls Secret holds under key, taken
// from a PEM bundle (a private key and a certificate chain, as Key Vault
// returns a certificate-backed secret): tls.crt gets every CERTIFICATE block
// in the bundle's order, tls.key the private key. Any other key gets the
// content as it is. Unlike the Secrets Store CSI Driver, which labels every
// key "RSA PRIVATE KEY", the key keeps a PEM type that matches its
// encoding: PKCS#1 for RSA, SEC 1 for EC, PKCS#8 for Ed25519.
func certPart(content []byte, key string) ([]byte, error) {
	switch key {
	case corev1.TLSCertKey:
		return certs(content)
	case corev1.TLSPrivateKeyKey:
		return privateKey(content)
	}
	return append([]byte(nil), content...), nil
}

func certs(data []byte) ([]byte, error) {
	var out []byte
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type == "CERTIFICATE" {
			out = append(out, pem.EncodeToMemory(&pem.Block{Type: b.Type, Bytes: b.Bytes})...)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no PEM CERTIFICATE block in the object")
	}
	return out, nil
}

func privateKey(data []byte) ([]byte, error) {
	var found *pem.Block
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			if found != nil {
				return nil, errors.New("more than one PEM block that is not a CERTIFICATE: cannot tell which is the private key")
			}
			found = b
		}
	}
	if found == nil {
		return nil, errors.New("no PEM private key block in the object")
	}
	if k, err := x509.ParsePKCS1PrivateKey(found.Bytes); err == nil {
		return pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)}), nil
	}
	if k, err := x509.ParseECPrivateKey(found.Bytes); err == nil {
		der, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			return nil, errors.New("the EC private key cannot be encoded")
		}
		return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), nil
	}
	k, err := x509.ParsePKCS8PrivateKey(found.Bytes)
	if err != nil {
		// The parser's error never holds key material, but say it plainly.
		return nil, errors.New("the PEM block is not a PKCS#1, SEC 1 or PKCS#8 private key")
	}
	switch k := k.(type) {
	case *rsa.PrivateKey:
		return pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)}), nil
	case *ecdsa.PrivateKey:
		der, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			return nil, errors.New("the EC private key cannot be encoded")
		}
		return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), nil
	case ed25519.PrivateKey:
		return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: found.Bytes}), nil
	}
	return nil, errors.New("unsupported private key type")
}
