package provider

import (
	"testing"

	"google.golang.org/grpc/codes"
)

// Fetches share the node's bound: one that would go over it fails
// Unavailable without taking anything, and Done gives back all of a
// fetch's share; a fetch's own allowance is checked first.
func TestInFlight(t *testing.T) {
	f := NewInFlight(100)
	a, b := f.Flight(), f.Flight()
	// Each fetch's first FreeBytes are not charged.
	if err := a.Charge(FreeBytes); err != nil || f.Used() != 0 {
		t.Fatalf("the free bytes: %v, used %d", err, f.Used())
	}
	if err := b.Charge(FreeBytes - 10); err != nil || f.Used() != 0 {
		t.Fatalf("the free bytes: %v, used %d", err, f.Used())
	}
	if err := b.Charge(10); err != nil || f.Used() != 0 {
		t.Fatalf("the free bytes: %v, used %d", err, f.Used())
	}
	if err := a.Charge(60); err != nil || f.Used() != 60 {
		t.Fatalf("%v, used %d", err, f.Used())
	}
	if err := b.Charge(50); CodeOf(err) != codes.Unavailable {
		t.Fatalf("over the node's bound: %v, want Unavailable", err)
	}
	if err := b.Charge(40); err != nil || f.Used() != 100 {
		t.Fatalf("up to the bound: %v, used %d", err, f.Used())
	}
	a.Done()
	a.Done()
	if f.Used() != 40 {
		t.Fatalf("after one fetch is done: used %d, want 40", f.Used())
	}
	b.Done()
	if f.Used() != 0 {
		t.Fatalf("after both: used %d", f.Used())
	}

	// Through a volume's budget: its own allowance first.
	req := &Request{Limits: Limits{MaxBytes: 10}, Flight: NewInFlight(1 << 30).Flight()}
	budget := NewBudget(req)
	if err := budget.Wire(req.Limits.WireBytes() + 1); CodeOf(err) != codes.ResourceExhausted {
		t.Fatalf("over the volume's allowance: %v, want ResourceExhausted", err)
	}
	small := &Request{Flight: NewInFlight(10).Flight()}
	if err := NewBudget(small).Wire(FreeBytes + 11); CodeOf(err) != codes.Unavailable {
		t.Fatalf("over the node's bound: %v, want Unavailable", err)
	}
	var none *InFlight
	if err := none.Flight().Charge(1 << 40); err != nil || none.Used() != 0 {
		t.Fatalf("a nil bound: %v", err)
	}
	none.Flight().Done()
}
