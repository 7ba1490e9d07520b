package fakeazure

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
)

const (
	assertionType    = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
	exchangeAudience = "api://AzureADTokenExchange"
)

func (s *Server) serveEntra(w http.ResponseWriter, r *http.Request) {
	p := strings.Trim(r.URL.Path, "/")
	tenant := s.cfg.TenantID
	switch {
	case p == "common/discovery/instance":
		host := strings.TrimPrefix(s.URL, "https://")
		writeJSON(w, http.StatusOK, map[string]any{
			"tenant_discovery_endpoint": s.URL + "/" + tenant + "/v2.0/.well-known/openid-configuration",
			"api-version":               "1.1",
			"metadata":                  []map[string]any{{"preferred_network": host, "preferred_cache": host, "aliases": []string{host}}},
		})
	case p == tenant+"/v2.0/.well-known/openid-configuration":
		writeJSON(w, http.StatusOK, map[string]any{
			"token_endpoint":                        s.URL + "/" + tenant + "/oauth2/v2.0/token",
			"authorization_endpoint":                s.URL + "/" + tenant + "/oauth2/v2.0/authorize",
			"issuer":                                s.URL + "/" + tenant + "/v2.0",
			"token_endpoint_auth_methods_supported": []string{"client_secret_post", "private_key_jwt"},
			"response_types_supported":              []string{"code", "id_token", "code id_token", "id_token token"},
			"subject_types_supported":               []string{"pairwise"},
			"id_token_signing_alg_values_supported": []string{"RS256"},
			"tenant_region_scope":                   "NA",
		})
	case p == tenant+"/oauth2/v2.0/token" && r.Method == http.MethodPost:
		s.token(w, r)
	case p == "msi/token":
		s.managedToken(w, r)
	case strings.HasSuffix(p, "/v2.0/.well-known/openid-configuration") || strings.HasSuffix(p, "/oauth2/v2.0/token"):
		tokenError(w, http.StatusBadRequest, "invalid_tenant", 90002, "Tenant not found.")
	default:
		http.NotFound(w, r)
	}
}

// token issues access tokens for the client-credentials grant.
func (s *Server) token(w http.ResponseWriter, r *http.Request) {
	s.inc("token")
	if err := r.ParseForm(); err != nil {
		tokenError(w, http.StatusBadRequest, "invalid_request", 900144, "malformed form")
		return
	}
	f := r.PostForm
	clientID := f.Get("client_id")
	if f.Get("grant_type") != "client_credentials" {
		s.inc("token.refused")
		tokenError(w, http.StatusBadRequest, "unsupported_grant_type", 70003, "only client_credentials is implemented")
		return
	}
	var resource string
	for _, sc := range strings.Fields(f.Get("scope")) {
		if r, ok := strings.CutSuffix(sc, "/.default"); ok {
			resource = r
		}
	}
	if resource == "" {
		s.inc("token.refused")
		tokenError(w, http.StatusBadRequest, "invalid_scope", 1002012, "scope must end in /.default")
		return
	}
	switch {
	case f.Get("client_secret") != "":
		s.inc("token.secret")
		s.mu.Lock()
		want, known := s.secrets[clientID]
		s.mu.Unlock()
		if !known {
			s.inc("token.refused")
			tokenError(w, http.StatusBadRequest, "unauthorized_client", 700016, "Application not found in the directory.")
			return
		}
		if subtle.ConstantTimeCompare([]byte(want), []byte(f.Get("client_secret"))) != 1 {
			s.inc("token.refused")
			tokenError(w, http.StatusUnauthorized, "invalid_client", 7000215, "Invalid client secret provided.")
			return
		}
	case f.Get("client_assertion") != "":
		s.inc("token.assertion")
		if f.Get("client_assertion_type") != assertionType {
			s.inc("token.refused")
			tokenError(w, http.StatusBadRequest, "invalid_request", 50027, "wrong client_assertion_type")
			return
		}
		if err := s.checkAssertion(clientID, f.Get("client_assertion")); err != nil {
			s.inc("token.refused")
			tokenError(w, http.StatusUnauthorized, "invalid_client", 700213, err.Error())
			return
		}
	default:
		s.inc("token.refused")
		tokenError(w, http.StatusUnauthorized, "invalid_client", 7000218, "The request body must contain client_assertion or client_secret.")
		return
	}
	tok := s.issue(clientID, resource)
	writeJSON(w, http.StatusOK, map[string]any{
		"token_type": "Bearer", "access_token": tok,
		"expires_in": int(s.cfg.TokenLifetime.Seconds()), "ext_expires_in": int(s.cfg.TokenLifetime.Seconds()),
	})
}

