package restart

import (
	"net/http"

	"k8s.io/client-go/rest"
)

// ClientConfig prepares cfg for the Restarter's client: client-go retries
// an answer 429 with a Retry-After header itself, up to ten times, sleeping
// in between (the API server says "retry after 10s" to an eviction while a
// disruption budget's status is behind its spec, which its owner can keep
// so by editing it). Those sleeps would hold the one worker for every
// tenant, so the header is dropped from 429 answers: the Restarter's own
// retries (step 5) wait on timers instead.
func ClientConfig(cfg *rest.Config) {
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper { return noRetryAfter{rt} })
}

type noRetryAfter struct{ next http.RoundTripper }

func (t noRetryAfter) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.next.RoundTrip(req)
	if resp != nil && resp.StatusCode == http.StatusTooManyRequests && resp.Header.Get("Retry-After") != "" {
		resp.Header = resp.Header.Clone()
		resp.Header.Del("Retry-After")
	}
	return resp, err
}
