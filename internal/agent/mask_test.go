package agent

import (
	"strings"
	"testing"
)

// maskScript prints the token in the ways a command leaks a secret: as it
// is, split across two writes, in base64, on stderr; after SIGHUP (sent
// once the new files are in) the new token and the old one.
const maskScript = `t="$SECRETFS_TARGET/token"
trap 'changed=1' HUP
echo "a:$(cat "$t")"
printf 'b:tok-Al'; sleep 0.1; printf 'pha-71\n'
printf %s "$(cat "$t")" | base64 | sed 's/^/c:/'
echo "d:$(cat "$t")" >&2
echo "ready"
while [ -z "$changed" ]; do sleep 0.05; done
echo "e:$(cat "$t")"
echo "f:tok-Alpha-71"
echo "g:not-a-secret"
`

// The command's stdout and stderr pass through the filter: every form of
// the old and the new token is replaced, whatever the write boundaries.
func TestRunMask(t *testing.T) {
	for _, masked := range []bool{true, false} {
		e := newRunEnv(t, "signal:HUP", maskScript)
		e.hc.Mask, e.hc.MaskBase64 = masked, masked
		e.stdout = &syncBuffer{}
		e.setToken("tok-Alpha-71")
		e.start()
		e.waitFor("the command's first lines", func() bool { return strings.Contains(e.stdout.String(), "ready") })
		e.setToken("tok-Beta-42")
		if code := e.wait(); code != 0 {
			t.Fatalf("mask %v: exit code %d", masked, code)
		}
		// stdout, then the log with the command's stderr.
		log := e.stdout.String() + e.log.String()
		if !masked { // the script does print the values: the test can fail
			for _, want := range []string{"a:tok-Alpha-71", "b:tok-Alpha-71", "c:dG9rLUFscGhhLTcx", "d:tok-Alpha-71", "e:tok-Beta-42"} {
				if !strings.Contains(log, want+"\n") {
					t.Errorf("without --mask the output lacks %q:\n%s", want, log)
				}
			}
			continue
		}
		for _, leak := range []string{"tok-Alpha-71", "tok-Beta-42", "dG9rLUFscGhhLTcx", "dG9rLUJldGEtNDI"} {
			if strings.Contains(log, leak) {
				t.Errorf("the output holds %q:\n%s", leak, log)
			}
		}
		for _, want := range []string{"a:***", "b:***", "c:***", "d:***", "e:***", "f:***", "g:not-a-secret"} {
			if !strings.Contains(log, want+"\n") {
				t.Errorf("the output lacks %q:\n%s", want, log)
			}
		}
	}
}
