package agent

import (
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// The command of `secretfs run` never gets the terminal secretfs was
// started from. That terminal is typically a root shell's: a command that
// runs as another user and holds a descriptor of it (or has it as its
// controlling terminal) could push input into the shell with TIOCSTI where
// dev.tty.legacy_tiocsti allows it, change its modes, or read what is typed
// after it. So, as sudo does with use_pty:
//
//   - the command always starts a session of its own (setsid; init.go), so
//     it never shares the caller's controlling terminal, and opening
//     /dev/tty gets it nothing of the caller's;
//   - when any of secretfs's standard descriptors is a terminal, secretfs
//     opens a new pseudo-terminal, hands its slave side to the later stages
//     in place of each descriptor that is a terminal (the command gets it as
//     its controlling terminal), and relays between the two: keystrokes
//     (the caller's terminal in raw mode while secretfs is in the
//     foreground, so Ctrl-C reaches the command once, through its own
//     terminal) and output, and the window size on SIGWINCH;
//   - the caller's terminal modes are restored when the command is done.
//
// Descriptors that are not terminals (pipes, files, sockets) are passed as
// they are.

// relay is the pseudo-terminal of one `secretfs run` and its copying.
type relay struct {
	master *os.File
	slave  *os.File // closed here once the second stage has it
	outer  int      // the caller's terminal: output goes there, its size is copied
	input  bool     // keystrokes are relayed (foreground, stdin a terminal)
	saved  *unix.Termios
	wake   [2]int // a write ends the input copy
	inDone chan struct{}
	out    chan struct{} // closed when the output copy has ended
}

// isTerminal reports whether fd is a terminal.
func isTerminal(fd int) bool {
	_, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	return err == nil
}

// newRelay opens a pseudo-terminal when one of fds 0-2 is a terminal (nil
// otherwise), owned by uid when it is >= 0, with the caller's modes and
// size; foreground says secretfs has the terminal's foreground, and then
// keystrokes are relayed.
func newRelay(uid int, foreground bool) (*relay, error) {
	r := &relay{outer: -1, wake: [2]int{-1, -1}}
	for _, fd := range []int{1, 2, 0} {
		if isTerminal(fd) {
			r.outer = fd
			break
		}
	}
	if r.outer < 0 {
		return nil, nil
	}
	var err error
	if r.master, r.slave, err = openPty(); err != nil {
		return nil, fmt.Errorf("opening a terminal for the command: %w", err)
	}
	if uid >= 0 {
		if err := unix.Fchown(int(r.slave.Fd()), uid, -1); err != nil {
			r.close()
			return nil, err
		}
	}
	if t, err := unix.IoctlGetTermios(r.outer, unix.TCGETS); err == nil {
		_ = unix.IoctlSetTermios(int(r.slave.Fd()), unix.TCSETS, t)
	}
	r.resize()
	r.input = foreground && isTerminal(0)
	if r.input {
		if err := unix.Pipe2(r.wake[:], unix.O_CLOEXEC); err != nil {
			r.close()
			return nil, err
		}
		if r.saved, err = makeRaw(0); err != nil {
			r.close()
			return nil, err
		}
	}
	return r, nil
}

// files are the standard descriptors of the second stage: the slave for
// each of secretfs's that is a terminal.
func (r *relay) files() [3]*os.File {
	f := [3]*os.File{os.Stdin, os.Stdout, os.Stderr}
	for fd := range f {
		if r != nil && isTerminal(fd) {
			f[fd] = r.slave
		}
	}
	return f
}

// start copies once the second stage holds the slave: this process's copy
// is closed, so the output copy ends (EIO) when the command's side is gone.
func (r *relay) start() {
	r.slave.Close()
	r.slave = nil
	r.out = make(chan struct{})
	go func() {
		defer close(r.out)
		_, _ = io.Copy([]*os.File{os.Stdin, os.Stdout, os.Stderr}[r.outer], r.master)
	}()
	if r.input {
		r.inDone = make(chan struct{})
		go r.copyInput()
	}
}

// copyInput copies keystrokes to the command's terminal until woken.
func (r *relay) copyInput() {
	defer close(r.inDone)
	buf := make([]byte, 4096)
	fds := []unix.PollFd{{Fd: 0, Events: unix.POLLIN}, {Fd: int32(r.wake[0]), Events: unix.POLLIN}}
	for {
		if _, err := unix.Poll(fds, -1); err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return
		}
		if fds[1].Revents != 0 {
			return
		}
		if fds[0].Revents == 0 {
			continue
		}
		n, err := unix.Read(0, buf)
		if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
			continue
		}
		if n <= 0 || err != nil {
			return
		}
		if _, err := r.master.Write(buf[:n]); err != nil {
			return
		}
	}
}

// resize gives the command's terminal the caller's window size (the
// kernel then signals SIGWINCH to the command).
func (r *relay) resize() {
	if ws, err := unix.IoctlGetWinsize(r.outer, unix.TIOCGWINSZ); err == nil {
		_ = unix.IoctlSetWinsize(int(r.master.Fd()), unix.TIOCSWINSZ, ws)
	}
}

// finish waits briefly for the command's last output, stops copying and
// restores the caller's terminal.
func (r *relay) finish() {
	if r.out != nil {
		select {
		case <-r.out:
		case <-time.After(2 * time.Second): // something still holds the slave
		}
	}
	r.close()
}

// close stops the copies, restores the terminal and closes everything.
func (r *relay) close() {
	if r.inDone != nil {
		_, _ = unix.Write(r.wake[1], []byte{0})
		<-r.inDone
		r.inDone = nil
	}
	if r.saved != nil {
		_ = unix.IoctlSetTermios(0, unix.TCSETSW, r.saved)
		r.saved = nil
	}
	for _, f := range []*os.File{r.slave, r.master} {
		if f != nil {
			f.Close()
		}
	}
	for i, fd := range r.wake {
		if fd >= 0 {
			unix.Close(fd)
			r.wake[i] = -1
		}
	}
}

// openPty opens a new pseudo-terminal pair (posix_openpt, unlockpt, and
// the slave through TIOCGPTPEER, which needs no path).
func openPty() (master, slave *os.File, err error) {
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		m.Close()
		return nil, nil, err
	}
	var sfd int
	var serr error
	rc, err := m.SyscallConn()
	if err != nil {
		m.Close()
		return nil, nil, err
	}
	if err := rc.Control(func(fd uintptr) {
		r, _, en := unix.Syscall(unix.SYS_IOCTL, fd, unix.TIOCGPTPEER, uintptr(unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC))
		sfd, serr = int(r), nil
		if en != 0 {
			serr = en
		}
	}); err != nil {
		serr = err
	}
	if serr != nil {
		m.Close()
		return nil, nil, serr
	}
	return m, os.NewFile(uintptr(sfd), "pty"), nil
}

// makeRaw puts the terminal fd in raw mode (cfmakeraw) and returns its
// modes before.
func makeRaw(fd int) (*unix.Termios, error) {
	t, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return nil, err
	}
	saved := *t
	t.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	t.Oflag &^= unix.OPOST
	t.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	t.Cflag &^= unix.CSIZE | unix.PARENB
	t.Cflag |= unix.CS8
	t.Cc[unix.VMIN], t.Cc[unix.VTIME] = 1, 0
	if err := unix.IoctlSetTermios(fd, unix.TCSETSW, t); err != nil {
		return nil, err
	}
	return &saved, nil
}
