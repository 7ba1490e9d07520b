package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/secretfs/secretfs/driver"
)

// hostile are names and messages a tenant can get into the status: a class
// name or an error message from its backend with terminal escapes, carriage
// returns, C1 controls, bidi overrides and bytes that are not UTF-8.
var hostile = []string{
	"\x1b]0;owned\x07\x1b[2J\x1b[31mfake\x1b[0m",
	"ok\rtotally-fine",
	"\u009b31mc1-csi",
	"abc\u202edcba\u2066x\u2069",
	"bad\xff\xfe utf8",
	"del\x7f",
	"nul\x00byte",
	"tag\U000E0041chars",
}

// unsafeIn returns the first rune of out that a terminal may act on: a C0
// control other than the newline that ends a line, DEL, a C1 control, a
// format character such as a bidi override, or a byte that is not UTF-8.
func unsafeIn(out string) (string, bool) {
	for i, r := range out {
		switch {
		case r == utf8.RuneError && !strings.HasPrefix(out[i:], "\uFFFD"):
			return out[i:min(i+1, len(out))], true
		case r == '\n':
		case unicode.Is(unicode.Cc, r), unicode.Is(unicode.Cf, r):
			return string(r), true
		}
	}
	return "", false
}

func hostileVolumes() []driver.VolumeStatus {
	var vols []driver.VolumeStatus
	for _, h := range hostile {
		vols = append(vols, driver.VolumeStatus{
			VolumeID: "v-" + h, Namespace: "ns" + h, Pod: "pod" + h, Class: "class" + h, Provider: "prov" + h,
			Files: 1, Bytes: 2, RotationInterval: driver.Interval(time.Minute), LastError: "backend said: " + h,
		})
	}
	return vols
}

// The table shows every field with its control bytes escaped.
func TestStatusTableEscapesControlBytes(t *testing.T) {
	var out bytes.Buffer
	printStatus(&out, hostileVolumes(), time.Now())
	if r, bad := unsafeIn(out.String()); bad {
		t.Fatalf("status table holds %q:\n%q", r, out.String())
	}
	if !strings.Contains(out.String(), `\x1b]0;owned`) || !strings.Contains(out.String(), `\u202e`) {
		t.Errorf("escapes not shown:\n%s", out.String())
	}
}

// -o json escapes what encoding/json leaves raw (DEL, C1 controls, bidi
// and other format characters) and still decodes to the same values.
func TestStatusJSONEscapesControlBytes(t *testing.T) {
	vols := hostileVolumes()
	sock := filepath.Join(t.TempDir(), "status.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_ = json.NewEncoder(w).Encode(vols)
	})}
	go srv.Serve(lis)
	t.Cleanup(func() { srv.Close() })

	var stdout, stderr bytes.Buffer
	if code := runStatus([]string{"-socket", "unix://" + sock, "-o", "json"}, &stdout, &stderr); code != 0 {
		t.Fatalf("status -o json: %d %s", code, stderr.String())
	}
	if r, bad := unsafeIn(stdout.String()); bad {
		t.Fatalf("status -o json holds %q:\n%q", r, stdout.String())
	}
	var got, want []driver.VolumeStatus
	if err := json.Unmarshal(stdout.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	raw, _ := json.Marshal(vols) // what JSON can carry: invalid UTF-8 becomes U+FFFD
	if err := json.Unmarshal(raw, &want); err != nil {
		t.Fatal(err)
	}
	gotJ, _ := json.Marshal(got)
	wantJ, _ := json.Marshal(want)
	if !bytes.Equal(gotJ, wantJ) {
		t.Errorf("decoded status differs:\n got %s\nwant %s", gotJ, wantJ)
	}
}

// FuzzPrintable: whatever a tenant puts in a name or message, status shows
// no byte a terminal acts on, on one line, and shows it faithfully: as it
// is, or quoted so that strconv.Unquote gives it back; the JSON output
// carries the same value as encoding/json's, with no such byte either.
func FuzzPrintable(f *testing.F) {
	for _, h := range hostile {
		f.Add(h)
	}
	f.Add(`"quoted"`)
	f.Add("plain-name")
	f.Fuzz(func(t *testing.T, s string) {
		p := printable(s)
		if r, bad := unsafeIn(p); bad || strings.Contains(p, "\n") {
			t.Fatalf("printable(%q) = %q holds %q", s, p, r)
		}
		if p != s {
			back, err := strconv.Unquote(p)
			if err != nil || back != s {
				t.Fatalf("printable(%q) = %q, which unquotes to %q (%v)", s, p, back, err)
			}
		} else if strings.HasPrefix(s, `"`) || !utf8.ValidString(s) {
			t.Fatalf("printable(%q) left it as it is", s)
		}

		raw, err := json.Marshal(driver.VolumeStatus{Class: s, LastError: s})
		if err != nil {
			t.Fatal(err)
		}
		esc := escapeJSON(raw)
		if r, bad := unsafeIn(string(esc)); bad {
			t.Fatalf("escapeJSON of %q holds %q: %s", s, r, esc)
		}
		var a, b driver.VolumeStatus
		if err := json.Unmarshal(raw, &a); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(esc, &b); err != nil {
			t.Fatalf("escapeJSON of %q is not JSON: %v: %s", s, err, esc)
		}
		if a.Class != b.Class || a.LastError != b.LastError {
			t.Fatalf("escapeJSON changed the value: %q -> %q", a.Class, b.Class)
		}
	})
}

// `secretfs refresh` against a driver's status handler: the request it
// sends and the count it prints; a refusal is the driver's message.
func TestRefreshCommand(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "status.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		got = append(got, r.Method+" "+r.URL.Path+" "+string(body))
		if strings.Contains(string(body), `"pod"`) {
			w.WriteHeader(http.StatusTooManyRequests)
			fmt.Fprint(w, `{"volumes":0,"error":"1024 classes and pods are waiting"}`)
			return
		}
		fmt.Fprint(w, `{"volumes":3}`)
	})}
	go srv.Serve(lis)
	defer srv.Close()

	var out, errOut bytes.Buffer
	if code := run([]string{"refresh", "--socket", sock, "--namespace", "shop", "--class", "app"}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	if !strings.Contains(out.String(), "3 volume(s)") || len(got) != 1 || got[0] != `POST /refresh {"namespace":"shop","class":"app"}` {
		t.Fatalf("out %q, requests %q", out.String(), got)
	}
	errOut.Reset()
	if code := run([]string{"refresh", "--socket", sock, "--namespace", "shop", "--pod", "web"}, &out, &errOut); code != 1 || !strings.Contains(errOut.String(), "the driver refused: 1024 classes") {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
}
