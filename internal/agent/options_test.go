package agent

import (
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestParseOnChange(t *testing.T) {
	for in, want := range map[string]OnChange{
		"":              {},
		"none":          {},
		"restart":       {Restart: true},
		"signal:HUP":    {Signal: syscall.SIGHUP},
		"signal:sighup": {Signal: syscall.SIGHUP},
		"signal:USR1":   {Signal: syscall.SIGUSR1},
	} {
		got, err := ParseOnChange(in)
		if err != nil || got != want {
			t.Errorf("ParseOnChange(%q) = %+v, %v; want %+v", in, got, err, want)
		}
		if back, err := ParseOnChange(got.String()); err != nil || back != got {
			t.Errorf("%q does not round-trip through %q", in, got.String())
		}
	}
	for in, want := range map[string]string{
		"reload":      "not none, restart or signal:NAME",
		"signal:KILL": "not one of HUP",
		"signal:":     "not one of HUP",
		"signal:9":    "not one of HUP",
	} {
		if _, err := ParseOnChange(in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseOnChange(%q) error %v, want one containing %q", in, err, want)
		}
	}
}

func TestParseEnv(t *testing.T) {
	if got, err := ParseEnv("DB_PASSWORD=db/password"); err != nil || got != (EnvVar{Name: "DB_PASSWORD", File: "db/password"}) {
		t.Fatalf("got %+v, %v", got, err)
	}
	for in, want := range map[string]string{
		"DB":        "not NAME=object",
		"1A=x":      "not an environment variable name",
		"A-B=x":     "not an environment variable name",
		"=x":        "not an environment variable name",
		"A=":        "file path is empty",
		"A=../x":    "contains '..'",
		"A=/etc/pw": "absolute",
		"A=..data":  "reserved",
	} {
		if _, err := ParseEnv(in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseEnv(%q) error %v, want one containing %q", in, err, want)
		}
	}
}

// Restarts of a command that keeps dying quickly wait longer and longer, up
// to max; one that ran for max starts over.
func TestBackoff(t *testing.T) {
	b := backoff{min: time.Second, max: time.Minute}
	t0 := time.Unix(1000, 0)
	var got []time.Duration
	for range 8 {
		got = append(got, b.wait(t0, t0))
	}
	want := []time.Duration{1, 2, 4, 8, 16, 32, 60, 60}
	for i := range want {
		if got[i] != want[i]*time.Second {
			t.Fatalf("waits %v, want %v seconds", got, want)
		}
	}
	if w := b.wait(t0, t0.Add(time.Minute)); w != 0 {
		t.Fatalf("a command that ran a minute waits %v, want 0", w)
	}
	if w := b.wait(t0, t0.Add(500*time.Millisecond)); w != 1500*time.Millisecond {
		t.Fatalf("after a reset the second quick restart waits %v, want 1.5s", w)
	}
}

func FuzzParseOnChange(f *testing.F) {
	for _, s := range []string{"", "none", "restart", "signal:HUP", "signal:sigusr2", "signal:", "signal:KILL", "x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		oc, err := ParseOnChange(s)
		if err != nil {
			if len(err.Error()) > 200 {
				t.Fatalf("error of %d bytes", len(err.Error()))
			}
			return
		}
		if oc.Restart && oc.Signal != 0 {
			t.Fatal("restart and signal")
		}
		if oc.Signal == syscall.SIGKILL || oc.Signal == syscall.SIGSTOP || oc.Signal == syscall.SIGCHLD {
			t.Fatalf("signal %v accepted", oc.Signal)
		}
		if back, err := ParseOnChange(oc.String()); err != nil || back != oc {
			t.Fatalf("%q does not round-trip", s)
		}
	})
}

func FuzzParseEnv(f *testing.F) {
	for _, s := range []string{"A=b", "DB_PASSWORD=db/password", "=", "A=../b", "A=b/", "_=x", "A\x00=b", "A=b\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		e, err := ParseEnv(s)
		if err != nil {
			return
		}
		if !validEnvName(e.Name) || strings.ContainsAny(e.Name, "=\x00") {
			t.Fatalf("bad name %q accepted", e.Name)
		}
		if strings.HasPrefix(e.File, "/") || strings.Contains(e.File, "..") && strings.Contains("/"+e.File+"/", "/../") {
			t.Fatalf("file %q escapes the volume", e.File)
		}
	})
}
