package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// probeEnv makes the test binary the probe of TestRunCommandHasNoWayIntoTheTerminal:
// it reports, as the command, what it can do to the terminal it was run from.
const probeEnv = "SECRETFS_AGENT_TEST_PROBE"

type probeReport struct {
	UID, Sid, Pgid int
	TTYNr          uint64    // field 7 of /proc/self/stat: the controlling terminal
	FdRdev         [3]uint64 // the device of fds 0-2 when they are character devices
	StiFds         [3]string // ioctl(TIOCSTI) on fds 0-2
	OpenCaller     string    // opening the caller's terminal by path
	StiCaller      string    // ioctl(TIOCSTI) on that descriptor
	OpenDevTTY     string    // opening /dev/tty, the controlling terminal
	CallerFd3      bool      // fd 3 is the caller's terminal (leaked to it)
}

func errString(err error) string {
	if err == nil {
		return "ok"
	}
	var en syscall.Errno
	if errors.As(err, &en) {
		return unix.ErrnoName(en)
	}
	return err.Error()
}

// tiocsti pushes one byte into the input of the terminal fd.
func tiocsti(fd int) error {
	b := byte(' ')
	if _, _, en := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TIOCSTI, uintptr(unsafe.Pointer(&b))); en != 0 {
		return en
	}
	return nil
}

func ttyProbe() int {
	r := probeReport{UID: os.Getuid(), Pgid: unix.Getpgrp()}
	r.Sid, _ = unix.Getsid(0)
	if stat, err := os.ReadFile("/proc/self/stat"); err == nil {
		// pid (comm) state ppid pgrp session tty_nr ...
		f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
		r.TTYNr, _ = strconv.ParseUint(f[4], 10, 64)
	}
	for fd := range 3 {
		var st unix.Stat_t
		if unix.Fstat(fd, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFCHR {
			r.FdRdev[fd] = st.Rdev
		}
		r.StiFds[fd] = errString(tiocsti(fd))
	}
	fd, err := unix.Open(os.Getenv("CALLER_TTY"), unix.O_RDWR|unix.O_NOCTTY, 0)
	r.OpenCaller = errString(err)
	if err == nil {
		r.StiCaller = errString(tiocsti(fd))
		unix.Close(fd)
	}
	if fd, err := unix.Open("/dev/tty", unix.O_RDWR|unix.O_NOCTTY, 0); err == nil {
		r.OpenDevTTY = "ok"
		unix.Close(fd)
	} else {
		r.OpenDevTTY = errString(err)
	}
	var st3 unix.Stat_t
	r.CallerFd3 = unix.Fstat(3, &st3) == nil && strconv.FormatUint(st3.Rdev, 10) == os.Getenv("CALLER_RDEV")
	b, _ := json.Marshal(r)
	// Written under another name and renamed: the test waits for "probe"
	// to exist, and must never read it half written.
	tmp := filepath.Join(os.Getenv("OUT"), ".probe")
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return 1
	}
	if err := os.Rename(tmp, filepath.Join(os.Getenv("OUT"), "probe")); err != nil {
		return 1
	}
	return 0
}

// openTestPty opens a pseudo-terminal pair: the terminal of a root shell
// in the test.
func openTestPty(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetUint32(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	s, err := os.OpenFile("/dev/pts/"+strconv.Itoa(int(n)), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close(); s.Close() })
	return m, s
}

