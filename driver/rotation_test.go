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
