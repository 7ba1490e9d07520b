// The rotation policy, all of it: when a mounted volume
// is refreshed, how a failing backend is spared, how often a failure is
// reported on the pod, how long the node cache may serve an answer, and how
// bursts of change notifications fold into one refresh.
//
// Every volume runs on its own clock: lastFetch is when the backend call
// behind its content started, lastTry when it last tried, and own the
// interval its class sets for itself (0: none). Kubelet republishes every
// volume periodically (CSIDriver requiresRepublish); the local agent does
// the same at RepublishPeriod.

package driver

import "time"

// rotationPolicy is the driver's rotation policy.
type rotationPolicy struct {
	// Interval is how old a volume's content may get before a republish
	// refreshes it.
	Interval time.Duration
	// Debounce folds a burst of watch notifications into one refresh.
	Debounce time.Duration
	// Timeout bounds fetches with no caller deadline (watch refreshes).
	Timeout time.Duration
}

// newRotationPolicy is the policy for the driver's interval.
func newRotationPolicy(interval time.Duration) rotationPolicy {
	return rotationPolicy{Interval: interval, Debounce: 200 * time.Millisecond, Timeout: 2 * time.Minute}
}

// Due reports whether a volume's clock has run out. After a failed attempt
// the next one waits a quarter interval, so a broken backend is not
// hammered by every republish.
func (p rotationPolicy) Due(lastFetch, lastTry time.Time, own time.Duration, now time.Time) bool {
	iv := p.Every(own)
	return now.Sub(lastFetch) >= iv && now.Sub(lastTry) >= iv/4
}

// Next is when Due turns true (without a watch in between).
func (p rotationPolicy) Next(lastFetch, lastTry time.Time, own time.Duration) time.Time {
	iv := p.Every(own)
	next := lastFetch.Add(iv)
	if retry := lastTry.Add(iv / 4); retry.After(next) {
		next = retry
	}
	return next
}

// Every is a volume's interval: its class's own (secretfs.dev/rotationInterval,
// clamped to the driver's bounds) or the driver's.
func (p rotationPolicy) Every(own time.Duration) time.Duration {
	if own > 0 {
		return own
	}
	return p.Interval
}

// FailureEventDue reports whether a failed refresh is reported on the pod:
// at most once per volume and interval.
func (p rotationPolicy) FailureEventDue(lastFailEvent time.Time, own time.Duration, now time.Time) bool {
	return lastFailEvent.IsZero() || now.Sub(lastFailEvent) >= p.Every(own)
}

// CacheMaxAge is how long the node cache serves an answer: one interval
// from the backend call that produced it, so no volume's content is ever
// older than the interval after a refresh. A class with its own interval
// passes it with each cache Get (the driver's cache policy).
func (p rotationPolicy) CacheMaxAge() time.Duration { return p.Interval }

// RepublishPeriod is how often a caller without kubelet (the local agent)
// republishes a volume refreshed every interval. It is shorter than the
// interval: a republish refreshes only when the last fetch is at least one
// interval old, and a tick exactly one interval after a refresh can arrive
// a moment early and be skipped, which would stretch the period to twice
// the interval.
func RepublishPeriod(interval time.Duration) time.Duration {
	return max(interval/4, time.Millisecond)
}
