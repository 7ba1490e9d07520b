package fakeazure

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"maps"
	"math/big"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Vault is one fake Key Vault. Its methods are safe for concurrent use.
type Vault struct {
	s       *Server
	name    string
	allowed map[string]bool                  // nil: every authenticated client
	objects map[string]map[string][]*version // collection -> name -> versions (oldest first)
}

type version struct {
	id          string
	enabled     bool
	created     time.Time
	value       string // secrets
	contentType string
	kid         string // secrets backing a certificate
	jwk         map[string]any
	cer         []byte
	tags        map[string]string
}

// AddVault creates (or returns) the vault name.
func (s *Server) AddVault(name string) *Vault {
	s.mu.Lock()
	defer s.mu.Unlock()
	name = strings.ToLower(name)
	if v, ok := s.vaults[name]; ok {
		return v
	}
	v := &Vault{s: s, name: name, objects: map[string]map[string][]*version{
		"secrets": {}, "keys": {}, "certificates": {},
	}}
	s.vaults[name] = v
	return v
}

func (s *Server) vault(name string) *Vault {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.vaults[strings.ToLower(name)]
}

// URL is the vault's base URL.
func (v *Vault) URL() string { return "https://" + v.host() + "/" }

func (v *Vault) host() string { return v.name + "." + v.s.cfg.VaultSuffix }

// Allow restricts the vault to these client ids (others get 403).
func (v *Vault) Allow(clientIDs ...string) {
	v.s.mu.Lock()
	defer v.s.mu.Unlock()
	v.allowed = map[string]bool{}
	for _, id := range clientIDs {
		v.allowed[id] = true
	}
}

func (v *Vault) add(collection, name string, ver *version) string {
	v.s.mu.Lock()
	defer v.s.mu.Unlock()
	ver.id = randomHex(16)
	ver.enabled = true
	ver.created = v.s.nextCreated()
	v.objects[collection][name] = append(v.objects[collection][name], ver)
	return ver.id
}

// SetSecret adds a new version of a secret and returns its version id.
func (v *Vault) SetSecret(name, value, contentType string) string {
	return v.add("secrets", name, &version{value: value, contentType: contentType})
}

// AddKey adds a new version of a key holding pub (RSA or ECDSA).
func (v *Vault) AddKey(name string, pub crypto.PublicKey) (string, error) {
	jwk, err := publicJWK(pub)
	if err != nil {
		return "", err
	}
	return v.add("keys", name, &version{jwk: jwk}), nil
}

// AddCertificate adds a certificate version as Key Vault stores one: the
// certificate (leaf DER, read with certificates/get) and its backing secret
// (the full bundle, secretValue of contentType application/x-pkcs12 with a
// base64 PFX or application/x-pem-file), which carries a kid.
func (v *Vault) AddCertificate(name string, leafDER []byte, secretValue, contentType string) string {
	id := v.add("certificates", name, &version{cer: leafDER})
	v.s.mu.Lock()
	defer v.s.mu.Unlock()
	ver := &version{id: id, enabled: true, created: v.s.nextCreated(), value: secretValue, contentType: contentType,
		kid: "https://" + v.host() + "/keys/" + name + "/" + id}
	v.objects["secrets"][name] = append(v.objects["secrets"][name], ver)
	return id
}

// SetTags sets the tags of the newest version of a secret (nil removes
// them), as a portal edit of the secret's tags does.
func (v *Vault) SetTags(name string, tags map[string]string) {
	v.s.mu.Lock()
	defer v.s.mu.Unlock()
	if versions := v.objects["secrets"][name]; len(versions) > 0 {
		versions[len(versions)-1].tags = tags
	}
}

// Delete removes a secret with all its versions.
func (v *Vault) Delete(name string) {
	v.s.mu.Lock()
	defer v.s.mu.Unlock()
	delete(v.objects["secrets"], name)
}

// Disable disables one version of an object in collection "secrets",
// "keys" or "certificates".
func (v *Vault) Disable(collection, name, id string) {
	v.s.mu.Lock()
	defer v.s.mu.Unlock()
	for _, ver := range v.objects[collection][name] {
		if ver.id == id {
			ver.enabled = false
		}
	}
}

