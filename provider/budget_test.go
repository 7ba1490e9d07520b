package provider

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
)

func TestBudgetFilesAndBytes(t *testing.T) {
	b := NewBudget(&Request{Limits: Limits{MaxBytes: 100, MaxFiles: 3}})
	if err := b.File(60); err != nil {
		t.Fatal(err)
	}
	if err := b.File(40); err != nil {
		t.Fatal(err)
	}
	err := b.File(1)
	if CodeOf(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "--tmpfs-size") {
		t.Fatalf("101 bytes: %v", err)
	}
	err = b.File(0)
	if CodeOf(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "--max-files") {
		t.Fatalf("4th file: %v", err)
	}
	if d := NewBudget(nil).Limits(); d.MaxBytes != DefaultMaxBytes || d.MaxFiles != DefaultMaxFiles {
		t.Fatalf("defaults %+v", d)
	}
}

// The reader stops a body at the wire allowance: a client that reads it
// whole gets the error, not the bytes beyond.
func TestBudgetReaderStopsAtTheAllowance(t *testing.T) {
	b := NewBudget(&Request{Limits: Limits{MaxBytes: 1 << 10}})
	allowance := b.Limits().WireBytes()
	body := io.NopCloser(bytes.NewReader(make([]byte, 4*allowance)))
	got, err := io.ReadAll(b.Reader(body))
	var pe *Error
	if !errors.As(err, &pe) || pe.Code != codes.ResourceExhausted {
		t.Fatalf("want ResourceExhausted, got %v", err)
	}
	if int64(len(got)) > allowance {
		t.Fatalf("read %d bytes past an allowance of %d", len(got), allowance)
	}
	// The allowance is per fetch: a second body of the same fetch fails at once.
	if _, err := b.Reader(io.NopCloser(strings.NewReader("x"))).Read(make([]byte, 1)); CodeOf(err) != codes.ResourceExhausted {
		t.Fatalf("second body: %v", err)
	}
}
