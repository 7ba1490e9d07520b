package azure

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/secretfs/secretfs/provider"
	"google.golang.org/grpc/codes"
)

// throttleDelay reports whether err is a Key Vault 429 and the delay the
// service asked for (0 if none).
func throttleDelay(err error) (time.Duration, bool) {
	var re *azcore.ResponseError
	if !errors.As(err, &re) || re.StatusCode != http.StatusTooManyRequests || re.RawResponse == nil {
		return 0, false
	}
	return retryAfter(re.RawResponse.Header), true
}

// retryAfter reads retry-after-ms, x-ms-retry-after-ms and Retry-After
// (seconds or an HTTP date).
func retryAfter(h http.Header) time.Duration {
	for _, k := range []string{"retry-after-ms", "x-ms-retry-after-ms"} {
		if ms, err := strconv.ParseInt(strings.TrimSpace(h.Get(k)), 10, 64); err == nil && ms > 0 {
			return time.Duration(ms) * time.Millisecond
		}
	}
	v := strings.TrimSpace(h.Get("Retry-After"))
	if v == "" {
		return 0
	}
	if s, err := strconv.ParseInt(v, 10, 64); err == nil && s > 0 {
		if s > 3600 {
			s = 3600
		}
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := time.Until(t); d > 0 {
			return d
		}
	}
	return 0
}

// backoff is base*2^(attempt-1), capped at 16*base, with jitter in
// [d/2, d) so that many pods throttled together do not retry in lockstep.
func backoff(base time.Duration, attempt int) time.Duration {
	shift := min(attempt-1, 4)
	d := base << shift
	return d/2 + time.Duration(rand.Int64N(int64(d/2)+1))
}

func throttledError(cfg *config, o *object, attempts int, elapsed time.Duration) error {
	return provider.Unavailable("Key Vault %q is throttling requests (HTTP 429) for %s: gave up after %d attempts in %s; kubelet will retry the mount",
		cfg.vaultName, o.describe(), attempts, elapsed.Round(time.Millisecond))
}

// mapError turns an SDK, network or content error into a provider error.
// Messages name the vault, the object and the identity mode, never a value
// or a token.
func (f *fetcher) mapError(ctx context.Context, o *object, err error, attempts int, start time.Time) error {
	cfg := f.cfg
	vault := cfg.vaultName
	who := string(cfg.mode)
	if cfg.clientID != "" {
		who += " (client " + cfg.clientID + ")"
	}
	var pe *provider.Error
	if errors.As(err, &pe) && (pe.Code == codes.ResourceExhausted || pe.Code == codes.Unavailable) {
		// The volume's or the node's bound (provider.Budget).
		return provider.Errorf(pe.Code, "reading %s from Key Vault %q: %s", o.describe(), vault, pe.Message)
	}
	if errors.Is(err, errContent) {
		return provider.Errorf(codes.FailedPrecondition, "%s in Key Vault %q cannot be written: %s", o.describe(), vault, strings.TrimPrefix(err.Error(), errContent.Error()+": "))
	}
	if ctx.Err() != nil || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		if errors.Is(ctx.Err(), context.Canceled) {
			return provider.Errorf(codes.Canceled, "reading %s from Key Vault %q was canceled", o.describe(), vault)
		}
		return provider.DeadlineExceeded("reading %s from Key Vault %q timed out after %s (%d attempts)", o.describe(), vault, time.Since(start).Round(time.Millisecond), attempts)
	}

	var re *azcore.ResponseError
	if errors.As(err, &re) {
		detail := strconv.Itoa(re.StatusCode)
		if re.ErrorCode != "" {
			detail += " " + re.ErrorCode
		}
		switch re.StatusCode {
		case http.StatusUnauthorized:
			return provider.Errorf(codes.Unauthenticated, "Key Vault %q did not accept the token of %s for %s (HTTP %s): check tenantID and that the identity exists in that tenant", vault, who, o.describe(), detail)
		case http.StatusForbidden:
			if inner := innerErrorCode(re); strings.HasSuffix(inner, "Disabled") {
				return provider.Errorf(codes.FailedPrecondition, "%s in Key Vault %q is disabled (HTTP %s %s): enable it or pin an enabled objectVersion", o.describe(), vault, detail, inner)
			}
			if o.isSelector() {
				return provider.PermissionDenied("%s may not list the secrets of Key Vault %q for %s (HTTP %s): grant it list and get permission on secrets", who, vault, o.describe(), detail)
			}
			return provider.PermissionDenied("%s may not read %s in Key Vault %q (HTTP %s): grant it get (and for objectVersionHistory list) permission on %ss", who, o.describe(), vault, detail, kvCollection(o))
		case http.StatusNotFound:
			return provider.NotFound("%s was not found in Key Vault %q (HTTP %s)", o.describe(), vault, detail)
		case http.StatusBadRequest:
			return provider.InvalidArgument("Key Vault %q refused the request for %s (HTTP %s)", vault, o.describe(), detail)
		case http.StatusTooManyRequests:
			return throttledError(cfg, o, attempts, time.Since(start))
		}
		if re.StatusCode >= 500 {
			return provider.Unavailable("Key Vault %q failed to serve %s (HTTP %s); kubelet will retry the mount", vault, o.describe(), detail)
		}
		return provider.Errorf(codes.Unknown, "Key Vault %q answered HTTP %s for %s", vault, detail, o.describe())
	}

	var afe *azidentity.AuthenticationFailedError
	if errors.As(err, &afe) && afe.RawResponse != nil {
		status := afe.RawResponse.StatusCode
		summary := tokenErrorSummary(afe.RawResponse)
		if status == http.StatusTooManyRequests {
			return provider.Unavailable("Entra ID is throttling token requests for %s (HTTP 429); kubelet will retry the mount", who)
		}
		if status >= 500 {
			return provider.Unavailable("Entra ID failed to issue a token for %s (HTTP %d%s); kubelet will retry the mount", who, status, summary)
		}
		return provider.Errorf(codes.Unauthenticated, "Entra ID refused a token for %s in tenant %q (HTTP %d%s)%s", who, cfg.tenantID, status, summary, identityHint(cfg.mode))
	}

	if msg, ok := networkError(err); ok {
		host := errorHost(err)
		if host != "" && strings.HasPrefix(strings.ToLower(host), strings.ToLower(vault)+".") {
			return provider.Unavailable("Key Vault %q could not be reached at %s: %s; check keyvaultName and cloudName", vault, host, msg)
		}
		if host == "" {
			host = "its endpoint"
		}
		return provider.Unavailable("reading %s from Key Vault %q failed: %s could not be reached: %s", o.describe(), vault, host, msg)
	}

	var afe2 *azidentity.AuthenticationFailedError
	if errors.As(err, &afe2) {
		return provider.Errorf(codes.Unauthenticated, "could not get an Entra ID token for %s in tenant %q%s", who, cfg.tenantID, identityHint(cfg.mode))
	}
	var cu interface{ NonRetriable() }
	if errors.As(err, &cu) {
		// azidentity's "credential unavailable" (for example no managed
		// identity endpoint on this node).
		return provider.Unavailable("%s is not available on this node for Key Vault %q: %s", who, vault, oneLine(err.Error(), 300))
	}
	return provider.Errorf(codes.Internal, "reading %s from Key Vault %q failed: %s", o.describe(), vault, oneLine(err.Error(), 300))
}

