// Command testapp is the app image of the end-to-end tests. Its subcommands
// inspect a mounted volume from inside a pod and let a test change the fake
// backend's data, so the tests need no shell in any image.
//
//	testapp sleep                 wait for SIGTERM
//	testapp dump DIR              JSON of the files an app sees in DIR
//	testapp fstype PATH           JSON of the filesystem at PATH (statfs)
//	testapp write FILE VALUE      replace FILE atomically (temp file + rename)
//	testapp find ROOT STRING      paths of regular files under ROOT containing STRING
//	testapp rm FILE               remove FILE (missing is fine)
//	testapp mounts STRING         mounts (mountinfo) whose mount point contains STRING
//	testapp cat FILE              JSON of FILE's mode and base64 content (binary safe)
//	testapp printenv NAME         the value of environment variable NAME
//	testapp watch FILE N TIMEOUT  a JSON line with FILE's content now, then one per
//	                              change (with the time it was seen) until N changes
//	                              or TIMEOUT; for measuring rotation latency
//	testapp readloop REPORT DIR FILE...
//	                              read DIR/FILE... every 20 ms until SIGTERM, checking
//	                              each is whole ("<seq>.<payload>.<sha256 hex>"); keep
//	                              REPORT (JSON: reads, bad reads, maxSeq) up to date
//	testapp env FILE CMD...       load the .env FILE into the environment, then run
//	                              testapp CMD... in this process (exec)
//	testapp provider SOCKET       serve test/fakeprovider on SOCKET until SIGTERM: an
//	                              external provider that writes the files into the
//	                              target itself (as the AWS provider does by default);
//	                              the value of object NAME is "fake:NAME"
package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/secretfs/secretfs/test/fakeprovider"
)

func main() {
	if len(os.Args) < 2 {
		fail("usage: testapp sleep|dump|fstype|write|find|rm|mounts|cat|printenv|env|watch|readloop ...")
	}
	args := os.Args[2:]
	var err error
	switch cmd := os.Args[1]; cmd {
	case "sleep":
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
		<-sig
	case "dump":
		err = need(args, 1, func() error { return dump(args[0]) })
	case "fstype":
		err = need(args, 1, func() error { return fstype(args[0]) })
	case "write":
		err = need(args, 2, func() error { return write(args[0], args[1]) })
	case "find":
		err = need(args, 2, func() error { return find(args[0], args[1]) })
	case "rm":
		err = need(args, 1, func() error {
			if err := os.Remove(args[0]); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
			return nil
		})
	case "mounts":
		err = need(args, 1, func() error { return mounts(args[0]) })
	case "cat":
		err = need(args, 1, func() error { return cat(args[0]) })
	case "printenv":
		err = need(args, 1, func() error {
			v, ok := os.LookupEnv(args[0])
			if !ok {
				return fmt.Errorf("%s is not set", args[0])
			}
			fmt.Print(v)
			return nil
		})
	case "env":
		if len(args) < 2 {
			err = fmt.Errorf("want a .env file and a subcommand")
			break
		}
		err = withEnv(args[0], args[1:])
	case "provider":
		err = need(args, 1, func() error { return serveProvider(args[0]) })
	case "readloop":
		if len(args) < 3 {
			err = fmt.Errorf("want a report file, a directory and file names")
			break
		}
		err = readLoop(args[0], args[1], args[2:])
	case "watch":
		err = need(args, 3, func() error { return watch(args[0], args[1], args[2]) })
	default:
		err = fmt.Errorf("unknown subcommand %q", cmd)
	}
	if err != nil {
		fail(err.Error())
	}
}

func need(args []string, n int, f func() error) error {
	if len(args) != n {
		return fmt.Errorf("want %d arguments, got %d", n, len(args))
	}
	return f()
}

func fail(msg string) {
	fmt.Fprintln(os.Stderr, "testapp:", msg)
	os.Exit(1)
}

func printJSON(v any) error {
	return json.NewEncoder(os.Stdout).Encode(v)
}

// File is what an application sees at one path: symbolic links followed.
type File struct {
	Mode    string `json:"mode"` // permission bits in octal, e.g. "0440"
	Content string `json:"content"`
}

// dump walks DIR as an application would: names starting with ".." (the
// atomic writer's internals) are skipped, symbolic links are followed.
func dump(dir string) error {
	files := map[string]File{}
	var walk func(rel string) error
	walk = func(rel string) error {
		entries, err := os.ReadDir(filepath.Join(dir, rel))
		if err != nil {
			return err
		}
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), "..") {
				continue
			}
			p := filepath.Join(rel, e.Name())
			st, err := os.Stat(filepath.Join(dir, p))
			if err != nil {
				return err
			}
			if st.IsDir() {
				if err := walk(p); err != nil {
					return err
				}
				continue
			}
			data, err := os.ReadFile(filepath.Join(dir, p))
			if err != nil {
				return err
			}
			files[filepath.ToSlash(p)] = File{Mode: fmt.Sprintf("%04o", st.Mode().Perm()), Content: string(data)}
		}
		return nil
	}
	if err := walk("."); err != nil {
		return err
	}
	return printJSON(files)
}

