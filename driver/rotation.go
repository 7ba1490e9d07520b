package driver

import (
	"context"
	"time"

	"github.com/secretfs/secretfs/provider"
)

// The rotation policy, all of it: when a mounted volume is refreshed, how a
// failing backend is spared, how often a failure is reported on the pod,
// how long the node cache may serve an answer, and how bursts of change
// notifications fold into one refresh.
//
// Every volume runs on its own clock: lastFetch is when the backend call
// behind its content started, lastTry when it last tried. Kubelet republishes
// every volume periodically (CSIDriver requiresRepublish); the local agent
// does the same at RepublishPeriod.
type rotation struct {
	// interval is how old a volume's content may get before a republish
	// refreshes it.
	interval time.Duration
	// debounce folds a burst of watch notifications into one refresh.
	debounce time.Duration
	// timeout bounds fetches with no caller deadline (watch refreshes).
	timeout time.Duration
}

func newRotation(interval time.Duration) rotation {
	return rotation{interval: interval, debounce: 200 * time.Millisecond, timeout: 2 * time.Minute}
}

// due reports whether v's clock has run out. After a failed attempt the
// next one waits a quarter interval, so a broken backend is not hammered by
// every republish.
func (r rotation) due(v *volume, now time.Time) bool {
	iv := r.every(v)
	return now.Sub(v.lastFetch) >= iv && now.Sub(v.lastTry) >= iv/4
}

// every is v's interval: its class's own (secretfs.dev/rotationInterval,
// clamped to the driver's bounds) or the driver's.
func (r rotation) every(v *volume) time.Duration {
	if v.interval > 0 {
		return v.interval
	}
	return r.interval
}

// failureEventDue reports whether a failed refresh is reported on the pod:
// at most once per volume and interval.
func (r rotation) failureEventDue(v *volume, now time.Time) bool {
	return v.lastFailEvent.IsZero() || now.Sub(v.lastFailEvent) >= r.every(v)
}

// cacheMaxAge is how long the node cache serves an answer: one interval
// from the backend call that produced it, so no volume's content is ever
// older than the interval after a refresh. A class with its own interval
// passes it with each cache Get (cachePolicy).
func (r rotation) cacheMaxAge() time.Duration { return r.interval }

// RepublishPeriod is how often a caller without kubelet (the local agent)
// republishes a volume refreshed every interval. It is shorter than the
// interval: a republish refreshes only when the last fetch is at least one
// interval old, and a tick exactly one interval after a refresh can arrive
// a moment early and be skipped, which would stretch the period to twice
// the interval.
func RepublishPeriod(interval time.Duration) time.Duration {
	return max(interval/4, time.Millisecond)
}

// refresh runs apply on a mounted volume. A failure keeps the last good
// content; it is logged, counted, and reported on the pod when
// failureEventDue. The caller holds the volume lock.
func (d *Driver) refresh(ctx context.Context, v *volume, trigger string) {
	start := time.Now()
	v.lastTry = start
	changed, err := d.apply(ctx, v, v.req)
	switch {
	case err != nil:
		d.log.Warn("refresh failed; keeping the last good content", "volume_id", v.id, "namespace", v.pod.Namespace,
			"class", v.class, "trigger", trigger, "code", provider.CodeOf(err).String(), "err", err.Error())
		if d.events != nil && d.rotation.failureEventDue(v, start) {
			v.lastFailEvent = start
			d.events.RefreshFailed(v.pod, v.class, err)
		}
	case changed:
		d.log.Info("volume rotated", "volume_id", v.id, "namespace", v.pod.Namespace, "class", v.class,
			"trigger", trigger, "duration", time.Since(start))
		if d.events != nil {
			d.events.Rotated(v.pod, v.class)
		}
	default:
		d.log.Debug("volume refreshed, unchanged", "volume_id", v.id, "trigger", trigger)
	}
	d.metrics.refreshed(v.provider, trigger, changed, err, time.Since(start))
	if d.volume(v.id) == v { // not forgotten meanwhile
		d.noteStatus(v, err)
	}
}
