package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The credential protocol of systemd (systemd.exec(5), LoadCredential=):
// for LoadCredential=ID:/path/to/socket, the service manager, starting a
// unit, makes an AF_UNIX stream socket, binds it to the abstract address
// "\0<random hex>/unit/<unit name>/<ID>", connects to the socket, shuts its
// sending side down, and reads the credential until EOF. It sends nothing.
//
// The server learns unit and ID from the peer's address (getpeername(2)),
// serves the file of the volume whose name is the ID, and closes. Refused
// or unknown, it closes without data: systemd then gives the unit an empty
// credential (an empty stream is a valid one), and the server logs unit and
// ID, never a value.
//
// The unit name is what the connecting process bound, which anyone allowed
// to connect can choose: the socket is root's (0600), so the allow rules
// keep one unit's credential from another unit by mistake, not from root.

// CredentialSizeMax is systemd's cap on one credential (CREDENTIAL_SIZE_MAX,
// 1 MiB): a larger file is refused.
const CredentialSizeMax = 1 << 20

// CredentialLimits bound what connecting processes and the class can make
// the server hold.
type CredentialLimits struct {
	// MaxConnections is how many credentials are sent at once.
	MaxConnections int
	// MaxOpen is how many connections are held at once, sending or waiting
	// for one of MaxConnections; more are closed at once (and logged).
	MaxOpen int
	// Timeout bounds a connection's wait for its turn, and then its
	// sending: a reader that does not take the credential in time gets it
	// cut short (logged: systemd reads at once).
	Timeout time.Duration
	// MaxSize is the largest credential served (at most CredentialSizeMax).
	MaxSize int64
}

// DefaultCredentialLimits are the limits of `secretfs credentials`.
var DefaultCredentialLimits = CredentialLimits{MaxConnections: 16, MaxOpen: 64, Timeout: 10 * time.Second, MaxSize: CredentialSizeMax}

// Check reports limits that cannot work.
func (l *CredentialLimits) Check() error {
	switch {
	case l.MaxConnections <= 0 || l.MaxOpen < l.MaxConnections:
		return fmt.Errorf("credential limits: want 0 < connections (%d) <= open connections (%d)", l.MaxConnections, l.MaxOpen)
	case l.Timeout <= 0:
		return errors.New("credential limits: the timeout must be positive")
	case l.MaxSize <= 0 || l.MaxSize > CredentialSizeMax:
		return fmt.Errorf("credential limits: the size cap must be in 1..%d bytes (systemd's)", CredentialSizeMax)
	}
	return nil
}

// CredentialRules say which units get which credential: Units[ID] lists the
// units (exact names, or path.Match patterns such as app@*.service) that
// get ID. An ID without a rule goes to every unit, unless Only is set.
type CredentialRules struct {
	Units map[string][]string
	Only  bool
}