func kvCollection(o *object) string {
	switch o.ObjectType {
	case typeKey:
		return "key"
	case typeCert:
		return "certificate"
	}
	return "secret"
}

func identityHint(m identityMode) string {
	switch m {
	case modeWorkload:
		return ": check clientID and the federated credential (issuer, subject system:serviceaccount:<namespace>:<name>, audience api://AzureADTokenExchange)"
	case modeServicePrincipal:
		return ": check the clientid and clientsecret in nodePublishSecretRef"
	}
	return ": check userAssignedIdentityID and that the identity is assigned to the node"
}

// innerErrorCode reads error.innererror.code of a Key Vault error body.
func innerErrorCode(re *azcore.ResponseError) string {
	if re.RawResponse == nil || re.RawResponse.Body == nil {
		return ""
	}
	body, _ := io.ReadAll(io.LimitReader(re.RawResponse.Body, 64<<10))
	var e struct {
		Error struct {
			InnerError struct {
				Code string `json:"code"`
			} `json:"innererror"`
		} `json:"error"`
	}
	_ = json.Unmarshal(body, &e)
	return e.Error.InnerError.Code
}

// tokenErrorSummary reads the OAuth error code and AADSTS number of a token
// response; descriptions are left out as they can be long.
func tokenErrorSummary(resp *http.Response) string {
	if resp.Body == nil {
		return ""
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var e struct {
		Error      string `json:"error"`
		ErrorCodes []int  `json:"error_codes"`
	}
	if json.Unmarshal(body, &e) != nil || e.Error == "" {
		return ""
	}
	s := " " + e.Error
	if len(e.ErrorCodes) > 0 {
		s += fmt.Sprintf(" AADSTS%d", e.ErrorCodes[0])
	}
	return s
}

// networkError describes DNS, connection and TLS failures.
func networkError(err error) (string, bool) {
	var dnsErr *net.DNSError
	var certErr *tls.CertificateVerificationError
	var unknownAuth x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	var opErr *net.OpError
	switch {
	case errors.As(err, &dnsErr):
		return "the name does not resolve", true
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused", true
	case errors.As(err, &certErr), errors.As(err, &unknownAuth), errors.As(err, &hostErr):
		return "its TLS certificate is not trusted or does not match", true
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return "the connection failed", true
	case errors.As(err, &opErr):
		return "the connection failed", true
	}
	return "", false
}

func errorHost(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		if u, perr := url.Parse(ue.URL); perr == nil {
			return u.Hostname()
		}
	}
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		return dnsErr.Name
	}
	return ""
}

func oneLine(s string, max int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > max {
		s = s[:max] + "..."
	}
	return s
}
