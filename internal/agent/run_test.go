package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/secretfs/secretfs/driver"
	"github.com/secretfs/secretfs/provider"
	"github.com/secretfs/secretfs/provider/fake"
)

// helperEnv makes the test binary act as `secretfs run` with the JSON
// helperConfig it holds (TestMain), so the tests run the real two stages:
// a re-exec into a new mount namespace, the tmpfs, the command.
const helperEnv = "SECRETFS_AGENT_TEST_RUN"

type helperConfig struct {
	ClassFile, DataDir, Target string
	Interval                   time.Duration
	UID, GID                   int
	Env                        []EnvVar
	OnChange                   string
	Mask, MaskBase64           bool
	Command                    []string
}

func TestMain(m *testing.M) {
	if os.Getenv(probeEnv) != "" {
		os.Exit(ttyProbe())
	}
	if raw := os.Getenv(helperEnv); raw != "" {
		os.Exit(runHelper(raw))
	}
	if raw := os.Getenv(credHelperEnv); raw != "" {
		os.Exit(credHelper(raw))
	}
	code := m.Run()
	stopAPIServer()
	os.Exit(code)
}

func runHelper(raw string) int {
	var hc helperConfig
	if err := json.Unmarshal([]byte(raw), &hc); err != nil {
		fmt.Fprintln(os.Stderr, "helper config:", err)
		return 1
	}
	oc, err := ParseOnChange(hc.OnChange)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	backend := fake.New(fake.Options{DataDir: hc.DataDir})
	owner := driver.LocalOwner
	if hc.UID >= 0 {
		owner.UID, owner.GID = hc.UID, hc.GID
	}
	code, err := RunCommand(context.Background(), RunConfig{
		ClassFile: hc.ClassFile, Target: hc.Target, Interval: hc.Interval,
		UID: hc.UID, GID: hc.GID, Owner: owner, Env: hc.Env, OnChange: oc, Command: hc.Command,
		Mask: hc.Mask, MaskBase64: hc.MaskBase64,
		StopTimeout: 5 * time.Second,
		Providers:   func(string) (provider.Provider, error) { return backend, nil },
		Logger:      slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "run failed:", err)
		return max(code, 1)
	}
	return code
}

const testRunClass = `apiVersion: secrets-store.csi.x-k8s.io/v1
kind: SecretProviderClass
metadata:
  name: local
  namespace: team-a
spec:
  provider: fake
  parameters:
    objects: |
      - objectName: token
        filePermission: "0440"
      - objectName: conf
        objectAlias: etc/app.conf
        value: "a=1"
`

// runEnv is one `secretfs run` under test: its files, its process and
// its log.
type runEnv struct {
	t       *testing.T
	dir     string // world-readable scratch: class, data, the command's output
	out     string // where the command writes (world-writable)
	target  string
	hc      helperConfig
	cmd     *exec.Cmd
	log     syncBuffer
	stdout  *syncBuffer // when set, the run's stdout (the command's), apart from the log
	exited  chan struct{}
	exitErr error
}

