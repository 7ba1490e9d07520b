package main

import (
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"strings"

	"github.com/secretfs/secretfs/internal/unixsock"
)

// pprofListener listens where -pprof-addr says: a unix socket (unix:///path,
// unix:/path or /path; created 0600, so only root reads it) or host:port on
// a loopback address (127.0.0.0/8, ::1, localhost). Profiles show the
// driver's internals and cost CPU while taken: never on a routable address.
func pprofListener(addr string) (net.Listener, error) {
	if strings.HasPrefix(addr, "unix:") || strings.HasPrefix(addr, "/") {
		path, err := unixsock.Parse(addr)
		if err != nil {
			return nil, fmt.Errorf("-pprof-addr: %w", err)
		}
		return unixsock.Listen(path, 0o600)
	}
	if err := checkLoopback(addr); err != nil {
		return nil, err
	}
	return net.Listen("tcp", addr)
}

// checkLoopback accepts host:port whose host is a loopback address.
func checkLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err == nil && host != "localhost" {
		if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
			err = fmt.Errorf("%q is not a loopback address", host)
		}
	}
	if err != nil {
		return fmt.Errorf("-pprof-addr %q: want a loopback address (127.0.0.1:6060, [::1]:6060) or a unix socket (unix:///path/pprof.sock): %v", addr, err)
	}
	return nil
}

// pprofHandler serves the net/http/pprof endpoints under /debug/pprof/.
func pprofHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}
