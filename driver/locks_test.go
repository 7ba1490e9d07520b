package driver

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestKeyLock(t *testing.T) {
	var l volumeLocks
	ctx := context.Background()
	if err := l.LockForCall(ctx, "v"); err != nil {
		t.Fatal(err)
	}
	// Another call: Aborted at once.
	if err := l.LockForCall(ctx, "v"); status.Code(err) != codes.Aborted {
		t.Fatalf("second call: %v", err)
	}
	if err := l.LockForCall(ctx, "other"); err != nil {
		t.Fatalf("other key: %v", err)
	}
	// Background work waits for the call, and gives up when cancelled.
	cancel := make(chan struct{})
	close(cancel)
	if l.Lock("v", cancel) {
		t.Fatal("cancelled Lock succeeded")
	}
	got := make(chan bool)
	go func() { got <- l.Lock("v", nil) }()
	l.Unlock("v")
	if !<-got {
		t.Fatal("background Lock failed")
	}
	// A call waits for background work instead of failing...
	done := make(chan error)
	go func() { done <- l.LockForCall(ctx, "v") }()
	select {
	case err := <-done:
		t.Fatalf("call did not wait: %v", err)
	case <-time.After(20 * time.Millisecond):
	}
	l.Unlock("v")
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	l.Unlock("v")
	// ...but only as long as its context allows.
	l.Lock("v", nil)
	short, stop := context.WithTimeout(ctx, 10*time.Millisecond)
	defer stop()
	if err := l.LockForCall(short, "v"); status.Code(err) != codes.Aborted {
		t.Fatalf("call past its deadline: %v", err)
	}
}

// Preempt cancels the work that holds the lock and takes it when that work
// lets go; it waits for a holder without a cancel, as long as ctx allows.
func TestPreempt(t *testing.T) {
	var l volumeLocks
	ctx := context.Background()
	work, cancel := context.WithCancel(ctx)
	if err := l.LockForCall(work, "v"); err != nil {
		t.Fatal(err)
	}
	l.SetCancel("v", cancel)
	go func() {
		<-work.Done() // the holder stops when cancelled
		l.Unlock("v")
	}()
	if err := l.Preempt(ctx, "v"); err != nil {
		t.Fatalf("preempt: %v", err)
	}
	if work.Err() == nil {
		t.Fatal("the holder was not cancelled")
	}
	// Held by work that cannot be cancelled: Aborted at the deadline.
	short, stop := context.WithTimeout(ctx, 20*time.Millisecond)
	defer stop()
	if err := l.Preempt(short, "v"); status.Code(err) != codes.Aborted {
		t.Fatalf("preempt of a holder without cancel: %v", err)
	}
	l.Unlock("v")
}
