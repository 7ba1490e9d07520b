package plugin

import (
	"context"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/secretfs/secretfs/provider"
)

// funcProvider is a provider.Provider made of a function; it counts calls.
type funcProvider struct {
	calls atomic.Int64
	fetch func(ctx context.Context, req *provider.Request) (*provider.Result, error)
}

func (p *funcProvider) Fetch(ctx context.Context, req *provider.Request) (*provider.Result, error) {
	p.calls.Add(1)
	return p.fetch(ctx, req)
}

// staticProvider returns the same files for every request.
func staticProvider(files ...provider.File) *funcProvider {
	return &funcProvider{fetch: func(context.Context, *provider.Request) (*provider.Result, error) {
		return &provider.Result{Files: files, Versions: []provider.ObjectVersion{{ID: "secret/a", Version: "1"}}}, nil
	}}
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// serve runs Serve on path until the returned stop is called (or the test
// ends) and waits until the socket is in place.
func serve(t testing.TB, path string, p provider.Provider, opts ...ServeOption) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- Serve(ctx, "unix://"+path, p, append([]ServeOption{WithLogger(quiet)}, opts...)...) }()
	// Ready when the socket accepts connections: a stale socket may have
	// been at the path before.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(2 * time.Millisecond) {
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			break
		}
		select {
		case err := <-errc:
			cancel()
			t.Fatalf("Serve(%s) ended early: %v", path, err)
		default:
		}
		if time.Now().After(deadline) {
			cancel()
			t.Fatalf("socket %s did not appear", path)
		}
	}
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-errc; err != nil {
			t.Errorf("Serve returned %v", err)
		}
	}
	t.Cleanup(stop)
	return stop
}

func sockPath(dir, name string) string { return filepath.Join(dir, name+".sock") }

func wantCode(t testing.TB, err error, code codes.Code) {
	t.Helper()
	if got := provider.CodeOf(err); got != code {
		t.Fatalf("want code %v, got %v: %v", code, got, err)
	}
}