// managedToken is the App Service style managed identity endpoint
// (IDENTITY_ENDPOINT + IDENTITY_HEADER, api-version 2019-08-01).
func (s *Server) managedToken(w http.ResponseWriter, r *http.Request) {
	s.inc("token")
	s.inc("token.managed")
	if subtle.ConstantTimeCompare([]byte(r.Header.Get("X-IDENTITY-HEADER")), []byte(s.cfg.IdentityHeader)) != 1 {
		s.inc("token.refused")
		writeJSON(w, http.StatusUnauthorized, map[string]any{"statusCode": 401, "message": "missing or wrong X-IDENTITY-HEADER"})
		return
	}
	q := r.URL.Query()
	resource := strings.TrimSuffix(q.Get("resource"), "/.default")
	clientID := q.Get("client_id")
	if clientID == "" {
		clientID = SystemAssignedClientID
	}
	s.mu.Lock()
	known := s.managed[clientID]
	s.mu.Unlock()
	if !known || resource == "" {
		s.inc("token.refused")
		writeJSON(w, http.StatusBadRequest, map[string]any{"statusCode": 400, "message": "No managed identity found for the specified client_id."})
		return
	}
	tok := s.issue(clientID, resource)
	writeJSON(w, http.StatusOK, map[string]any{
		"access_token": tok, "token_type": "Bearer", "resource": resource, "client_id": clientID,
		"expires_on": strconv.FormatInt(s.cfg.Now().Add(s.cfg.TokenLifetime).Unix(), 10),
	})
}

func (s *Server) issue(clientID, resource string) string {
	tok := randomHex(32)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tokens[tok] = tokenInfo{clientID: clientID, resource: resource, expires: s.cfg.Now().Add(s.cfg.TokenLifetime)}
	return tok
}

func (s *Server) bearer(r *http.Request) (tokenInfo, bool) {
	h := r.Header.Get("Authorization")
	tok, ok := strings.CutPrefix(h, "Bearer ")
	if !ok {
		return tokenInfo{}, false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	ti, ok := s.tokens[tok]
	if !ok || s.cfg.Now().After(ti.expires) {
		return tokenInfo{}, false
	}
	return ti, true
}

func tokenError(w http.ResponseWriter, status int, code string, aadsts int, desc string) {
	writeJSON(w, status, map[string]any{
		"error": code, "error_description": fmt.Sprintf("AADSTS%d: %s", aadsts, desc),
		"error_codes": []int{aadsts}, "timestamp": time.Now().UTC().Format("2006-01-02 15:04:05Z"),
	})
}

// checkAssertion verifies a federated client assertion: signature against
// the JWKS, issuer, audience, subject federated with clientID, and expiry.
func (s *Server) checkAssertion(clientID, jwt string) error {
	parts := strings.Split(jwt, ".")
	if len(parts) != 3 {
		return errors.New("client assertion is not a JWT")
	}
	var hdr struct {
		Alg string `json:"alg"`
		Kid string `json:"kid"`
	}
	if err := decodeSegment(parts[0], &hdr); err != nil {
		return errors.New("client assertion header is malformed")
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		return errors.New("client assertion signature is malformed")
	}
	s.mu.Lock()
	ks := s.jwks
	subjects := append([]string(nil), s.federated[clientID]...)
	s.mu.Unlock()
	if !ks.verify(hdr.Alg, hdr.Kid, []byte(parts[0]+"."+parts[1]), sig) {
		return errors.New("client assertion signature does not verify against the configured JWKS")
	}
	var claims struct {
		Iss string          `json:"iss"`
		Sub string          `json:"sub"`
		Aud json.RawMessage `json:"aud"`
		Exp int64           `json:"exp"`
		Nbf int64           `json:"nbf"`
	}
	if err := decodeSegment(parts[1], &claims); err != nil {
		return errors.New("client assertion claims are malformed")
	}
	now := s.cfg.Now().Unix()
	switch {
	case claims.Iss != s.cfg.Issuer:
		return fmt.Errorf("client assertion issuer %q is not %q", claims.Iss, s.cfg.Issuer)
	case !hasAudience(claims.Aud, exchangeAudience):
		return fmt.Errorf("client assertion audience is not %s", exchangeAudience)
	case claims.Exp == 0 || now >= claims.Exp:
		return errors.New("client assertion has expired")
	case claims.Nbf != 0 && now+60 < claims.Nbf:
		return errors.New("client assertion is not yet valid")
	case !slices.Contains(subjects, claims.Sub):
		return fmt.Errorf("no federated credential of client %s matches subject %q", clientID, claims.Sub)
	}
	return nil
}

func hasAudience(raw json.RawMessage, want string) bool {
	var one string
	if json.Unmarshal(raw, &one) == nil {
		return one == want
	}
	var many []string
	if json.Unmarshal(raw, &many) == nil {
		return slices.Contains(many, want)
	}
	return false
}

func decodeSegment(seg string, out any) error {
	b, err := base64.RawURLEncoding.DecodeString(seg)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, out)
}

