package main

import (
	"bytes"
	"flag"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/secretfs/secretfs/provider"
)

// A built-in backend that -backends leaves out is refused FailedPrecondition
// naming the flag, and is not looked for as an external provider socket.
func TestBackendAllowList(t *testing.T) {
	var b backendFlags
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	b.register(fs)
	b.registerExternal(fs)
	b.registerAllowList(fs, "azure,kubernetes")
	if err := fs.Parse([]string{"-provider-dir", t.TempDir()}); err != nil {
		t.Fatal(err)
	}
	resolve, external, err := b.resolver(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer external.Close()
	_, err = resolve("fake")
	if provider.CodeOf(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "--backends=azure,kubernetes") {
		t.Fatalf("fake by default: %v", err)
	}
	if p, err := resolve("azure"); err != nil || p == nil {
		t.Fatalf("azure: %v", err)
	}
	if err := fs.Parse([]string{"-backends", "fake"}); err != nil {
		t.Fatal(err)
	}
	if _, err := resolve("fake"); err != nil {
		t.Fatalf("fake enabled: %v", err)
	}
	if _, err := resolve("azure"); provider.CodeOf(err) != codes.FailedPrecondition {
		t.Fatalf("azure disabled: %v", err)
	}
	if err := fs.Parse([]string{"-backends", "fake,vault"}); err == nil || !strings.Contains(err.Error(), `"vault" is not a built-in backend`) {
		t.Fatalf("unknown backend accepted: %v", err)
	}
}

func TestProbe(t *testing.T) {
	healthy := true
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" || !healthy {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ok")
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	var out, errb bytes.Buffer
	if code := run([]string{"probe", "--addr", addr}, &out, &errb); code != 0 || out.String() != "ok" {
		t.Fatalf("healthy: exit %d, %q %q", code, out.String(), errb.String())
	}
	healthy = false
	errb.Reset()
	if code := run([]string{"probe", "--addr", addr}, io.Discard, &errb); code != 1 || !strings.Contains(errb.String(), "503") {
		t.Fatalf("unhealthy: exit %d, %q", code, errb.String())
	}
}

func TestHostPort(t *testing.T) {
	for in, want := range map[string]string{
		"127.0.0.1:9809": "127.0.0.1:9809",
		"::1:9809":       "[::1]:9809",
		"[::1]:9809":     "[::1]:9809",
		":9809":          ":9809",
		"bogus":          "bogus",
	} {
		if got := hostPort(in); got != want {
			t.Errorf("hostPort(%q) = %q, want %q", in, got, want)
		}
	}
}

func FuzzHostPort(f *testing.F) {
	for _, s := range []string{"127.0.0.1:9809", "::1:9809", "[::1]:9809", ":9809", "fd00::5:80", "bogus", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, addr string) {
		got := hostPort(addr)
		if got == addr {
			return
		}
		if _, _, err := net.SplitHostPort(got); err != nil {
			t.Fatalf("hostPort(%q) = %q, which does not split: %v", addr, got, err)
		}
	})
}
