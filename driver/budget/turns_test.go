package budget

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/secretfs/secretfs/provider"
)

// queued waits until n computations wait for a turn.
func queued(t *testing.T, tr *turns, n int) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		tr.mu.Lock()
		got := 0
		for _, q := range tr.waiting {
			got += len(q)
		}
		tr.mu.Unlock()
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d waiting, want %d", got, n)
		}
	}
}

// A tenant with many computations queued does not hold another tenant's
// back by more than one of its own: turns go round the tenants waiting.
func TestTurnsGoRoundTheTenants(t *testing.T) {
	b := New(1 << 20)
	b.turns = newTurns(1)
	ctx := context.Background()
	holder := b.Work(ctx, "v0", "team-a", 1<<20, 1000)
	end, err := holder.Turn()
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		order []string
		wg    sync.WaitGroup
	)
	start := func(name, tenant string, n int) {
		wg.Go(func() {
			done, err := b.Work(ctx, name, tenant, 1<<20, 1000).Turn()
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			order = append(order, name)
			mu.Unlock()
			done()
		})
		queued(t, b.turns, n)
	}
	for i, name := range []string{"a1", "a2", "a3", "a4"} {
		start(name, "team-a", i+1)
	}
	start("b1", "team-b", 5)
	start("c1", "team-c", 6)
	end()
	wg.Wait()
	want := []string{"a1", "b1", "c1", "a2", "a3", "a4"}
	if len(order) != len(want) {
		t.Fatalf("turns %v, want %v", order, want)
	}
	for i := range want {
		if order[i] != want[i] {
			t.Fatalf("turns %v, want %v", order, want)
		}
	}
	if b.turns.free != 1 || len(b.turns.order) != 0 || len(b.turns.waiting) != 0 {
		t.Errorf("after all turns: free %d, order %v, waiting %v", b.turns.free, b.turns.order, b.turns.waiting)
	}
}

// No more computations run at once than there are slots, however many
// volumes of one tenant compute together.
func TestTurnsBoundConcurrency(t *testing.T) {
	b := New(1 << 20)
	b.turns = newTurns(2)
	var running, most atomic.Int32
	var wg sync.WaitGroup
	for i := range 64 {
		wg.Go(func() {
			end, err := b.Work(context.Background(), "v", "team-a", 1<<20, 1000).Turn()
			if err != nil {
				t.Error(err)
				return
			}
			n := running.Add(1)
			for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
			}
			if i%8 == 0 {
				time.Sleep(time.Millisecond)
			}
			running.Add(-1)
			end()
		})
	}
	wg.Wait()
	if m := most.Load(); m > 2 || m < 1 {
		t.Errorf("%d computations at once, want at most 2", m)
	}
}

// A computation whose request ends while it waits leaves the queue and
// says why; a turn granted as the request ended goes to the next waiter.
func TestTurnsWhenTheRequestEnds(t *testing.T) {
	b := New(1 << 20)
	b.turns = newTurns(1)
	end, err := b.Work(context.Background(), "v0", "team-a", 1<<20, 1000).Turn()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	_, err = b.Work(ctx, "v1", "team-b", 1<<20, 1000).Turn()
	if provider.CodeOf(err) != codes.DeadlineExceeded {
		t.Fatalf("%v, want DeadlineExceeded", err)
	}
	if len(b.turns.waiting) != 0 || len(b.turns.order) != 0 {
		t.Fatalf("the ended wait is still queued: %v %v", b.turns.waiting, b.turns.order)
	}
	cctx, ccancel := context.WithCancel(context.Background())
	ccancel()
	if _, err := b.Work(cctx, "v2", "team-b", 1<<20, 1000).Turn(); provider.CodeOf(err) != codes.Canceled {
		t.Fatalf("%v, want Canceled", err)
	}

	// Granted and cancelled at once: the slot is passed on, not lost.
	ch := make(chan struct{})
	b.turns.mu.Lock()
	b.turns.order = append(b.turns.order, "team-c")
	b.turns.waiting["team-c"] = []chan struct{}{ch}
	b.turns.mu.Unlock()
	end() // grants team-c's waiter
	<-ch
	b.turns.mu.Lock()
	b.turns.passLocked() // what enter does when it finds the grant after its context ended
	b.turns.mu.Unlock()
	if b.turns.free != 1 {
		t.Errorf("free slots %d after the granted waiter gave its turn back, want 1", b.turns.free)
	}
	// A nil budget (tests, no node budget) never waits.
	done, err := (*Budget)(nil).Work(context.Background(), "v", "team-a", 1, 1).Turn()
	if err != nil {
		t.Fatal(err)
	}
	done()
}
