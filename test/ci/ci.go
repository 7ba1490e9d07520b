// Package ci decides, for every test in the module, what a missing
// prerequisite (root, a binary, a cluster) means: in CI (CI=true, which
// .ci/run exports) the test fails, because CI installs everything and a skip
// there would hide a test that never ran; elsewhere it skips with the reason,
// and the run's summary (test/skips) lists it.
package ci

import (
	"flag"
	"os"
	"testing"
)

// In reports whether the tests run in CI: the environment variable CI is
// exactly "true" (the one spelling .ci/run and hosted CI services set).
func In() bool { return os.Getenv("CI") == "true" }

// Missing ends t because a prerequisite is missing: t.Fatalf in CI,
// t.Skipf elsewhere. format says what is missing and how to provide it.
func Missing(t testing.TB, format string, args ...any) {
	t.Helper()
	if In() {
		t.Fatalf("missing prerequisite in CI: "+format, args...)
	}
	t.Skipf(format, args...)
}

// RunOnly is for a TestMain whose prerequisites are missing: it runs only
// the test named name (which calls Missing), so the package reports a skip
// (or, in CI, a failure) instead of "ok" with nothing run.
func RunOnly(m *testing.M, name string) int {
	if !flag.Parsed() {
		flag.Parse()
	}
	for f, v := range map[string]string{"test.run": "^" + name + "$", "test.skip": "", "test.bench": "", "test.fuzz": ""} {
		if flag.Lookup(f) != nil {
			_ = flag.Set(f, v)
		}
	}
	return m.Run()
}
