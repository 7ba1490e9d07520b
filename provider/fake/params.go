package fake

import (
	"math"
	"sort"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/secretfs/secretfs/provider"
)

// Class parameter names.
const (
	paramObjects   = "objects"
	paramLatency   = "latency"
	paramFailFirst = "failFirst"
	paramFailCode  = "failCode"
	paramDeny      = "deny"
	paramRateLimit = "rateLimit"
)

const (
	maxLatency   = 10 * time.Minute
	maxFailFirst = 1_000_000_000
	maxRateLimit = 1_000_000
)

// Parameters some drivers add for every provider; accepted and ignored.
var ignoredPrefixes = []string{"csi.storage.k8s.io/", "secrets-store.csi.k8s.io/"}

// config is a validated set of class parameters.
type config struct {
	objects   []object
	latency   time.Duration
	failFirst int64
	failCode  codes.Code
	deny      map[string]bool
	rateLimit float64 // requests per second; 0 means unlimited
}

// parseConfig validates the class parameters. objects are parsed by parse,
// which lets the caller cache the costly part.
func parseConfig(params map[string]string, parse func(string) ([]object, error)) (*config, error) {
	for k := range params {
		if !knownParam(k) {
			return nil, provider.InvalidArgument("unknown parameter %q for provider fake; known parameters: %s", provider.Clip(k, 64), strings.Join(knownParams(), ", "))
		}
	}
	objectsParam, ok := params[paramObjects]
	if !ok {
		return nil, provider.InvalidArgument("parameter objects is missing: list the objects to mount")
	}
	objs, err := parse(objectsParam)
	if err != nil {
		return nil, err
	}
	cfg := &config{objects: objs, failCode: codes.Unavailable}

	if v, ok := params[paramLatency]; ok {
		d, err := time.ParseDuration(strings.TrimSpace(v))
		if err != nil || d < 0 || d > maxLatency {
			return nil, provider.InvalidArgument("parameter latency must be a Go duration from 0s to %s, such as \"250ms\"", maxLatency)
		}
		cfg.latency = d
	}
	if v, ok := params[paramFailFirst]; ok {
		n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		if err != nil || n < 0 || n > maxFailFirst {
			return nil, provider.InvalidArgument("parameter failFirst must be a whole number of calls from 0 to %d", maxFailFirst)
		}
		cfg.failFirst = n
	}
	if v, ok := params[paramFailCode]; ok {
		if _, set := params[paramFailFirst]; !set {
			return nil, provider.InvalidArgument("parameter failCode is only used with failFirst; set failFirst too")
		}
		c, ok := codeByName(strings.TrimSpace(v))
		if !ok {
			return nil, provider.InvalidArgument("parameter failCode must be a gRPC code name other than OK, such as Unavailable, PermissionDenied or NotFound")
		}
		cfg.failCode = c
	}
	if v, ok := params[paramDeny]; ok {
		cfg.deny = map[string]bool{}
		for _, sa := range strings.Split(v, ",") {
			sa = strings.TrimSpace(sa)
			if sa == "" {
				continue
			}
			if !dnsSubdomain(sa) {
				return nil, provider.InvalidArgument("parameter deny must be a comma-separated list of service-account names (lowercase DNS subdomains); %q is not one", provider.Clip(sa, 64))
			}
			cfg.deny[sa] = true
		}
	}
	if v, ok := params[paramRateLimit]; ok {
		r, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil || math.IsNaN(r) || r <= 0 || r > maxRateLimit {
			return nil, provider.InvalidArgument("parameter rateLimit must be a number of requests per second above 0 and at most %d, such as \"5\" or \"0.5\"", maxRateLimit)
		}
		cfg.rateLimit = r
	}
	return cfg, nil
}

func knownParam(k string) bool {
	switch k {
	case paramObjects, paramLatency, paramFailFirst, paramFailCode, paramDeny, paramRateLimit:
		return true
	}
	for _, p := range ignoredPrefixes {
		if strings.HasPrefix(k, p) {
			return true
		}
	}
	return false
}

func knownParams() []string {
	ks := []string{paramObjects, paramLatency, paramFailFirst, paramFailCode, paramDeny, paramRateLimit}
	sort.Strings(ks)
	return ks
}

// codeByName maps "Unavailable", "unavailable" or "UNAVAILABLE" to the code.
func codeByName(name string) (codes.Code, bool) {
	norm := strings.ToLower(strings.ReplaceAll(name, "_", ""))
	for c := codes.Canceled; c <= codes.Unauthenticated; c++ {
		if strings.ToLower(c.String()) == norm {
			return c, true
		}
	}
	return 0, false
}

// dnsLabel reports whether s is an RFC 1123 label, as namespace names are.
func dnsLabel(s string) bool {
	if len(s) == 0 || len(s) > 63 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		alnum := 'a' <= c && c <= 'z' || '0' <= c && c <= '9'
		if !alnum && (c != '-' || i == 0 || i == len(s)-1) {
			return false
		}
	}
	return true
}

// dnsSubdomain reports whether s is an RFC 1123 subdomain, as service-account
// names are.
func dnsSubdomain(s string) bool {
	if len(s) == 0 || len(s) > 253 {
		return false
	}
	for _, l := range strings.Split(s, ".") {
		if !dnsLabel(l) {
			return false
		}
	}
	return true
}
