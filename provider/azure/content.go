package azure

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"

	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azkeys"
	pkcs12 "software.sslmate.com/src/go-pkcs12"
)

// errContent marks content that Key Vault returned but that cannot be turned
// into the requested file. Messages never include the content.
var errContent = errors.New("unusable content")

func contentErrorf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errContent, fmt.Sprintf(format, args...))
}

// secretContent turns a secret value into file bytes, as upstream does:
// a certificate-backed secret (kid set) stored as PKCS#12 becomes PEM (key
// then chain) unless objectFormat is pfx; PEM-backed ones stay as stored;
// then objectEncoding decodes the result.
func secretContent(o *object, value string, contentType string, certBacked bool, orderChain bool) ([]byte, error) {
	content := []byte(value)
	if certBacked {
		switch contentType {
		case contentTypePEM:
		case contentTypePFX:
			if o.ObjectFormat != formatPFX {
				pemData, err := pfxToPEM(value, orderChain)
				if err != nil {
					return nil, err
				}
				content = pemData
			}
		default:
			return nil, contentErrorf("certificate-backed secret has unknown content type %q", contentType)
		}
	}
	switch o.ObjectEncoding {
	case "", encodingUTF8:
		return content, nil
	case encodingBase64:
		out, err := base64.StdEncoding.DecodeString(string(content))
		if err != nil {
			return nil, contentErrorf("objectEncoding is base64 but the value is not valid base64")
		}
		return out, nil
	case encodingHex:
		out, err := hex.DecodeString(string(content))
		if err != nil {
			return nil, contentErrorf("objectEncoding is hex but the value is not valid hex")
		}
		return out, nil
	}
	return nil, contentErrorf("unknown objectEncoding %q", o.ObjectEncoding)
}

// pfxToPEM decodes a base64 PKCS#12 bundle (no password, as Key Vault
// exports it) into the private key as PKCS#8 followed by the certificates.
func pfxToPEM(b64 string, orderChain bool) ([]byte, error) {
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return nil, contentErrorf("PKCS#12 secret is not valid base64")
	}
	key, leaf, cas, err := pkcs12.DecodeChain(raw, "")
	if err != nil {
		return nil, contentErrorf("PKCS#12 secret cannot be decoded: %v", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, contentErrorf("private key cannot be encoded as PKCS#8: %v", err)
	}
	var out bytes.Buffer
	_ = pem.Encode(&out, &pem.Block{Type: "PRIVATE KEY", Bytes: der})
	certs := append([]*x509.Certificate{leaf}, cas...)
	if orderChain {
		certs = orderCertChain(certs)
	}
	for _, c := range certs {
		_ = pem.Encode(&out, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return out.Bytes(), nil
}

// orderCertChain returns certs ordered leaf -> intermediates -> root when
// they form one chain, and in their original order otherwise. Issuers are
// matched by authority/subject key id when both certificates carry one, else
// by issuer/subject name.
func orderCertChain(certs []*x509.Certificate) []*x509.Certificate {
	n := len(certs)
	if n < 2 {
		return certs
	}
	parent := make([]int, n)
	isParent := make([]bool, n)
	for i, c := range certs {
		parent[i] = -1
		if bytes.Equal(c.RawIssuer, c.RawSubject) && (len(c.AuthorityKeyId) == 0 || bytes.Equal(c.AuthorityKeyId, c.SubjectKeyId)) {
			continue // self-signed: a root
		}
		for j, p := range certs {
			if i == j {
				continue
			}
			if issuedBy(c, p) {
				if parent[i] != -1 {
					return certs // ambiguous issuer
				}
				parent[i] = j
			}
		}
		if parent[i] != -1 {
			if isParent[parent[i]] {
				return certs // two certificates with one issuer: not a chain
			}
			isParent[parent[i]] = true
		}
	}
	leaf := -1
	for i := range certs {
		if !isParent[i] {
			if leaf != -1 {
				return certs // more than one leaf
			}
			leaf = i
		}
	}
	if leaf == -1 {
		return certs // a cycle
	}
	out := make([]*x509.Certificate, 0, n)
	for i := leaf; i != -1 && len(out) <= n; i = parent[i] {
		out = append(out, certs[i])
	}
	if len(out) != n {
		return certs
	}
	return out
}

func issuedBy(c, p *x509.Certificate) bool {
	if len(c.AuthorityKeyId) > 0 && len(p.SubjectKeyId) > 0 {
		return bytes.Equal(c.AuthorityKeyId, p.SubjectKeyId)
	}
	return bytes.Equal(c.RawIssuer, p.RawSubject)
}

// publicKeyPEM encodes the public half of a JSON web key as a PKIX
// "PUBLIC KEY" PEM block, as upstream writes keys.
func publicKeyPEM(k *azkeys.JSONWebKey) ([]byte, error) {
	if k == nil || k.Kty == nil {
		return nil, contentErrorf("key has no key material")
	}
	var pub any
	switch *k.Kty {
	case azkeys.KeyTypeRSA, azkeys.KeyTypeRSAHSM:
		if len(k.N) == 0 || len(k.E) == 0 {
			return nil, contentErrorf("RSA key lacks n or e")
		}
		e := new(big.Int).SetBytes(k.E)
		if !e.IsInt64() || e.Int64() > 1<<31-1 || e.Int64() < 3 {
			return nil, contentErrorf("RSA key has an invalid exponent")
		}
		pub = &rsa.PublicKey{N: new(big.Int).SetBytes(k.N), E: int(e.Int64())}
	case azkeys.KeyTypeEC, azkeys.KeyTypeECHSM:
		if k.Crv == nil {
			return nil, contentErrorf("EC key has no curve")
		}
		var curve elliptic.Curve
		switch *k.Crv {
		case azkeys.CurveNameP256:
			curve = elliptic.P256()
		case azkeys.CurveNameP384:
			curve = elliptic.P384()
		case azkeys.CurveNameP521:
			curve = elliptic.P521()
		default:
			return nil, contentErrorf("EC curve %q is not supported", *k.Crv)
		}
		size := (curve.Params().BitSize + 7) / 8
		if len(k.X) == 0 || len(k.Y) == 0 || len(k.X) > size || len(k.Y) > size {
			return nil, contentErrorf("EC key has invalid coordinates")
		}
		// Uncompressed point encoding, parsed by crypto/ecdh-backed code so
		// points off the curve are rejected.
		point := make([]byte, 1+2*size)
		point[0] = 4
		copy(point[1+size-len(k.X):1+size], k.X)
		copy(point[1+2*size-len(k.Y):], k.Y)
		ek, err := ecdsa.ParseUncompressedPublicKey(curve, point)
		if err != nil {
			return nil, contentErrorf("EC key is not a point on %s", *k.Crv)
		}
		pub = ek
	default:
		return nil, contentErrorf("key type %q is not supported: only RSA and EC public keys can be written", *k.Kty)
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, contentErrorf("public key cannot be encoded: %v", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}

// certificatePEM wraps a DER certificate as PEM.
func certificatePEM(der []byte) ([]byte, error) {
	if len(der) == 0 {
		return nil, contentErrorf("certificate has no cer content")
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}
