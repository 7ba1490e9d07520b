package agent

import (
	"fmt"
	"strings"
	"syscall"

	"github.com/secretfs/secretfs/provider"
)

// OnChange says what `secretfs run` does to the command after a refresh
// swapped in new files.
type OnChange struct {
	// Restart stops the command (SIGTERM, then SIGKILL after the stop
	// timeout) and starts it again, with back-off between restarts.
	Restart bool
	// Signal, when not zero, is sent to the command (and only to it).
	Signal syscall.Signal
}

// String is the flag form: none, restart or signal:NAME.
func (o OnChange) String() string {
	switch {
	case o.Restart:
		return "restart"
	case o.Signal != 0:
		for name, s := range changeSignals {
			if s == o.Signal {
				return "signal:" + name
			}
		}
		return fmt.Sprintf("signal:%d", int(o.Signal))
	}
	return "none"
}

// changeSignals are the signals a command can be told about a change with:
// the ones programs use for "reload", none that job control or the runtime
// owns.
var changeSignals = map[string]syscall.Signal{
	"HUP":   syscall.SIGHUP,
	"USR1":  syscall.SIGUSR1,
	"USR2":  syscall.SIGUSR2,
	"TERM":  syscall.SIGTERM,
	"INT":   syscall.SIGINT,
	"QUIT":  syscall.SIGQUIT,
	"WINCH": syscall.SIGWINCH,
	"ALRM":  syscall.SIGALRM,
}

// ParseOnChange parses none, restart or signal:NAME (HUP, USR1, USR2, TERM,
// INT, QUIT, WINCH, ALRM; with or without SIG, any case).
func ParseOnChange(s string) (OnChange, error) {
	switch s {
	case "none", "":
		return OnChange{}, nil
	case "restart":
		return OnChange{Restart: true}, nil
	}
	name, ok := strings.CutPrefix(s, "signal:")
	if !ok {
		return OnChange{}, fmt.Errorf("%.40q is not none, restart or signal:NAME (e.g. signal:HUP)", s)
	}
	up := strings.TrimPrefix(strings.ToUpper(name), "SIG")
	sig, ok := changeSignals[up]
	if !ok {
		return OnChange{}, fmt.Errorf("signal %.20q is not one of HUP, USR1, USR2, TERM, INT, QUIT, WINCH, ALRM", name)
	}
	return OnChange{Signal: sig}, nil
}

// EnvVar puts the content of one file of the volume into the command's
// environment.
type EnvVar struct {
	Name string // environment variable
	File string // path of the file in the volume (objectAlias or objectName)
}

// ParseEnv parses NAME=file, where NAME is a portable environment variable
// name and file a path in the volume.
func ParseEnv(s string) (EnvVar, error) {
	name, file, ok := strings.Cut(s, "=")
	if !ok {
		return EnvVar{}, fmt.Errorf("%.60q is not NAME=object", s)
	}
	if !validEnvName(name) {
		return EnvVar{}, fmt.Errorf("%.60q is not an environment variable name (letters, digits and _, not starting with a digit)", name)
	}
	if err := provider.ValidatePath(file); err != nil {
		return EnvVar{}, fmt.Errorf("object %.60q of %s: %v", file, name, err)
	}
	return EnvVar{Name: name, File: file}, nil
}

func validEnvName(s string) bool {
	if s == "" || len(s) > 255 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '_', c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z':
		case c >= '0' && c <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}