// Add parses ID=unit[,unit...] into r.
func (r *CredentialRules) Add(s string) error {
	id, list, ok := strings.Cut(s, "=")
	if !ok || list == "" {
		return fmt.Errorf("%.80q is not ID=unit[,unit...]", s)
	}
	if !validCredentialID(id) {
		return fmt.Errorf("%.80q is not a credential ID (a file name of the volume, not starting with ..)", id)
	}
	if r.Units == nil {
		r.Units = map[string][]string{}
	}
	for u := range strings.SplitSeq(list, ",") {
		if _, err := path.Match(strings.ReplaceAll(u, `\`, `\\`), ""); err != nil || !validUnitName(strings.ReplaceAll(strings.ReplaceAll(u, "*", "x"), "?", "x")) {
			return fmt.Errorf("%.80q is not a unit name or pattern (e.g. app.service, app@*.service)", u)
		}
		r.Units[id] = append(r.Units[id], u)
	}
	return nil
}

// allows reports whether unit may have credential id.
func (r *CredentialRules) allows(unit, id string) bool {
	units, ok := r.Units[id]
	if !ok {
		return !r.Only
	}
	for _, u := range units {
		// A backslash is the unit name's own (systemd-escape writes "-" as
		// \x2d), never path.Match's escape: unit names have no * ? [ to
		// escape, and read as an escape it would serve "app@webx2d1.service"
		// the credential of "app@web\x2d1.service" and refuse the real one.
		if m, _ := path.Match(strings.ReplaceAll(u, `\`, `\\`), unit); m {
			return true
		}
	}
	return false
}

// ParseCredentialPeer parses the peer address of a connection from systemd:
// raw is sun_path as getpeername(2) returns it (addrlen bytes, the leading
// NUL of an abstract address included). It returns the unit and the
// credential ID.
func ParseCredentialPeer(raw []byte) (unit, id string, err error) {
	if len(raw) == 0 || raw[0] != 0 {
		return "", "", errors.New("not an abstract address")
	}
	random, rest, ok := bytes.Cut(raw[1:], []byte("/"))
	if !ok || len(random) == 0 || len(random) > 32 || !alnum(random) {
		return "", "", errors.New("no random part before /unit/")
	}
	rest, ok = bytes.CutPrefix(rest, []byte("unit/"))
	if !ok {
		return "", "", errors.New("no /unit/ after the random part")
	}
	u, i, ok := bytes.Cut(rest, []byte("/"))
	if !ok || !validUnitName(string(u)) {
		return "", "", errors.New("no valid unit name")
	}
	if !validCredentialID(string(i)) {
		return "", "", errors.New("no valid credential ID")
	}
	return string(u), string(i), nil
}

func alnum(b []byte) bool {
	for _, c := range b {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			return false
		}
	}
	return true
}

// validUnitName: systemd's unit name characters (letters, digits, ":-_.\@"),
// at most 255 bytes, with a type suffix.
func validUnitName(s string) bool {
	if len(s) == 0 || len(s) > 255 || s[0] == '.' || !strings.Contains(s, ".") {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || strings.IndexByte(`:-_.\@`, c) >= 0) {
			return false
		}
	}
	return true
}

// validCredentialID: a file name (systemd's credential_name_valid) of
// printable ASCII, and not one of the atomic writer's own names (..data,
// ..<timestamp>).
func validCredentialID(s string) bool {
	if len(s) == 0 || len(s) > 255 || s == "." || strings.HasPrefix(s, "..") {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e || s[i] == '/' {
			return false
		}
	}
	return true
}

// credServer serves the files of root (the volume's tmpfs) by the protocol
// above.
type credServer struct {
	root  *os.Root
	rules CredentialRules
	lim   CredentialLimits
	log   *slog.Logger
	slots chan struct{}
	open  atomic.Int64
	wg    sync.WaitGroup
	bufs  sync.Pool
}

func newCredServer(root *os.Root, rules CredentialRules, lim CredentialLimits, log *slog.Logger) *credServer {
	s := &credServer{root: root, rules: rules, lim: lim, log: log, slots: make(chan struct{}, lim.MaxConnections)}
	s.bufs.New = func() any { b := make([]byte, 32<<10); return &b }
	return s
}

// serve accepts until ctx is done, then closes ln and waits for the
// connections in flight (each bounded by the timeout).
func (s *credServer) serve(ctx context.Context, ln *net.UnixListener) error {
	go func() { <-ctx.Done(); ln.Close() }()
	defer s.wg.Wait()
	for {
		c, err := ln.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			// EMFILE and the like: wait, do not spin.
			s.log.Warn("accepting a connection", "error", err)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		if s.open.Add(1) > int64(s.lim.MaxOpen) {
			s.open.Add(-1)
			c.Close()
			s.log.Warn("credential connection refused: too many open connections", "max_open", s.lim.MaxOpen)
			continue
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer s.open.Add(-1)
			defer c.Close()
			s.handle(ctx, c)
		}()
	}
}

// handle serves one connection. Nothing is read from it.
func (s *credServer) handle(ctx context.Context, c *net.UnixConn) {
	raw, err := peerName(c)
	if err != nil {
		s.log.Warn("credential connection refused: no peer address", "error", err)
		return
	}
	unit, id, err := ParseCredentialPeer(raw)
	if err != nil {
		s.log.Warn("credential connection refused: the peer address is not systemd's", "address", fmt.Sprintf("%.120q", raw), "error", err)
		return
	}
	refuse := func(reason string, args ...any) {
		s.log.Warn("credential refused", append([]any{"unit", unit, "id", id, "reason", reason}, args...)...)
	}
	if !s.rules.allows(unit, id) {
		refuse("the unit is not allowed this credential (--allow)")
		return
	}
	wait := time.NewTimer(s.lim.Timeout)
	defer wait.Stop()
	select {
	case s.slots <- struct{}{}:
		defer func() { <-s.slots }()
	case <-wait.C:
		refuse("waited too long for a turn", "timeout", s.lim.Timeout, "max_connections", s.lim.MaxConnections)
		return
	case <-ctx.Done():
		return
	}
	f, err := s.root.Open(id)
	if errors.Is(err, os.ErrNotExist) {
		refuse("the volume has no file of that name")
		return
	}
	if err != nil {
		refuse("cannot open the file", "error", err)
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	switch {
	case err != nil:
		refuse("cannot stat the file", "error", err)
		return
	case !fi.Mode().IsRegular():
		refuse("not a regular file of the volume")
		return
	case fi.Size() > s.lim.MaxSize:
		refuse("larger than the credential size cap", "bytes", fi.Size(), "max_bytes", s.lim.MaxSize)
		return
	}
	if err := c.SetWriteDeadline(time.Now().Add(s.lim.Timeout)); err != nil {
		refuse("setting the write deadline", "error", err)
		return
	}
	buf := s.bufs.Get().(*[]byte)
	defer s.bufs.Put(buf)
	// A plain writer: the copy goes through buf, under the deadline.
	n, err := io.CopyBuffer(struct{ io.Writer }{c}, io.LimitReader(f, s.lim.MaxSize), *buf)
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		s.log.Warn("credential cut short: the reader did not take it within the timeout", "unit", unit, "id", id,
			"sent_bytes", n, "bytes", fi.Size(), "timeout", s.lim.Timeout)
	case err != nil:
		s.log.Warn("credential not sent", "unit", unit, "id", id, "sent_bytes", n, "bytes", fi.Size(), "error", err)
	default:
		s.log.Info("credential served", "unit", unit, "id", id, "bytes", n)
	}
}

// peerName is the peer's address as getpeername(2) returns it: sun_path,
// addrlen bytes of it, so an abstract address keeps its leading NUL.
func peerName(c *net.UnixConn) ([]byte, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var raw []byte
	var serr error
	err = rc.Control(func(fd uintptr) {
		var sa unix.RawSockaddrUnix
		l := uint32(unsafe.Sizeof(sa))
		_, _, e := unix.Syscall(unix.SYS_GETPEERNAME, fd, uintptr(unsafe.Pointer(&sa)), uintptr(unsafe.Pointer(&l)))
		if e != 0 {
			serr = e
			return
		}
		off := uint32(unsafe.Offsetof(sa.Path))
		if l < off || l > uint32(unsafe.Sizeof(sa)) {
			serr = fmt.Errorf("peer address length %d", l)
			return
		}
		raw = make([]byte, l-off)
		for i := range raw {
			raw[i] = byte(sa.Path[i])
		}
	})
	if err == nil {
		err = serr
	}
	return raw, err
}
