package main

import (
	"strings"
	"testing"
)

// A skip is reported with the reason the test gave; a failed test's output
// is shown; passing tests stay quiet, as in plain go test.
func TestSummarize(t *testing.T) {
	in := `{"Action":"run","Package":"p","Test":"TestA"}
{"Action":"output","Package":"p","Test":"TestA","Output":"=== RUN   TestA\n"}
{"Action":"output","Package":"p","Test":"TestA","Output":"    a_test.go:9: needs root\n"}
{"Action":"output","Package":"p","Test":"TestA","Output":"--- SKIP: TestA (0.00s)\n"}
{"Action":"skip","Package":"p","Test":"TestA"}
{"Action":"output","Package":"p","Test":"TestB","Output":"    b_test.go:3: quiet\n"}
{"Action":"pass","Package":"p","Test":"TestB"}
{"Action":"output","Package":"p","Test":"TestC","Output":"    c_test.go:4: broke\n"}
{"Action":"fail","Package":"p","Test":"TestC"}
{"Action":"output","Package":"p","Output":"PASS\n"}
{"Action":"output","Package":"p","Output":"FAIL\tp\t0.1s\n"}
{"Action":"fail","Package":"p"}
`
	var out strings.Builder
	skipped := summarize(strings.NewReader(in), &out, false)
	if len(skipped) != 1 || skipped[key{"p", "TestA"}] != "a_test.go:9: needs root" {
		t.Fatalf("skipped %v", skipped)
	}
	if got := out.String(); got != "    c_test.go:4: broke\nFAIL\tp\t0.1s\n" {
		t.Fatalf("output %q", got)
	}
	out.Reset()
	if skipped := summarize(strings.NewReader(in), &out, true); len(skipped) != 1 || !strings.Contains(out.String(), "b_test.go:3: quiet") {
		t.Fatalf("verbose: skipped %v, output %q", skipped, out.String())
	}
	var rep strings.Builder
	report(&rep, skipped)
	if !strings.Contains(rep.String(), "1 tests skipped\n  SKIP p TestA: a_test.go:9: needs root\n") {
		t.Fatalf("report %q", rep.String())
	}
}
