package driver

import (
	"testing"
	"time"
)

// A republish one interval after a refresh may come a moment early and find
// nothing due, so the agent republishes more often than it refreshes: the
// refresh period then stays within 1.25 intervals.
func TestRepublishPeriod(t *testing.T) {
	for _, interval := range []time.Duration{time.Nanosecond, 50 * time.Millisecond, time.Second, 2 * time.Minute} {
		got := RepublishPeriod(interval)
		if got <= 0 || (interval >= 4*time.Millisecond && got > interval/4) {
			t.Errorf("RepublishPeriod(%v) = %v, want a positive period of at most a quarter interval", interval, got)
		}
	}
}

// t0 is the clock's origin in the table tests: every instant is explicit.
var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func at(d time.Duration) time.Time { return t0.Add(d) }

func TestDueAndNext(t *testing.T) {
	p := newRotationPolicy(time.Minute)
	for _, c := range []struct {
		name               string
		lastFetch, lastTry time.Time
		own                time.Duration
		now                time.Time
		due                bool
		next               time.Time
	}{
		{"fresh content", at(0), at(0), 0, at(30 * time.Second), false, at(time.Minute)},
		{"a moment before the interval", at(0), at(0), 0, at(time.Minute - time.Nanosecond), false, at(time.Minute)},
		{"exactly one interval", at(0), at(0), 0, at(time.Minute), true, at(time.Minute)},
		{"long overdue", at(0), at(0), 0, at(time.Hour), true, at(time.Minute)},
		{"the class's own interval", at(0), at(0), 10 * time.Second, at(10 * time.Second), true, at(10 * time.Second)},
		{"own interval not yet run out", at(0), at(0), 2 * time.Minute, at(time.Minute), false, at(2 * time.Minute)},
		// A failed attempt: the next waits a quarter interval from it.
		{"failed 10s ago", at(0), at(80 * time.Second), 0, at(90 * time.Second), false, at(95 * time.Second)},
		{"failed a quarter interval ago", at(0), at(80 * time.Second), 0, at(95 * time.Second), true, at(95 * time.Second)},
		{"failure early in the interval", at(0), at(40 * time.Second), 0, at(time.Minute), true, at(time.Minute)},
		{"failure late in the interval", at(0), at(50 * time.Second), 0, at(time.Minute), false, at(65 * time.Second)},
		{"failure with own interval", at(0), at(20 * time.Second), 20 * time.Second, at(24 * time.Second), false, at(25 * time.Second)},
	} {
		if got := p.Due(c.lastFetch, c.lastTry, c.own, c.now); got != c.due {
			t.Errorf("%s: Due = %v, want %v", c.name, got, c.due)
		}
		next := p.Next(c.lastFetch, c.lastTry, c.own)
		if !next.Equal(c.next) {
			t.Errorf("%s: Next = %v, want %v", c.name, next.Sub(t0), c.next.Sub(t0))
		}
		// Next is when Due turns true: due at Next, not a nanosecond before.
		if !p.Due(c.lastFetch, c.lastTry, c.own, next) || p.Due(c.lastFetch, c.lastTry, c.own, next.Add(-time.Nanosecond)) {
			t.Errorf("%s: Due does not turn true exactly at Next (%v)", c.name, next.Sub(t0))
		}
	}
}

func TestFailureEventDue(t *testing.T) {
	p := newRotationPolicy(time.Minute)
	for _, c := range []struct {
		name          string
		lastFailEvent time.Time
		own           time.Duration
		now           time.Time
		want          bool
	}{
		{"first failure", time.Time{}, 0, at(0), true},
		{"reported a moment ago", at(0), 0, at(time.Second), false},
		{"a moment before the interval", at(0), 0, at(time.Minute - time.Nanosecond), false},
		{"one interval later", at(0), 0, at(time.Minute), true},
		{"the class's own interval", at(0), 5 * time.Second, at(5 * time.Second), true},
		{"own interval not yet run out", at(0), 5 * time.Minute, at(time.Minute), false},
	} {
		if got := p.FailureEventDue(c.lastFailEvent, c.own, c.now); got != c.want {
			t.Errorf("%s: FailureEventDue = %v, want %v", c.name, got, c.want)
		}
	}
}
