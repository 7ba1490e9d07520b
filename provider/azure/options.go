package azure

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"
)

// Options configure a Provider. The zero value talks to the public clouds.
type Options struct {
	// VaultDNSSuffix replaces the cloud's Key Vault DNS suffix
	// (vault.azure.net, ...) for every class: private or sovereign clouds,
	// and tests.
	VaultDNSSuffix string
	// AuthorityHost replaces the cloud's Entra ID authority host, e.g.
	// "https://login.example.com/". Instance discovery is then disabled.
	AuthorityHost string
	// ExtraCAPEM holds PEM certificates trusted in addition to the system
	// roots, for Key Vault and Entra ID.
	ExtraCAPEM []byte
	// VaultAddress, when set, sends every connection to a host under
	// VaultDNSSuffix to this host:port instead of resolving the vault name
	// (TLS still verifies the vault's name). For local clusters and tests.
	VaultAddress string
	// DialContext replaces the network dialer (tests).
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)

	// MaxConcurrentPerVault bounds in-flight Key Vault requests per vault
	// from this process (default 8).
	MaxConcurrentPerVault int
	// RetryBase is the first backoff delay after a 429 or a transient
	// failure (default 1s); delays double with jitter.
	RetryBase time.Duration
	// ThrottleBudget is how long one object may keep retrying 429 responses
	// before the fetch fails with Unavailable (default 60s, well inside
	// kubelet's 2-minute deadline). A shorter context deadline wins.
	ThrottleBudget time.Duration
	// DisablePEMChainOrdering keeps certificates of a PKCS#12 secret in the
	// order Key Vault stored them (upstream --construct-pem-chain=false).
	DisablePEMChainOrdering bool
	// MaxCachedClients bounds the identity/vault client cache (default 256).
	MaxCachedClients int
	// ManagedIdentityNamespaces are the namespaces whose classes may use the
	// node's managed identity (useVMManagedIdentity): an identity of the
	// node, not of the pod, so any class could read whatever it may read.
	// "*" allows every namespace; empty allows none.
	ManagedIdentityNamespaces []string
}

// ManagedIdentityFlag is the driver flag behind
// Options.ManagedIdentityNamespaces; refusals name it.
const ManagedIdentityFlag = "--azure-managed-identity-namespaces"

// managedIdentityAllowed reports whether classes of namespace may use the
// node's managed identity.
func (o *Options) managedIdentityAllowed(namespace string) bool {
	return slices.Contains(o.ManagedIdentityNamespaces, "*") || slices.Contains(o.ManagedIdentityNamespaces, namespace)
}

func (o *Options) validate() error {
	if o.AuthorityHost != "" {
		u, err := url.Parse(o.AuthorityHost)
		if err != nil || u.Scheme != "https" || u.Host == "" {
			return fmt.Errorf("AuthorityHost %q is not an https URL", o.AuthorityHost)
		}
		if !strings.HasSuffix(o.AuthorityHost, "/") {
			o.AuthorityHost += "/"
		}
	}
	if o.VaultDNSSuffix != "" && !vaultSuffixRE.MatchString(o.VaultDNSSuffix) {
		return fmt.Errorf("VaultDNSSuffix %q is not a DNS suffix", o.VaultDNSSuffix)
	}
	if o.VaultAddress != "" {
		if o.VaultDNSSuffix == "" {
			return errors.New("VaultAddress needs VaultDNSSuffix: it redirects hosts under that suffix")
		}
		if _, _, err := net.SplitHostPort(o.VaultAddress); err != nil {
			return fmt.Errorf("VaultAddress %q is not host:port", o.VaultAddress)
		}
	}
	return nil
}

var vaultSuffixRE = regexp.MustCompile(`^[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$`)
