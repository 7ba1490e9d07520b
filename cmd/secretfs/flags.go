package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"k8s.io/apimachinery/pkg/api/resource"
)

// newFlagSet returns a flag set that reports errors in one line (see parse).
func newFlagSet(name, synopsis string, stdout io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("secretfs "+name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {
		fmt.Fprintf(stdout, "Usage: secretfs %s [flags]\n\n%s\n\nFlags:\n", name, synopsis)
		fs.SetOutput(stdout)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
	}
	return fs
}

// parse parses args; it returns an exit code and false when the command
// should stop: 0 after -h, 2 after a bad flag (one line on stderr).
func parse(fs *flag.FlagSet, args []string, stderr io.Writer) (int, bool) {
	err := fs.Parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp): // Parse has printed the usage
		return 0, false
	case err != nil:
		fmt.Fprintf(stderr, "%s: %v (see %s -h)\n", fs.Name(), err, fs.Name())
		return 2, false
	case fs.NArg() > 0:
		fmt.Fprintf(stderr, "%s: unexpected argument %q (see %s -h)\n", fs.Name(), fs.Arg(0), fs.Name())
		return 2, false
	}
	return 0, true
}

// fail prints a one-line error for a command and returns exit code 1, or 2
// for a usage error.
func fail(stderr io.Writer, fs *flag.FlagSet, code int, format string, args ...any) int {
	return failCmd(stderr, fs.Name(), code, format, args...)
}

// failCmd is fail for a command whose flags are already parsed; name is
// "secretfs <command>".
func failCmd(stderr io.Writer, name string, code int, format string, args ...any) int {
	fmt.Fprintf(stderr, "%s: %s\n", name, fmt.Sprintf(format, args...))
	return code
}

// quantityFlag is a byte size written as a Kubernetes quantity (8Mi, 1G).
type quantityFlag struct{ bytes int64 }

func (q *quantityFlag) String() string {
	if q == nil {
		return ""
	}
	return resource.NewQuantity(q.bytes, resource.BinarySI).String()
}

func (q *quantityFlag) Set(s string) error {
	v, err := resource.ParseQuantity(s)
	if err != nil {
		return fmt.Errorf("not a size like 8Mi or 64Ki")
	}
	if v.Value() <= 0 {
		return fmt.Errorf("must be positive")
	}
	q.bytes = v.Value()
	return nil
}

// logFlags are the logging flags every long-running command has.
type logFlags struct {
	format    string
	verbosity int
}

func (l *logFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&l.format, "log-format", "text", "log format: text or json")
	fs.IntVar(&l.verbosity, "v", 0, "log verbosity: 0 info, 1 and more debug")
}

func (l *logFlags) logger(w io.Writer) (*slog.Logger, error) {
	level := slog.LevelInfo
	if l.verbosity > 0 {
		level = slog.LevelDebug
	}
	opts := &slog.HandlerOptions{Level: level}
	switch strings.ToLower(l.format) {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("-log-format must be text or json, not %q", l.format)
}

func hostname() string {
	h, _ := os.Hostname()
	return h
}
