package secretsync

// The write loop of one Secret on this node: one goroutine at a time per
// Secret, coalescing what volumes submit while it writes, retrying with
// back-off after a failure, and keeping only the content's hash once
// written.

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/secretfs/secretfs/provider"
)

func (s *Syncer) startLocked(e *entry) {
	e.running = true
	s.running.Add(1)
	go s.run(e)
}

// run writes e until it holds the newest content with every pod of the
// node among its owners, coalescing requests that arrive meanwhile.
func (s *Syncer) run(e *entry) {
	defer s.running.Done()
	for {
		s.mu.Lock()
		if s.closed || s.secrets[e.key] != e {
			e.running = false
			s.mu.Unlock()
			return
		}
		d := e.want
		owners, adds := e.ownersLocked()
		if d == nil || (e.uid != "" && e.written == d.hash && len(adds) == 0) {
			d.release() // written already: only the hash stays
			e.want = nil
			e.running = false
			waiters := e.waiters
			e.waiters = nil
			s.mu.Unlock()
			for _, ch := range waiters {
				ch <- nil
			}
			return
		}
		e.inflight = d
		uid, waiters, prov := e.uid, e.waiters, e.provider
		e.waiters = nil
		s.mu.Unlock()

		ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
		start := time.Now()
		weight := min(max(d.size, 1), MaxInflightBytes)
		err := s.inflight.Acquire(ctx, weight)
		var sec *corev1.Secret
		if err == nil {
			sec, err = s.write(ctx, e.key, uid, d, owners, adds)
			s.inflight.Release(weight)
		}
		cancel()

		s.mu.Lock()
		e.inflight = nil
		switch {
		case e.want != d:
			d.release() // newer content arrived, or the entry was dropped
		case err == nil:
			// Written: keep only its hash (e.written below). A later
			// failure retries from the newest content a volume submits.
			d.release()
			e.want = nil
		}
		var notify []provider.Pod
		var msg, reason string
		if err == nil {
			s.metrics.written(prov, time.Since(start))
			e.uid = sec.UID
			clear(e.owners)
			for _, o := range sec.OwnerReferences {
				e.owners[o.UID] = true
			}
			e.written = d.hash
			e.failures = 0
			for _, u := range e.users {
				u.lastEvent = ""
			}
		} else {
			var conflict *conflictError
			reason, msg = ReasonFailed, fmt.Sprintf("Syncing Secret %q from the volume's files failed; retrying: %v", e.key.name, err)
			if errors.As(err, &conflict) {
				reason, msg = ReasonConflict, conflict.msg
				s.metrics.results.WithLabelValues("conflict").Inc()
			} else {
				s.metrics.results.WithLabelValues("failed").Inc()
			}
			e.uid = "" // learn the Secret afresh on the next attempt
			e.failures++
			for _, u := range e.users {
				if u.lastEvent != msg {
					u.lastEvent = msg
					notify = append(notify, u.pod)
				}
			}
			if s.secrets[e.key] == e && !s.closed {
				e.retry = time.AfterFunc(s.backoff(e.failures), func() { s.retryNow(e) })
			}
			e.running = false
			// Requests that came in during this attempt learn of the
			// failure too, rather than wait out the back-off.
			waiters = append(waiters, e.waiters...)
			e.waiters = nil
		}
		s.mu.Unlock()
		if err != nil {
			s.log.Warn("Secret sync failed; retrying with back-off", "namespace", e.key.ns, "secret", e.key.name, "err", err.Error())
			for _, pod := range notify {
				s.warn(pod, reason, msg)
			}
		}
		for _, ch := range waiters {
			ch <- err
		}
		if err != nil {
			return
		}
	}
}

func (s *Syncer) retryNow(e *entry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.secrets[e.key] != e || e.running {
		return
	}
	e.retry = nil
	s.startLocked(e)
}

// ownersLocked returns the owners (pods, or the pods' controllers) of every
// volume on this node that syncs e, each once, and those of them the Secret
// is not known to have.
func (e *entry) ownersLocked() (all, adds []metav1.OwnerReference) {
	seen := map[types.UID]bool{}
	for _, u := range e.users {
		ref := u.owner
		if seen[ref.UID] {
			continue
		}
		seen[ref.UID] = true
		all = append(all, ref)
		if e.uid == "" || !e.owners[ref.UID] {
			adds = append(adds, ref)
		}
	}
	byName := func(a, b metav1.OwnerReference) int { return strings.Compare(a.Name, b.Name) }
	slices.SortFunc(all, byName)
	slices.SortFunc(adds, byName)
	return all, adds
}

func (s *Syncer) backoff(failures int) time.Duration {
	d := s.minBackoff
	for i := 1; i < failures && d < s.maxBackoff; i++ {
		d *= 2
	}
	d = min(d, s.maxBackoff)
	// Up to 10% jitter, so that nodes do not retry in lockstep.
	return d + time.Duration(rand.Int64N(int64(d)/10+1))
}
