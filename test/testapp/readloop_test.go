package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
)

func checked(seq int64, payload string) string {
	body := strconv.FormatInt(seq, 10) + "." + payload
	sum := sha256.Sum256([]byte(body))
	return body + "." + hex.EncodeToString(sum[:])
}

func TestParseChecked(t *testing.T) {
	whole := checked(42, "abc.def")
	if seq, err := parseChecked(whole); err != nil || seq != 42 {
		t.Fatalf("whole value: %d, %v", seq, err)
	}
	for _, torn := range []string{"", whole[:len(whole)-1], whole[1:], whole[:10], "x" + whole, "42.abc"} {
		if _, err := parseChecked(torn); err == nil {
			t.Errorf("%q accepted", torn)
		}
	}
}

func FuzzParseChecked(f *testing.F) {
	f.Add(checked(1, "payload"))
	f.Add("1.x.00")
	f.Add("")
	f.Fuzz(func(t *testing.T, s string) {
		seq, err := parseChecked(s)
		if err != nil {
			return
		}
		// Accepted only when the value ends in the checksum of the rest.
		if len(s) < sha256.Size*2+1 {
			t.Fatalf("%q accepted as sequence %d", s, seq)
		}
		body, sum := s[:len(s)-sha256.Size*2-1], s[len(s)-sha256.Size*2:]
		want := sha256.Sum256([]byte(body))
		if sum != hex.EncodeToString(want[:]) {
			t.Fatalf("%q accepted as sequence %d", s, seq)
		}
	})
}

// The loop counts a missing file and a torn one as bad, an older value as
// backwards, and writes its report when told to stop.
func TestReadLoop(t *testing.T) {
	dir := t.TempDir()
	report := filepath.Join(t.TempDir(), "report.json")
	if err := write(filepath.Join(dir, "a"), checked(2, "x")); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- readLoop(report, dir, []string{"a", "gone"}) }()
	time.Sleep(100 * time.Millisecond)
	if err := write(filepath.Join(dir, "a"), checked(1, "x")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(report)
	if err != nil {
		t.Fatal(err)
	}
	var r ReadReport
	if err := json.Unmarshal(data, &r); err != nil {
		t.Fatal(err)
	}
	// Every round reads both files; "gone" is always missing.
	if r.Reads < 4 || r.Bad != r.Reads/2 || r.Backwards != 1 || r.MaxSeq["a"] != 2 {
		t.Fatalf("report %+v: want reads >= 4, half of them bad (the missing file), one backwards, max sequence 2", r)
	}
}
