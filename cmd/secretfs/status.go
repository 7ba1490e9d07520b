package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"

	"golang.org/x/net/netutil"

	"github.com/secretfs/secretfs/driver"
	"github.com/secretfs/secretfs/internal/unixsock"
)

// statusSocketName is the driver's status socket, next to its CSI socket:
// the plugin directory, which the DaemonSet mounts at the host's path, so
// `secretfs status` finds it on the node and in the driver container alike.
const statusSocketName = "status.sock"

var defaultStatusSocket = "/var/lib/kubelet/plugins/" + driver.DefaultDriverName + "/" + statusSocketName

// statusSocketPath is where `secretfs driver` serves its status: flag, or
// next to the CSI endpoint; "" when turned off.
func statusSocketPath(flag, endpoint string) (string, error) {
	switch flag {
	case "off":
		return "", nil
	case "":
		csiSock, err := unixsock.Parse(endpoint)
		if err != nil {
			return "", err
		}
		return filepath.Join(filepath.Dir(csiSock), statusSocketName), nil
	}
	return unixsock.Parse(flag)
}

// The status socket's bounds. Its requests are a few hundred bytes, so a
// header over statusMaxHeader is refused (431) as soon as it is read; at
// most statusMaxConns connections are served at once (others wait in the
// socket's backlog, costing the driver nothing). Without them, 1000
// connections each sending 1 MiB of header OOM-killed the driver in its
// shipped 128Mi (net/http holds up to 1 MiB of header per connection).
const (
	statusMaxHeader = 8 << 10
	statusMaxConns  = 64
)

// serveStatus serves the volume table on a unix socket only root can use
// (0600) until ctx is done. It carries no secret values, but pod and class
// names are the node's business.
func serveStatus(ctx context.Context, path string, d *driver.Driver, log *slog.Logger) error {
	lis, err := unixsock.Listen(path, 0o600)
	if err != nil {
		return fmt.Errorf("status socket: %w", err)
	}
	srv := &http.Server{Handler: d.StatusHandler(), MaxHeaderBytes: statusMaxHeader,
		ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second, WriteTimeout: time.Minute, IdleTimeout: 30 * time.Second}
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
	}()
	log.Info("serving status", "socket", path)
	if err := srv.Serve(netutil.LimitListener(lis, statusMaxConns)); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// runStatus prints the running driver's mounted volumes.
func runStatus(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("status", "Show the volumes the driver on this node has mounted (run it on the node, or with kubectl exec in the driver pod). Never shows secret values.", stdout)
	socket := fs.String("socket", defaultStatusSocket, "the driver's status socket (status.sock next to its CSI socket, see driver -status-socket)")
	output := fs.String("o", "table", "output: table or json")
	timeout := fs.Duration("timeout", 5*time.Second, "how long to wait for the driver")
	if code, ok := parse(fs, args, stderr); !ok {
		return code
	}
	if *output != "table" && *output != "json" {
		return fail(stderr, fs, 2, "-o must be table or json, not %q", *output)
	}
	path, err := unixsock.Parse(*socket)
	if err != nil {
		return fail(stderr, fs, 2, "-socket: %v", err)
	}
	vols, err := fetchStatus(path, *timeout)
	if err != nil {
		return fail(stderr, fs, 1, "%v", err)
	}
	if *output == "json" {
		out, err := json.MarshalIndent(vols, "", "  ")
		if err != nil {
			return fail(stderr, fs, 1, "%v", err)
		}
		_, _ = stdout.Write(append(escapeJSON(out), '\n'))
		return 0
	}
	printStatus(stdout, vols, time.Now())
	return 0
}

// statusClient talks HTTP to the driver's status socket at path.
func statusClient(path string, timeout time.Duration) *http.Client {
	return &http.Client{Timeout: timeout, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", path)
		},
	}}
}

