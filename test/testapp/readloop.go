package main

import (
	"crypto/sha256"
	"encoding/hex"
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
)

// ReadReport is what readloop keeps in its report file: how many reads of
// the files it made, how many of them were bad (the file missing, or its
// content not a whole checked value), how many saw an older value than the
// read before (a rotation going back), the highest sequence number seen per
// file, and the first few bad reads (file and reason, never the content).
type ReadReport struct {
	Reads     int64            `json:"reads"`
	Bad       int64            `json:"bad"`
	Backwards int64            `json:"backwards"`
	MaxSeq    map[string]int64 `json:"maxSeq"`
	Errors    []string         `json:"errors"`
}

// maxReportedErrors bounds ReadReport.Errors.
const maxReportedErrors = 10

// parseChecked returns the sequence number of a value that carries its own
// checksum, "<seq>.<payload>.<hex sha256 of "<seq>.<payload>">", so a reader
// tells a whole value from a torn or truncated one (the e2e test of a driver
// roll writes such values).
func parseChecked(s string) (int64, error) {
	i := strings.LastIndexByte(s, '.')
	if i < 0 {
		return 0, fmt.Errorf("no checksum (%d bytes)", len(s))
	}
	body, sum := s[:i], s[i+1:]
	want := sha256.Sum256([]byte(body))
	if sum != hex.EncodeToString(want[:]) {
		return 0, fmt.Errorf("checksum mismatch (%d bytes)", len(s))
	}
	seqText, _, _ := strings.Cut(body, ".")
	seq, err := strconv.ParseInt(seqText, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("bad sequence number (%d bytes)", len(s))
	}
	return seq, nil
}

// readLoop reads every named file in dir every 20 ms, as an application
// rereading its secrets would, until SIGTERM, and keeps report (a
// ReadReport, replaced atomically) up to date every 200 ms and at the end.
func readLoop(report, dir string, names []string) error {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sig)
	r := ReadReport{MaxSeq: map[string]int64{}, Errors: []string{}}
	last := map[string]int64{}
	bad := func(name, why string) {
		r.Bad++
		if len(r.Errors) < maxReportedErrors {
			r.Errors = append(r.Errors, fmt.Sprintf("%s: %s: %s", time.Now().UTC().Format(time.RFC3339Nano), name, why))
		}
	}
	save := func() error {
		data, err := json.Marshal(r)
		if err != nil {
			return err
		}
		return write(report, string(data))
	}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	saved := time.Now()
	for {
		for _, name := range names {
			r.Reads++
			data, err := os.ReadFile(filepath.Join(dir, name))
			if err != nil {
				why := "unreadable"
				if errors.Is(err, fs.ErrNotExist) {
					why = "missing"
				}
				bad(name, why)
				continue
			}
			seq, err := parseChecked(string(data))
			if err != nil {
				bad(name, err.Error())
				continue
			}
			if prev, ok := last[name]; ok && seq < prev {
				r.Backwards++
				if len(r.Errors) < maxReportedErrors {
					r.Errors = append(r.Errors, fmt.Sprintf("%s: %s: sequence %d after %d", time.Now().UTC().Format(time.RFC3339Nano), name, seq, prev))
				}
			}
			last[name] = seq
			r.MaxSeq[name] = max(r.MaxSeq[name], seq)
		}
		if time.Since(saved) >= 200*time.Millisecond {
			if err := save(); err != nil {
				return err
			}
			saved = time.Now()
		}
		select {
		case <-sig:
			return save()
		case <-tick.C:
		}
	}
}
