package content

import (
	"context"

	"github.com/secretfs/secretfs/driver/budget"
)

// work is a budget of limit bytes and the default steps, with no node
// budget behind it.
func work(limit int64) *budget.Work {
	return (*budget.Budget)(nil).Work(context.Background(), "test", "team-a", limit, budget.DefaultMaxSteps)
}

// charged is what w, a budget of limit bytes, has charged.
func charged(w *budget.Work, limit int64) int64 { return limit - w.Left() }
