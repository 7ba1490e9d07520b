package fakeazure

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
)

// checkListenAddr accepts a loopback address, or an address of an interface
// of this process's network namespace when that namespace is not the
// machine's own (the process runs in one a test suite created, such as the
// control plane's namespace of the local test cluster), has no default
// route and the address is a private one, so nothing it serves can be reached from, or answer to, anything
// off the machine. It returns the non-loopback IP to put in the serving
// certificate, or nil for loopback.
func checkListenAddr(addr string) (net.IP, error) {
	if err := requireLoopback(addr); err == nil {
		return nil, nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	ip := net.ParseIP(host)
	if ip == nil || ip.IsUnspecified() {
		return nil, fmt.Errorf("fakeazure: %q is neither a loopback address nor one address of this network namespace", addr)
	}
	if !ip.IsPrivate() {
		return nil, fmt.Errorf("fakeazure: %q is neither loopback nor a private address", addr)
	}
	if ownNamespace() {
		return nil, fmt.Errorf("fakeazure: %q is not a loopback address (other addresses only inside a network namespace of their own)", addr)
	}
	if route, err := defaultRoute(); err != nil || route != "" {
		return nil, fmt.Errorf("fakeazure: %q: this network namespace routes off the machine (%s): %v", addr, route, err)
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.Equal(ip) {
			return ip, nil
		}
	}
	return nil, fmt.Errorf("fakeazure: %q is not an address of this network namespace", addr)
}

// ownNamespace reports whether this process is in the machine's own network
// namespace (that of pid 1), as far as it can tell: where pid 1's namespace
// cannot be read, the default-route check alone decides.
func ownNamespace() bool {
	self, err1 := os.Readlink("/proc/self/ns/net")
	initial, err2 := os.Readlink("/proc/1/ns/net")
	return err1 == nil && err2 == nil && self == initial
}

// defaultRoute returns a usable IPv4 or IPv6 default route of this network
// namespace as text, or "" if it has none (the kernel's unreachable IPv6
// default on lo does not count).
func defaultRoute() (string, error) {
	const rtfUp, rtfReject = 0x1, 0x200
	for _, f := range []struct {
		path                  string
		dst, plen, flags, dev int
		zeroDst, zeroPlen     string
		skipFirstLine         bool
	}{
		{"/proc/net/route", 1, 7, 3, 0, "00000000", "00000000", true},
		{"/proc/net/ipv6_route", 0, 1, 8, 9, strings.Repeat("0", 32), "00", false},
	} {
		file, err := os.Open(f.path)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return "", err
		}
		sc := bufio.NewScanner(file)
		first := true
		for sc.Scan() {
			if first && f.skipFirstLine {
				first = false
				continue
			}
			fields := strings.Fields(sc.Text())
			if len(fields) <= max(f.dst, f.plen, f.flags, f.dev) || fields[f.dst] != f.zeroDst || fields[f.plen] != f.zeroPlen {
				continue
			}
			flags, err := strconv.ParseUint(fields[f.flags], 16, 32)
			if err != nil || flags&rtfUp == 0 || flags&rtfReject != 0 {
				continue
			}
			_ = file.Close()
			return "default via " + fields[f.dev] + " in " + f.path, nil
		}
		_ = file.Close()
		if err := sc.Err(); err != nil {
			return "", err
		}
	}
	return "", nil
}