func newRunEnv(t *testing.T, onChange string, script string) *runEnv {
	t.Helper()
	requireRoot(t)
	dir, err := os.MkdirTemp("", "secretfs-run-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	e := &runEnv{t: t, dir: dir, out: filepath.Join(dir, "out"), target: filepath.Join(dir, "mnt", "secrets")}
	for _, d := range []string{e.out, filepath.Join(dir, "data", "team-a")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{dir, e.out} { // the command may run as nobody
		if err := os.Chmod(d, 0o777); err != nil {
			t.Fatal(err)
		}
	}
	e.hc = helperConfig{
		ClassFile: filepath.Join(dir, "class.yaml"), DataDir: filepath.Join(dir, "data"), Target: e.target,
		Interval: 40 * time.Millisecond, UID: -1, GID: -1, OnChange: onChange,
		Command: []string{"/bin/sh", "-c", script},
	}
	e.writeClass(testRunClass)
	e.setToken("first")
	return e
}

func (e *runEnv) writeClass(s string) {
	e.t.Helper()
	tmp := e.hc.ClassFile + ".tmp"
	if err := os.WriteFile(tmp, []byte(s), 0o644); err != nil {
		e.t.Fatal(err)
	}
	if err := os.Rename(tmp, e.hc.ClassFile); err != nil {
		e.t.Fatal(err)
	}
}

// setToken changes the backend's value of the token object.
func (e *runEnv) setToken(v string) {
	e.t.Helper()
	p := filepath.Join(e.hc.DataDir, "team-a", "token")
	if err := os.WriteFile(p+".tmp", []byte(v), 0o600); err != nil {
		e.t.Fatal(err)
	}
	if err := os.Rename(p+".tmp", p); err != nil {
		e.t.Fatal(err)
	}
}

func (e *runEnv) start() {
	e.t.Helper()
	raw, err := json.Marshal(e.hc)
	if err != nil {
		e.t.Fatal(err)
	}
	e.cmd = exec.Command(os.Args[0], "-test.run=^$")
	e.cmd.Env = append(os.Environ(), helperEnv+"="+string(raw), "OUT="+e.out)
	e.cmd.Stdout, e.cmd.Stderr = &e.log, &e.log
	if e.stdout != nil {
		e.cmd.Stdout = e.stdout
	}
	if err := e.cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	e.exited = make(chan struct{})
	go func() {
		e.exitErr = e.cmd.Wait()
		close(e.exited)
	}()
	e.t.Cleanup(func() {
		_ = e.cmd.Process.Kill()
		<-e.exited
		if e.t.Failed() {
			e.t.Logf("secretfs run log:\n%s", e.log.String())
		}
	})
}

// wait waits for the run to exit and returns its exit code.
func (e *runEnv) wait() int {
	e.t.Helper()
	select {
	case <-e.exited:
	case <-time.After(60 * time.Second):
		e.t.Fatalf("secretfs run did not exit; log:\n%s", e.log.String())
	}
	return e.cmd.ProcessState.ExitCode()
}

// waitFor waits for cond, failing early when the run exits.
func (e *runEnv) waitFor(what string, cond func() bool) {
	e.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		select {
		case <-e.exited:
			if cond() {
				return
			}
			e.t.Fatalf("secretfs run exited (%v) while waiting for %s; log:\n%s", e.exitErr, what, e.log.String())
		default:
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("timed out waiting for %s; log:\n%s", what, e.log.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (e *runEnv) outFile(name string) string {
	b, _ := os.ReadFile(filepath.Join(e.out, name))
	return string(b)
}

// logCount counts log lines holding s.
func (e *runEnv) logCount(s string) int { return strings.Count(e.log.String(), s) }

// assertNotOnHost checks from this (the host's) mount namespace that the
// target is in no mount table line and shows none of the files.
func (e *runEnv) assertNotOnHost() {
	e.t.Helper()
	info, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		e.t.Fatal(err)
	}
	if bytes.Contains(info, []byte(e.target)) {
		e.t.Fatalf("the host's mount table shows the target:\n%s", grepLines(info, e.target))
	}
	if _, err := os.ReadFile(filepath.Join(e.target, "token")); err == nil {
		e.t.Fatal("the host can read the token at the target")
	}
}

func grepLines(b []byte, s string) string {
	var out []string
	for l := range strings.SplitSeq(string(b), "\n") {
		if strings.Contains(l, s) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// children returns the pids whose parent is pid (started by any thread).
func children(pid int) []int {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	var out []int
	for _, task := range tasks {
		b, _ := os.ReadFile(task)
		for f := range strings.FieldsSeq(string(b)) {
			if n, err := strconv.Atoi(f); err == nil {
				out = append(out, n)
			}
		}
	}
	return out
}

// processesIn lists the processes whose mount namespace is ns.
func processesIn(ns string) []string {
	entries, _ := os.ReadDir("/proc")
	var out []string
	for _, en := range entries {
		if _, err := strconv.Atoi(en.Name()); err != nil {
			continue
		}
		if l, err := os.Readlink("/proc/" + en.Name() + "/ns/mnt"); err == nil && l == ns {
			out = append(out, en.Name())
		}
	}
	return out
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// The command, as nobody, reads its files; the host never sees the mount;
// the exit code passes through; nothing is left afterwards.
func TestRunPrivateMount(t *testing.T) {
	e := newRunEnv(t, "none", `cat "$SECRETFS_TARGET/token" > "$OUT/seen" && cat "$SECRETFS_TARGET/etc/app.conf" >> "$OUT/seen" &&
id -u > "$OUT/id" && : > "$OUT/ready" && while [ ! -e "$OUT/stop" ]; do sleep 0.01; done; exit 7`)
	e.hc.UID, e.hc.GID = 65534, 65534
	e.start()
	e.waitFor("the command to read its files", func() bool { return fileExists(filepath.Join(e.out, "ready")) })
	if got := e.outFile("seen"); got != "firsta=1" {
		t.Fatalf("the command read %q, want the token and the conf", got)
	}
	if got := strings.TrimSpace(e.outFile("id")); got != "65534" {
		t.Fatalf("the command ran as uid %s, want 65534", got)
	}
	e.assertNotOnHost()
	// The command's own view has the tmpfs (read through its /proc entry).
	inner := children(e.cmd.Process.Pid)
	if len(inner) != 1 {
		t.Fatalf("secretfs run has children %v, want the second stage only", inner)
	}
	if pid1 := children(inner[0]); len(pid1) != 1 || !strings.HasSuffix(grepLines([]byte(readFile(fmt.Sprintf("/proc/%d/status", pid1[0]))), "NSpid:"), "\t1") {
		t.Fatalf("the command is not under a pid 1 of its own pid namespace (children of the agent: %v)", pid1)
	}
	info, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", inner[0]))
	if err != nil || !bytes.Contains(info, []byte(e.target+" ")) {
		t.Fatalf("the private namespace has no mount at the target (%v)", err)
	}
	if err := os.WriteFile(filepath.Join(e.out, "stop"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if code := e.wait(); code != 7 {
		t.Fatalf("exit code %d, want the command's 7", code)
	}
	if _, err := os.Lstat(e.target); !os.IsNotExist(err) {
		t.Fatalf("target left behind: %v", err)
	}
	e.assertNotOnHost()
}

func fileExists(p string) bool { _, err := os.Lstat(p); return err == nil }

func readFile(p string) string { b, _ := os.ReadFile(p); return string(b) }

// Each change of the files reaches the command as exactly one SIGHUP; a
// failed refresh keeps the files and sends nothing; a SIGTERM to secretfs
// reaches the command, whose death by it is the exit code.
func TestRunSignalOncePerChange(t *testing.T) {
	e := newRunEnv(t, "signal:HUP", `trap 'cat "$SECRETFS_TARGET/token" >> "$OUT/hups"; echo >> "$OUT/hups"' HUP
trap 'exit 143' TERM
: > "$OUT/ready"; while :; do sleep 0.01; done`)
	e.start()
	e.waitFor("the command", func() bool { return fileExists(filepath.Join(e.out, "ready")) })
	hups := func() []string { return strings.Fields(e.outFile("hups")) }
	// Unchanged refreshes: the driver fetched and found the same content.
	const unchanged = "volume refreshed, unchanged"
	for i, value := range []string{"second", "third"} {
		e.setToken(value)
		e.waitFor("a SIGHUP after the change to "+value, func() bool { return len(hups()) > i })
		n := e.logCount(unchanged)
		e.waitFor("three unchanged refreshes", func() bool { return e.logCount(unchanged) >= n+3 })
		if got := hups(); len(got) != i+1 || got[i] != value {
			t.Fatalf("after change %d the command saw SIGHUPs with files %q, want one per change", i+1, got)
		}
	}

	// A broken class: refreshes fail, the files stay, no signal.
	e.writeClass(strings.Replace(testRunClass, "provider: fake", "provider: [", 1))
	const failed = "refresh failed; keeping the last good content"
	e.waitFor("three failed refreshes", func() bool { return e.logCount(failed) >= 3 })
	if got := hups(); len(got) != 2 {
		t.Fatalf("failed refreshes signalled the command: %q", got)
	}
	inner := children(e.cmd.Process.Pid)
	if len(inner) != 1 {
		t.Fatalf("children %v", inner)
	}
	// The command's view, through the second stage's root.
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/root%s/token", inner[0], e.target)); err != nil || string(b) != "third" {
		t.Fatalf("after failed refreshes the token reads %q (%v), want the last good %q", b, err, "third")
	}
	e.assertNotOnHost()

	if err := e.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := e.wait(); code != 143 {
		t.Fatalf("exit code %d, want 143 from the command's TERM trap", code)
	}
}

// restart: a change stops the command and starts it again with the new
// files and the new --env value.
func TestRunRestartOnChange(t *testing.T) {
	e := newRunEnv(t, "restart", `echo "$TOKEN" >> "$OUT/starts"; trap 'exit 0' TERM; while :; do sleep 0.01; done`)
	e.hc.Env = []EnvVar{{Name: "TOKEN", File: "token"}}
	e.start()
	starts := func() []string { return strings.Fields(e.outFile("starts")) }
	e.waitFor("the first start", func() bool { return len(starts()) == 1 })
	e.setToken("second")
	e.waitFor("a restart", func() bool { return len(starts()) == 2 })
	if got := starts(); got[0] != "first" || got[1] != "second" {
		t.Fatalf("starts saw TOKEN %q, want first then second", got)
	}
	n := e.logCount("volume refreshed, unchanged")
	e.waitFor("three unchanged refreshes", func() bool { return e.logCount("volume refreshed, unchanged") >= n+3 })
	if got := starts(); len(got) != 2 {
		t.Fatalf("starts %q, want exactly one restart per change", got)
	}
	_ = e.cmd.Process.Signal(syscall.SIGTERM)
	if code := e.wait(); code != 0 {
		t.Fatalf("exit code %d", code)
	}
}

// Exit codes pass through: a plain exit, a death by signal (128+N as a
// shell reports it), and a command that does not exist.
func TestRunExitCodes(t *testing.T) {
	for _, tc := range []struct {
		script string
		argv   []string
		want   int
	}{
		{script: "exit 0", want: 0},
		{script: "exit 42", want: 42},
		{script: "kill -KILL $$", want: 128 + 9},
		{argv: []string{"/nonexistent/command"}, want: 127},
	} {
		e := newRunEnv(t, "none", tc.script)
		if tc.argv != nil {
			e.hc.Command = tc.argv
		}
		e.start()
		if code := e.wait(); code != tc.want {
			t.Errorf("%q %v: exit code %d, want %d", tc.script, tc.argv, code, tc.want)
		}
		if _, err := os.Lstat(e.target); !os.IsNotExist(err) {
			t.Errorf("%q: target left behind: %v", tc.script, err)
		}
	}
}

// kill -9 of either stage: the rest dies with it, including what the
// command started and detached from itself (setsid, TERM ignored), so the
// private mount namespace has no process left: the kernel has freed it and
// its tmpfs. The host never had the mount.
func TestRunKill9LeavesNothing(t *testing.T) {
	for _, victim := range []string{"first stage", "second stage"} {
		t.Run(victim, func(t *testing.T) {
			e := newRunEnv(t, "none", `setsid sh -c 'trap "" TERM HUP INT; echo $$ > "$OUT/daemon"; while :; do sleep 1; done' &
while [ ! -s "$OUT/daemon" ]; do sleep 0.01; done; : > "$OUT/ready"; while :; do sleep 0.01; done`)
			e.start()
			e.waitFor("the command", func() bool { return fileExists(filepath.Join(e.out, "ready")) })
			agent := children(e.cmd.Process.Pid)
			if len(agent) != 1 {
				t.Fatalf("children %v", agent)
			}
			ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", agent[0]))
			if err != nil {
				t.Fatal(err)
			}
			procs := processesIn(ns)
			if len(procs) < 4 { // agent, init, command, daemon (and a sleep)
				t.Fatalf("processes in the private namespace: %v", procs)
			}
			pid := e.cmd.Process.Pid
			if victim == "second stage" {
				pid = agent[0]
			}
			if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			code := e.wait()
			if victim == "second stage" && code != 128+9 {
				t.Errorf("exit code %d, want 137", code)
			}
			e.waitFor("no process left in the private mount namespace", func() bool { return len(processesIn(ns)) == 0 })
			e.assertNotOnHost()
			// The first stage removes the directory it made when the second
			// dies; killed itself, it leaves the empty directory.
			if _, err := os.Lstat(e.target); victim == "second stage" && !os.IsNotExist(err) {
				t.Errorf("target left behind: %v", err)
			}
		})
	}
}

// A class's own interval (secretfs.dev/rotationInterval) sets the pace when
// it is shorter than the agent's: with the agent at an hour, a change still
// reaches the command.
func TestRunFollowsTheClassInterval(t *testing.T) {
	e := newRunEnv(t, "signal:HUP", `trap 'echo hup >> "$OUT/hups"' HUP; : > "$OUT/ready"; while :; do sleep 0.01; done`)
	e.hc.Interval = time.Hour
	e.writeClass(strings.Replace(testRunClass, "  parameters:\n", "  parameters:\n    secretfs.dev/rotationInterval: 10s\n", 1))
	e.start()
	e.waitFor("the command", func() bool { return fileExists(filepath.Join(e.out, "ready")) })
	e.setToken("second")
	e.waitFor("a SIGHUP within the class's interval", func() bool { return strings.Count(e.outFile("hups"), "hup") == 1 })
	_ = e.cmd.Process.Signal(syscall.SIGTERM)
	e.wait()
}
