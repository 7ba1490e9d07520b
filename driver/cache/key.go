package cache

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"hash"
	"slices"
	"sync"

	"github.com/secretfs/secretfs/provider"
)

// Key identifies one cacheable backend answer. It is an HMAC-SHA256 under a
// random per-process key, so the keys in memory are no dictionary oracle for
// the nodePublishSecretRef data or the parameters they cover.
type Key [sha256.Size]byte

// Why a shared entry never lets one identity see what only another may read
//
// A backend decides what it returns, and whether it returns anything, from
// the request minus the parts that merely address the answer. The key covers
// every input that can change that decision:
//
//   - the provider name: another backend is another authority;
//   - the pod's namespace: every backend scopes reads to it (the Kubernetes
//     backend reads Secrets of that namespace only, Key Vault classes are
//     namespaced objects);
//   - the pod's service account: kubelet mints each pod's token for its
//     service account, so two pods with the same namespace and service
//     account present the same identity. The Kubernetes backend reads with
//     the pod's token, and RBAC grants to service accounts (or their groups,
//     which the namespace and name decide), never to a pod; Azure workload
//     identity federates the service account, not the pod;
//   - the audiences of the pod's tokens (not the tokens): a pod without a
//     token for some audience never shares with one that has it;
//   - the nodePublishSecretRef data: Azure service-principal credentials and
//     other per-volume credentials come from there;
//   - every class parameter: the Azure clientID / userAssignedIdentityID /
//     usePodIdentity / tenantId / keyvaultName live there, so do the object
//     specs (what is fetched, under which file names and modes) and the
//     fake backend's fault injection (deny, rateLimit...). A selector (the
//     kubernetes backend's labelSelector, Key Vault's objectNamePrefix,
//     objectNameRegex, objectTags) is an object spec too: what it selects
//     is decided by the backend with this same identity (a list as the pod,
//     or as the Key Vault identity), so a class with a selector and one
//     naming the same objects never share an entry, and the key covers the
//     selector as written (two spellings of one selector fetch separately:
//     more backend calls, never more access).
//
// Tokens themselves are left out: they differ per pod (and per refresh) but
// carry the identity above, so a result fetched with pod A's token is served
// to pod B only when A and B have the same namespace, service account,
// secret-ref data and class parameters, that is when B's own token would
// have been granted exactly the same. Revoking that identity is seen at the
// next backend call, at the latest one rotation interval later, for all its
// pods alike. Pod name and UID are left out too: no backend authorizes on
// them, and external providers (Vault, AWS, GCP, Azure) authorize on the
// service account token and the class parameters, not on which pod asks.
// The class name is left out: it is never an authorization input (two
// classes with identical parameters in one namespace fetch the same thing).
// The target path and the current versions only address or describe the
// answer; the result is always the complete file set.
type Identity struct {
	Provider  string
	Namespace string
	// ServiceAccount of the pod.
	ServiceAccount string
	Tokens         map[string]provider.Token // only the audiences count
	Secrets        map[string]string         // nodePublishSecretRef data
	Parameters     map[string]string         // all class parameters
}

// Keyer derives Keys. Its HMAC key is random and never leaves the process.
type Keyer struct {
	pool sync.Pool // of hash.Hash
}

// NewKeyer returns a Keyer with a fresh random key.
func NewKeyer() *Keyer {
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		panic("cache: no randomness for the key: " + err.Error())
	}
	k := &Keyer{}
	k.pool.New = func() any { return hmac.New(sha256.New, secret) }
	return k
}

// Key returns the key of id. Every field is length-prefixed and maps are
// written in key order, so distinct identities never encode alike.
func (k *Keyer) Key(id Identity) Key {
	h := k.pool.Get().(hash.Hash)
	h.Reset()
	var buf [8]byte
	put := func(s string) {
		binary.BigEndian.PutUint64(buf[:], uint64(len(s)))
		h.Write(buf[:])
		h.Write([]byte(s))
	}
	putMap := func(tag string, m map[string]string) {
		put(tag)
		keys := make([]string, 0, len(m))
		for name := range m {
			keys = append(keys, name)
		}
		slices.Sort(keys)
		binary.BigEndian.PutUint64(buf[:], uint64(len(keys)))
		h.Write(buf[:])
		for _, name := range keys {
			put(name)
			put(m[name])
		}
	}
	put("secretfs-cache-v1")
	put(id.Provider)
	put(id.Namespace)
	put(id.ServiceAccount)
	audiences := make(map[string]string, len(id.Tokens))
	for aud := range id.Tokens {
		audiences[aud] = ""
	}
	putMap("audiences", audiences)
	putMap("secrets", id.Secrets)
	putMap("parameters", id.Parameters)
	var out Key
	h.Sum(out[:0])
	k.pool.Put(h)
	return out
}