// `secretfs run --uid` from a root shell's terminal: the command, running
// as another user, is in a session of its own whose controlling terminal
// (if any) is not the caller's, holds no descriptor of the caller's
// terminal, and cannot push input into it (TIOCSTI fails with EPERM even
// when it opens the terminal: it is not its controlling terminal and it
// lacks CAP_SYS_ADMIN, whatever dev.tty.legacy_tiocsti says). Interactive
// use still works: typed input, window size, Ctrl-C, the exit code, and
// the caller's terminal modes are restored.
func TestRunCommandHasNoWayIntoTheTerminal(t *testing.T) {
	master, slave := openTestPty(t)
	if err := slave.Chmod(0o666); err != nil { // let the command try its best
		t.Fatal(err)
	}
	e := newRunEnv(t, "none", `SECRETFS_AGENT_TEST_PROBE=1 "$PROBE"; echo ready; read line; echo "got:$line"; read line; echo "size:$(stty size)"; while :; do sleep 0.05; done`)
	probe := filepath.Join(e.dir, "probe-bin")
	copyExecutable(t, probe)
	e.hc.UID, e.hc.GID = attacker, attacker
	before, err := unix.IoctlGetTermios(int(slave.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	var out syncBuffer
	go io.Copy(&out, master) // ends with EIO when the test closes the pair
	raw, err := json.Marshal(e.hc)
	if err != nil {
		t.Fatal(err)
	}
	e.cmd = exec.Command(os.Args[0], "-test.run=^$")
	e.cmd.Env = append(os.Environ(), helperEnv+"="+string(raw), "OUT="+e.out, "PROBE="+probe, "CALLER_TTY="+slave.Name())
	e.cmd.Stdin, e.cmd.Stdout, e.cmd.Stderr = slave, slave, slave
	// The caller: a session of its own on the terminal, in the foreground.
	e.cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := e.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	e.exited = make(chan struct{})
	go func() { e.exitErr = e.cmd.Wait(); close(e.exited) }()
	t.Cleanup(func() {
		_ = e.cmd.Process.Kill()
		<-e.exited
		if t.Failed() {
			t.Logf("terminal output:\n%q", out.String())
		}
	})
	e.waitFor("the probe", func() bool { return fileExists(filepath.Join(e.out, "probe")) })
	var r probeReport
	if err := json.Unmarshal([]byte(e.outFile("probe")), &r); err != nil {
		t.Fatal(err)
	}
	var callerTTY unix.Stat_t
	if err := unix.Fstat(int(slave.Fd()), &callerTTY); err != nil {
		t.Fatal(err)
	}
	t.Logf("probe: %+v (caller's session %d, terminal %#x)", r, e.cmd.Process.Pid, callerTTY.Rdev)
	if r.UID != attacker {
		t.Errorf("the command runs as uid %d, want %d", r.UID, attacker)
	}
	// The caller's session leader is outside the command's pid namespace,
	// where getsid reports it as 0.
	if r.Sid == 0 || r.Sid == e.cmd.Process.Pid {
		t.Errorf("the command is in the caller's session (sid %d)", r.Sid)
	}
	if r.TTYNr == callerTTY.Rdev {
		t.Error("the caller's terminal is the command's controlling terminal")
	}
	for fd, rdev := range r.FdRdev {
		if rdev == callerTTY.Rdev {
			t.Errorf("the command's fd %d is the caller's terminal", fd)
		}
		if r.StiFds[fd] == "ok" && rdev == callerTTY.Rdev {
			t.Errorf("TIOCSTI on fd %d worked", fd)
		}
	}
	if r.StiCaller != "EPERM" {
		t.Errorf("TIOCSTI on the caller's terminal, opened by the command (%s): %s, want EPERM", r.OpenCaller, r.StiCaller)
	}

	// Interactive use: input, window size, Ctrl-C.
	waitOutput := func(s string) {
		t.Helper()
		e.waitFor(fmt.Sprintf("%q on the terminal", s), func() bool { return strings.Contains(out.String(), s) })
	}
	waitOutput("ready")
	master.WriteString("hello\r")
	waitOutput("got:hello")
	if err := unix.IoctlSetWinsize(int(master.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: 33, Col: 99}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // SIGWINCH reaches secretfs, which passes the size on
	master.WriteString("x\r")
	waitOutput("size:33 99")
	master.WriteString("\x03")
	if code := e.wait(); code != 128+int(syscall.SIGINT) {
		t.Errorf("exit code %d after Ctrl-C, want %d", code, 128+int(syscall.SIGINT))
	}
	after, err := unix.IoctlGetTermios(int(slave.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	if after.Lflag != before.Lflag || after.Iflag != before.Iflag || after.Oflag != before.Oflag {
		t.Errorf("terminal modes not restored: lflag %#x iflag %#x oflag %#x, were %#x %#x %#x",
			after.Lflag, after.Iflag, after.Oflag, before.Lflag, before.Iflag, before.Oflag)
	}
}

// copyExecutable copies this test binary to path, where every user can run it.
func copyExecutable(t *testing.T, path string) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o755); err != nil {
		t.Fatal(err)
	}
}

// Without a terminal on its standard descriptors, secretfs run still keeps
// the command out of the caller's session: started from a root shell with
// its output redirected, the command cannot reach the shell's terminal
// through /dev/tty, nor through a descriptor the caller leaked to secretfs.
func TestRunCommandWithoutTerminalHasNoControllingTerminal(t *testing.T) {
	_, slave := openTestPty(t)
	var callerTTY unix.Stat_t
	if err := unix.Fstat(int(slave.Fd()), &callerTTY); err != nil {
		t.Fatal(err)
	}
	e := newRunEnv(t, "none", `SECRETFS_AGENT_TEST_PROBE=1 "$PROBE"`)
	probe := filepath.Join(e.dir, "probe-bin")
	copyExecutable(t, probe)
	e.hc.UID, e.hc.GID = attacker, attacker
	raw, err := json.Marshal(e.hc)
	if err != nil {
		t.Fatal(err)
	}
	e.cmd = exec.Command(os.Args[0], "-test.run=^$")
	e.cmd.Env = append(os.Environ(), helperEnv+"="+string(raw), "OUT="+e.out, "PROBE="+probe,
		"CALLER_TTY=/nonexistent", "CALLER_RDEV="+strconv.FormatUint(callerTTY.Rdev, 10))
	e.cmd.Stdout, e.cmd.Stderr = &e.log, &e.log
	// The caller's session has the terminal as its controlling terminal,
	// and leaks it as fd 3.
	e.cmd.ExtraFiles = []*os.File{slave}
	e.cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 3}
	if err := e.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	e.exited = make(chan struct{})
	go func() { e.exitErr = e.cmd.Wait(); close(e.exited) }()
	if code := e.wait(); code != 0 {
		t.Fatalf("exit code %d; log:\n%s", code, e.log.String())
	}
	var r probeReport
	if err := json.Unmarshal([]byte(e.outFile("probe")), &r); err != nil {
		t.Fatal(err)
	}
	t.Logf("probe: %+v", r)
	if r.Sid == 0 || r.TTYNr != 0 {
		t.Errorf("the command is in the caller's session (sid %d) or has a controlling terminal (%#x)", r.Sid, r.TTYNr)
	}
	if r.OpenDevTTY != "ENXIO" {
		t.Errorf("opening /dev/tty: %s, want ENXIO", r.OpenDevTTY)
	}
	if r.CallerFd3 {
		t.Error("the command inherited the caller's terminal as fd 3")
	}
}