func fetchStatus(path string, timeout time.Duration) ([]driver.VolumeStatus, error) {
	resp, err := statusClient(path, timeout).Get("http://secretfs/volumes")
	if err != nil {
		return nil, fmt.Errorf("asking the driver at %s: %w (is the driver running, and is this its -status-socket?)", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("the driver at %s answered %s", path, resp.Status)
	}
	var vols []driver.VolumeStatus
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(&vols); err != nil {
		return nil, fmt.Errorf("reading the driver's answer: %w", err)
	}
	return vols, nil
}

func printStatus(w io.Writer, vols []driver.VolumeStatus, now time.Time) {
	if len(vols) == 0 {
		fmt.Fprintln(w, "No volumes mounted.")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NAMESPACE\tPOD\tCLASS\tPROVIDER\tFILES\tBYTES\tLAST FETCH\tINTERVAL\tNEXT REFRESH\tLAST ERROR")
	for _, v := range vols {
		lastErr := strings.Join(strings.Fields(v.LastError), " ")
		if lastErr == "" {
			lastErr = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\t%s\t%s\n", dash(v.Namespace), dash(v.Pod), dash(v.Class), dash(v.Provider),
			v.Files, v.Bytes, ago(v.LastFetch, now), v.RotationInterval, until(v.NextRefresh, now), printable(lastErr))
	}
	tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return printable(s)
}

// Names, classes and error messages in the status come from tenants (a
// class name, a backend's error text), and status prints them on an
// operator's terminal, where an escape sequence could rewrite the screen,
// set the window title or answer back, a carriage return hide what came
// before, and a bidi override reorder what is shown.

// unprintable reports whether a terminal may act on r rather than show it:
// a C0 or C1 control, DEL, or a format character (bidi overrides and
// isolates, zero-width characters, tags), i.e. not unicode.IsPrint. An
// invalid UTF-8 byte decodes as utf8.RuneError with width 1, which callers
// check themselves.
func unprintable(r rune) bool { return !unicode.IsPrint(r) }

// printable is s as status shows it: as it is when every rune is
// printable, it is valid UTF-8 and it does not start with a double quote;
// otherwise Go-quoted (strconv.Quote escapes exactly the unprintable runes
// and the invalid bytes), so strconv.Unquote gives back s byte for byte and
// a quoted field is never mistaken for a plain one.
func printable(s string) string {
	if !strings.HasPrefix(s, `"`) && utf8.ValidString(s) && strings.IndexFunc(s, unprintable) < 0 {
		return s
	}
	return strconv.Quote(s)
}

// escapeJSON escapes, as \uXXXX (a surrogate pair above U+FFFF), the runes
// encoding/json writes raw although a terminal may act on them: DEL, C1
// controls and format characters (json already escapes C0 controls and
// replaces invalid UTF-8 with U+FFFD). Such runes occur only inside
// strings, so the result is the same JSON value.
func escapeJSON(b []byte) []byte {
	if bytes.IndexFunc(b, func(r rune) bool { return r != '\n' && unprintable(r) }) < 0 {
		return b
	}
	out := make([]byte, 0, len(b)+32)
	for len(b) > 0 {
		r, n := utf8.DecodeRune(b)
		switch {
		case r == utf8.RuneError && n == 1: // never from encoding/json
			out = append(out, `\ufffd`...)
		case r == '\n' || !unprintable(r):
			out = append(out, b[:n]...)
		case r > 0xFFFF:
			r1, r2 := utf16.EncodeRune(r)
			out = fmt.Appendf(out, `\u%04x\u%04x`, r1, r2)
		default:
			out = fmt.Appendf(out, `\u%04x`, r)
		}
		b = b[n:]
	}
	return out
}

func ago(t, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return now.Sub(t).Round(time.Second).String() + " ago"
}

func until(t, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	if d := t.Sub(now); d > 0 {
		return "in " + d.Round(time.Second).String()
	}
	return "due"
}
