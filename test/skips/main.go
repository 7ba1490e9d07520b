// Command skips runs `go test -json` with the arguments it is given and
// prints what plain `go test` prints (package results, and the output of
// failed tests), then every skipped test with its reason and their count,
// so a skip is never silent. With -v every line of output is shown as it
// comes. It exits with go test's status.
//
//	go run ./test/skips -count=1 ./driver/...
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sort"
	"strings"
)

// event is one line of `go test -json` (cmd/test2json).
type event struct {
	Action  string
	Package string
	Test    string
	Output  string
}

type key struct{ pkg, test string }

func main() {
	cmd := exec.Command("go", append([]string{"test", "-json"}, os.Args[1:]...)...)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		fmt.Fprintln(os.Stderr, "skips:", err)
		os.Exit(2)
	}
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "skips:", err)
		os.Exit(2)
	}
	verbose := false
	for _, a := range os.Args[1:] {
		verbose = verbose || a == "-v" || a == "-test.v" || a == "-v=true"
	}
	skipped := summarize(stdout, os.Stdout, verbose)
	code := 0
	if err := cmd.Wait(); err != nil {
		var exit *exec.ExitError
		if !errors.As(err, &exit) {
			fmt.Fprintln(os.Stderr, "skips:", err)
			os.Exit(2)
		}
		code = exit.ExitCode()
	}
	report(os.Stdout, skipped)
	os.Exit(code)
}

// summarize copies the package-level output of the events in r to w, and
// the output of each failed test (verbose: all output, as it comes); it
// returns the reasons of skipped tests.
func summarize(r io.Reader, w io.Writer, verbose bool) map[key]string {
	out := map[key]*strings.Builder{}
	skipped := map[key]string{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var e event
		if json.Unmarshal(sc.Bytes(), &e) != nil {
			fmt.Fprintln(w, sc.Text()) // not an event: build errors and the like
			continue
		}
		k := key{e.Package, e.Test}
		switch {
		case e.Action == "output" && (verbose || e.Test == ""):
			if verbose || e.Output != "PASS\n" {
				fmt.Fprint(w, e.Output)
			}
			if e.Test != "" {
				if out[k] == nil {
					out[k] = &strings.Builder{}
				}
				out[k].WriteString(e.Output)
			}
		case e.Action == "output":
			if out[k] == nil {
				out[k] = &strings.Builder{}
			}
			out[k].WriteString(e.Output)
		case e.Action == "fail" && e.Test != "" && !verbose:
			if b := out[k]; b != nil {
				fmt.Fprint(w, b.String())
			}
		case e.Action == "skip" && e.Test != "":
			skipped[k] = reason(out[k])
		}
		if e.Action == "pass" || e.Action == "fail" || e.Action == "skip" {
			delete(out, k)
		}
	}
	return skipped
}

// reason is what a skipped test printed, without the runner's own lines.
func reason(b *strings.Builder) string {
	if b == nil {
		return ""
	}
	var lines []string
	for _, l := range strings.Split(b.String(), "\n") {
		t := strings.TrimSpace(l)
		if t == "" || strings.HasPrefix(t, "=== ") || strings.HasPrefix(t, "--- SKIP") {
			continue
		}
		lines = append(lines, t)
	}
	return strings.Join(lines, " | ")
}

func report(w io.Writer, skipped map[key]string) {
	keys := make([]key, 0, len(skipped))
	for k := range skipped {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].pkg != keys[j].pkg {
			return keys[i].pkg < keys[j].pkg
		}
		return keys[i].test < keys[j].test
	})
	fmt.Fprintf(w, "\n%d tests skipped\n", len(keys))
	for _, k := range keys {
		r := skipped[k]
		if r == "" {
			r = "(no reason given)"
		}
		fmt.Fprintf(w, "  SKIP %s %s: %s\n", k.pkg, k.test, r)
	}
}