func (s *Server) serveVault(w http.ResponseWriter, r *http.Request, name string) {
	s.inc("vault")
	n := s.inFlight.Add(1)
	defer s.inFlight.Add(-1)
	for {
		m := s.maxIn.Load()
		if n <= m || s.maxIn.CompareAndSwap(m, n) {
			break
		}
	}
	v := s.vault(name)
	if v == nil {
		writeKVError(w, http.StatusNotFound, "VaultNotFound", "", "vault not found")
		return
	}
	s.mu.Lock()
	latency := s.latency
	s.mu.Unlock()
	if latency > 0 {
		time.Sleep(latency)
	}

	// Challenge: no or unknown token -> 401 naming the authority and resource.
	tok, ok := s.bearer(r)
	if !ok || tok.resource != "https://"+s.cfg.VaultSuffix {
		s.inc("vault.challenge")
		w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer authorization="%s/%s", resource="https://%s"`, s.URL, s.cfg.TenantID, s.cfg.VaultSuffix))
		writeKVError(w, http.StatusUnauthorized, "Unauthorized", "", "AKV10000: Request is missing a Bearer or PoP token.")
		return
	}

	s.mu.Lock()
	if s.throttle.remaining != 0 {
		if s.throttle.remaining > 0 {
			s.throttle.remaining--
		}
		ra := s.throttle.retryAfter
		s.mu.Unlock()
		s.inc("vault.throttled")
		if ra != "" {
			w.Header().Set("Retry-After", ra)
		}
		writeKVError(w, http.StatusTooManyRequests, "Throttled", "", "Rate limit is exceeded. Try again later.")
		return
	}
	allowed := v.allowed == nil || v.allowed[tok.clientID]
	s.mu.Unlock()
	if !allowed {
		writeKVError(w, http.StatusForbidden, "Forbidden", "ForbiddenByPolicy", fmt.Sprintf("The user, group or application 'appid=%s' does not have secrets get permission on key vault '%s'.", tok.clientID, v.name))
		return
	}
	if r.Method != http.MethodGet {
		writeKVError(w, http.StatusMethodNotAllowed, "BadParameter", "", "only GET is implemented")
		return
	}
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	if len(parts) == 1 && parts[0] == "secrets" {
		s.inc("vault.secrets.listnames")
		s.listSecrets(w, r, v)
		return
	}
	if len(parts) < 2 || len(parts) > 3 {
		writeKVError(w, http.StatusNotFound, "NotFound", "", "unknown path")
		return
	}
	collection, objName := parts[0], parts[1]
	if collection != "secrets" && collection != "keys" && collection != "certificates" {
		writeKVError(w, http.StatusNotFound, "NotFound", "", "unknown collection")
		return
	}
	if len(parts) == 3 && parts[2] == "versions" {
		s.inc("vault." + collection + ".list")
		s.listVersions(w, r, v, collection, objName)
		return
	}
	s.inc("vault." + collection + ".get")
	ver := ""
	if len(parts) == 3 {
		ver = parts[2]
	}
	s.getVersion(w, v, collection, objName, ver)
}

func (s *Server) getVersion(w http.ResponseWriter, v *Vault, collection, name, id string) {
	s.mu.Lock()
	versions := v.objects[collection][name]
	var found *version
	if id == "" {
		if len(versions) > 0 {
			found = versions[len(versions)-1]
		}
	} else {
		for _, ver := range versions {
			if ver.id == id {
				found = ver
			}
		}
	}
	var snapshot version
	if found != nil {
		snapshot = *found
	}
	s.mu.Unlock()
	kind := map[string]string{"secrets": "Secret", "keys": "Key", "certificates": "Certificate"}[collection]
	if found == nil {
		writeKVError(w, http.StatusNotFound, kind+"NotFound", "", fmt.Sprintf("A %s with (name/id) %s/%s was not found in this key vault.", strings.ToLower(kind), name, id))
		return
	}
	if !snapshot.enabled {
		writeKVError(w, http.StatusForbidden, "Forbidden", kind+"Disabled", fmt.Sprintf("Operation get is not allowed on a disabled %s.", strings.ToLower(kind)))
		return
	}
	s.inc("vault.ok")
	objID := "https://" + v.host() + "/" + collection + "/" + name + "/" + snapshot.id
	attrs := attributes(&snapshot)
	var body map[string]any
	switch collection {
	case "secrets":
		body = map[string]any{"value": snapshot.value, "id": objID, "attributes": attrs}
		if snapshot.contentType != "" {
			body["contentType"] = snapshot.contentType
		}
		if snapshot.kid != "" {
			body["kid"] = snapshot.kid
			body["managed"] = true
		}
	case "keys":
		jwk := map[string]any{"kid": objID}
		for k, val := range snapshot.jwk {
			jwk[k] = val
		}
		body = map[string]any{"key": jwk, "attributes": attrs}
	default:
		body = map[string]any{"id": objID, "cer": base64.StdEncoding.EncodeToString(snapshot.cer),
			"x5t": "", "attributes": attrs,
			"kid": "https://" + v.host() + "/keys/" + name + "/" + snapshot.id,
			"sid": "https://" + v.host() + "/secrets/" + name + "/" + snapshot.id}
	}
	writeJSON(w, http.StatusOK, body)
}

func attributes(v *version) map[string]any {
	return map[string]any{"enabled": v.enabled, "created": v.created.Unix(), "updated": v.created.Unix(), "recoveryLevel": "Recoverable+Purgeable"}
}

// listVersions pages with $skiptoken and an absolute nextLink, as Key Vault does.
func (s *Server) listVersions(w http.ResponseWriter, r *http.Request, v *Vault, collection, name string) {
	skip, _ := strconv.Atoi(r.URL.Query().Get("$skiptoken"))
	s.mu.Lock()
	versions := append([]*version(nil), v.objects[collection][name]...)
	items := make([]map[string]any, 0, len(versions))
	for _, ver := range versions {
		id := "https://" + v.host() + "/" + collection + "/" + name + "/" + ver.id
		item := map[string]any{"attributes": attributes(ver)}
		if collection == "keys" {
			item["kid"] = id
		} else {
			item["id"] = id
		}
		if ver.contentType != "" {
			item["contentType"] = ver.contentType
		}
		items = append(items, item)
	}
	s.mu.Unlock()
	if len(items) == 0 {
		kind := map[string]string{"secrets": "Secret", "keys": "Key", "certificates": "Certificate"}[collection]
		writeKVError(w, http.StatusNotFound, kind+"NotFound", "", fmt.Sprintf("A %s with (name/id) %s was not found in this key vault.", strings.ToLower(kind), name))
		return
	}
	s.inc("vault.ok")
	if skip < 0 || skip > len(items) {
		skip = len(items)
	}
	end := min(skip+s.cfg.PageSize, len(items))
	body := map[string]any{"value": items[skip:end]}
	if end < len(items) {
		q := url.Values{}
		q.Set("api-version", r.URL.Query().Get("api-version"))
		q.Set("$skiptoken", strconv.Itoa(end))
		body["nextLink"] = "https://" + v.host() + "/" + collection + "/" + name + "/versions?" + q.Encode()
	} else {
		body["nextLink"] = nil
	}
	writeJSON(w, http.StatusOK, body)
}

// listSecrets lists the vault's secrets (the properties of each one's
// newest version, with its tags, the id without a version) in name order,
// paged with $skiptoken and an absolute nextLink, as Key Vault's
// GET /secrets does.
func (s *Server) listSecrets(w http.ResponseWriter, r *http.Request, v *Vault) {
	skip, _ := strconv.Atoi(r.URL.Query().Get("$skiptoken"))
	s.mu.Lock()
	names := make([]string, 0, len(v.objects["secrets"]))
	for name := range v.objects["secrets"] {
		names = append(names, name)
	}
	sort.Strings(names)
	items := make([]map[string]any, 0, len(names))
	for _, name := range names {
		versions := v.objects["secrets"][name]
		if len(versions) == 0 {
			continue
		}
		ver := versions[len(versions)-1]
		item := map[string]any{"id": "https://" + v.host() + "/secrets/" + name, "attributes": attributes(ver)}
		if ver.contentType != "" {
			item["contentType"] = ver.contentType
		}
		if ver.kid != "" {
			item["managed"] = true
		}
		if len(ver.tags) > 0 {
			item["tags"] = maps.Clone(ver.tags)
		}
		items = append(items, item)
	}
	s.mu.Unlock()
	s.inc("vault.ok")
	if skip < 0 || skip > len(items) {
		skip = len(items)
	}
	end := min(skip+s.cfg.PageSize, len(items))
	body := map[string]any{"value": items[skip:end]}
	if end < len(items) {
		q := url.Values{}
		q.Set("api-version", r.URL.Query().Get("api-version"))
		q.Set("$skiptoken", strconv.Itoa(end))
		body["nextLink"] = "https://" + v.host() + "/secrets?" + q.Encode()
	} else {
		body["nextLink"] = nil
	}
	writeJSON(w, http.StatusOK, body)
}

func writeKVError(w http.ResponseWriter, status int, code, inner, msg string) {
	e := map[string]any{"code": code, "message": msg}
	if inner != "" {
		e["innererror"] = map[string]any{"code": inner}
	}
	writeJSON(w, status, map[string]any{"error": e})
}

func writeJSON(w http.ResponseWriter, status int, body any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}

// publicJWK encodes a public key as Key Vault returns it.
func publicJWK(pub crypto.PublicKey) (map[string]any, error) {
	b64 := base64.RawURLEncoding.EncodeToString
	switch k := pub.(type) {
	case *rsa.PublicKey:
		return map[string]any{"kty": "RSA", "n": b64(k.N.Bytes()), "e": b64(big.NewInt(int64(k.E)).Bytes()),
			"key_ops": []string{"encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey"}}, nil
	case *ecdsa.PublicKey:
		size := (k.Curve.Params().BitSize + 7) / 8
		raw, err := k.Bytes()
		if err != nil {
			return nil, err
		}
		return map[string]any{"kty": "EC", "crv": k.Curve.Params().Name, "x": b64(raw[1 : 1+size]), "y": b64(raw[1+size:]),
			"key_ops": []string{"sign", "verify"}}, nil
	}
	return nil, fmt.Errorf("fakeazure: unsupported key type %T", pub)
}
