package provider

import (
	"errors"
	"os"
	"strconv"
	"unicode/utf8"
)

// Clip shortens s to at most n bytes for a message, cut on a character
// boundary and marked with "..." when anything was cut.
func Clip(s string, n int) string {
	const mark = "..."
	if len(s) <= n {
		return s
	}
	cut := max(n-len(mark), 0)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + mark
}

// ParseFileMode reads a file permission as the Azure provider and the
// Kubernetes API spell it in a class: an octal string of at most four
// digits such as "0644" or "440". Only permission bits are allowed: no
// setuid, setgid or sticky bit. The error does not quote s.
func ParseFileMode(s string) (os.FileMode, error) {
	if s == "" || len(s) > 4 {
		return 0, errBadMode
	}
	v, err := strconv.ParseUint(s, 8, 32)
	if err != nil || v > 0o777 {
		return 0, errBadMode
	}
	return os.FileMode(v), nil
}

var errBadMode = errors.New(`must be an octal file mode between "0000" and "0777", such as "0644"`)