// FS describes the filesystem at a path.
type FS struct {
	Type     string `json:"type"`
	ReadOnly bool   `json:"readOnly"`
	NoSUID   bool   `json:"nosuid"`
	NoDev    bool   `json:"nodev"`
	NoExec   bool   `json:"noexec"`
	Size     uint64 `json:"size"`
}

func fstype(path string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return err
	}
	out := FS{
		Type:     fmt.Sprintf("0x%x", st.Type),
		ReadOnly: st.Flags&unix.ST_RDONLY != 0,
		NoSUID:   st.Flags&unix.ST_NOSUID != 0,
		NoDev:    st.Flags&unix.ST_NODEV != 0,
		NoExec:   st.Flags&unix.ST_NOEXEC != 0,
		Size:     st.Blocks * uint64(st.Bsize),
	}
	if st.Type == unix.TMPFS_MAGIC {
		out.Type = "tmpfs"
	}
	return printJSON(out)
}

// write replaces file through a temporary file whose name starts with '.', so
// a reader never sees half a value.
func write(file, value string) error {
	dir := filepath.Dir(file)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, ".tmp-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.WriteString(value); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), file)
}

// find prints every regular file under root whose content contains s,
// without following symbolic links or leaving root's filesystem tree.
func find(root, s string) error {
	needle := []byte(s)
	var found []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			// Pods' directories come and go while we walk.
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		data, err := os.ReadFile(p)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		if bytes.Contains(data, needle) {
			found = append(found, p)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if found == nil {
		found = []string{}
	}
	return printJSON(found)
}

// Mount is one line of /proc/self/mountinfo.
type Mount struct {
	Path    string `json:"path"`
	FSType  string `json:"fstype"`
	Options string `json:"options"` // per-mount options, e.g. ro,nosuid,nodev,noexec
	Super   string `json:"super"`   // filesystem options, e.g. size=1024k,mode=755
}

// mounts prints the mounts in this mount namespace whose mount point
// contains s.
func mounts(s string) error {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	found := []Mount{}
	for line := range strings.Lines(string(data)) {
		// id parent major:minor root mountpoint options [optional...] - fstype source super
		pre, post, ok := strings.Cut(line, " - ")
		fields, tail := strings.Fields(pre), strings.Fields(post)
		if !ok || len(fields) < 6 || len(tail) < 3 || !strings.Contains(fields[4], s) {
			continue
		}
		found = append(found, Mount{Path: fields[4], FSType: tail[0], Options: fields[5], Super: tail[2]})
	}
	return printJSON(found)
}

// Raw is one file as cat prints it.
type Raw struct {
	Mode   string `json:"mode"`
	Base64 string `json:"base64"`
}

// cat prints file's mode and content; JSON strings cannot carry arbitrary
// bytes, so the content is base64.
func cat(file string) error {
	st, err := os.Stat(file)
	if err != nil {
		return err
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	return printJSON(Raw{Mode: fmt.Sprintf("%04o", st.Mode().Perm()), Base64: base64.StdEncoding.EncodeToString(data)})
}

// Seen is one line of watch: the content of the file and when this process
// first saw it (Unix nanoseconds; pods on a node share its clock).
type Seen struct {
	Content  string `json:"content"`
	UnixNano int64  `json:"unixNano"`
}

// watch reads file every millisecond, as an application polling its
// secret would, and prints a line when the content differs from the last
// line's. A missing file (between atomic swaps it never is) counts as "".
func watch(file, count, timeout string) error {
	n, err := strconv.Atoi(count)
	if err != nil || n < 0 {
		return fmt.Errorf("count %q is not a number >= 0", count)
	}
	d, err := time.ParseDuration(timeout)
	if err != nil {
		return fmt.Errorf("timeout: %w", err)
	}
	deadline := time.Now().Add(d)
	read := func() string {
		data, err := os.ReadFile(file)
		if err != nil {
			return ""
		}
		return string(data)
	}
	last := read()
	if err := printJSON(Seen{Content: last, UnixNano: time.Now().UnixNano()}); err != nil {
		return err
	}
	for changes := 0; changes < n; {
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d changes of %s seen in %v", changes, n, file, d)
		}
		time.Sleep(time.Millisecond)
		if cur := read(); cur != last {
			last = cur
			changes++
			if err := printJSON(Seen{Content: cur, UnixNano: time.Now().UnixNano()}); err != nil {
				return err
			}
		}
	}
	return nil
}

// serveProvider serves the fake external provider on socket until SIGTERM.
func serveProvider(socket string) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	s := &fakeprovider.Server{Values: func(name string) ([]byte, bool) { return []byte("fake:" + name), true }}
	return fakeprovider.Serve(ctx, socket, s)
}