// keySet is a parsed JSON Web Key Set (public RSA and EC keys).
type keySet struct {
	keys []jwkKey
}

type jwkKey struct {
	kid string
	pub crypto.PublicKey
}

func parseJWKS(data []byte) (*keySet, error) {
	var raw struct {
		Keys []struct {
			Kty, Kid, N, E, Crv, X, Y string
		} `json:"keys"`
	}
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("fakeazure: JWKS is not JSON: %w", err)
	}
	ks := &keySet{}
	b := func(s string) *big.Int {
		d, _ := base64.RawURLEncoding.DecodeString(s)
		return new(big.Int).SetBytes(d)
	}
	for _, k := range raw.Keys {
		switch k.Kty {
		case "RSA":
			ks.keys = append(ks.keys, jwkKey{k.Kid, &rsa.PublicKey{N: b(k.N), E: int(b(k.E).Int64())}})
		case "EC":
			var c elliptic.Curve
			switch k.Crv {
			case "P-256":
				c = elliptic.P256()
			case "P-384":
				c = elliptic.P384()
			case "P-521":
				c = elliptic.P521()
			default:
				continue
			}
			// An uncompressed point: 0x04, then X and Y, each padded to the
			// curve's size.
			size := (c.Params().BitSize + 7) / 8
			point := make([]byte, 1+2*size)
			point[0] = 4
			b(k.X).FillBytes(point[1 : 1+size])
			b(k.Y).FillBytes(point[1+size:])
			pub, err := ecdsa.ParseUncompressedPublicKey(c, point)
			if err != nil {
				continue
			}
			ks.keys = append(ks.keys, jwkKey{k.Kid, pub})
		}
	}
	if len(ks.keys) == 0 {
		return nil, errors.New("fakeazure: JWKS has no usable RSA or EC key")
	}
	return ks, nil
}

func (ks *keySet) verify(alg, kid string, signed, sig []byte) bool {
	if ks == nil {
		return false
	}
	sum := sha256.Sum256(signed)
	for _, k := range ks.keys {
		if kid != "" && k.kid != "" && k.kid != kid {
			continue
		}
		switch pub := k.pub.(type) {
		case *rsa.PublicKey:
			if alg == "RS256" && rsa.VerifyPKCS1v15(pub, crypto.SHA256, sum[:], sig) == nil {
				return true
			}
		case *ecdsa.PublicKey:
			if alg == "ES256" && len(sig) == 64 {
				r, s := new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])
				if ecdsa.Verify(pub, sum[:], r, s) {
					return true
				}
			}
		}
	}
	return false
}
