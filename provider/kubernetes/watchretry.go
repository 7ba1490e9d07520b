package kubernetes

import (
	"context"
	"math/rand/v2"
	"time"
)

// How a shared watch waits between attempts, and how often it says that it
// may not watch.

const (
	minBackoff = 500 * time.Millisecond
	maxBackoff = 30 * time.Second
	// unauthorizedRetry re-tries a rejected token in case the rejection was
	// the API server's passing fault; a fresher token retries at once.
	unauthorizedRetry = time.Minute
)

// sleep waits d (forever when d < 0) or until a fresher token arrives. It
// returns false when ctx ended.
func (w *sharedWatch) sleep(ctx context.Context, d time.Duration) bool {
	var timer <-chan time.Time
	if d >= 0 {
		t := time.NewTimer(d + time.Duration(rand.Int64N(int64(d/5)+1)))
		defer t.Stop()
		timer = t.C
	}
	select {
	case <-ctx.Done():
		return false
	case <-w.wake:
	case <-timer:
	}
	return true
}

// maxLoggedForbidden bounds the keys remembered by logForbiddenOnce: every
// republish of a volume without watch permission asks again, so the keys
// must outlive the volumes, but not grow with every pod the node ever ran.
const maxLoggedForbidden = 4096

// logForbiddenOnce records that key's watch was refused 403 (a fetch then
// GETs without asking again) and, when a volume asked for the watch, says
// so once. A watch only a fetch held says nothing: that service account may
// not even get the Secret, and the fetch's GET reports what it may not.
func (p *Provider) logForbiddenOnce(key watchKey, volume bool, log interface{ Warn(string, ...any) }) {
	p.mu.Lock()
	logged, known := p.forbidden[key]
	if !known && len(p.forbidden) >= maxLoggedForbidden {
		clear(p.forbidden) // bound memory: keys of pods long gone may log again
	}
	first := volume && !logged
	p.forbidden[key] = logged || volume
	p.mu.Unlock()
	switch {
	case first && key.selector != "":
		log.Warn("service account may list but not watch Secrets of this namespace: Secrets that start or stop matching the selector reach its volumes only at the rotation interval; grant verb watch to enable rotation within seconds")
	case first:
		log.Warn("service account may get but not watch this Secret: changes reach its volumes only on republish; grant verb watch to enable rotation within seconds")
	}
}

// allowed forgets that key's watch was refused: it is open now.
func (p *Provider) allowed(key watchKey) {
	p.mu.Lock()
	delete(p.forbidden, key)
	p.mu.Unlock()
}
