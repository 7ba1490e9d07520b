package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// withEnv reads a .env file (KEY=VALUE lines; '#' comments; values bare,
// 'single-quoted' or "double-quoted" with Go escapes), adds it to the
// environment and becomes `testapp args...`: the way an app consumes a
// templated .env at start.
func withEnv(file string, args []string) error {
	data, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	env := os.Environ()
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		key, value, ok := strings.Cut(strings.TrimPrefix(line, "export "), "=")
		if !ok || key == "" {
			return fmt.Errorf("%s line %d: not KEY=VALUE", file, n)
		}
		switch {
		case len(value) >= 2 && value[0] == '\'' && value[len(value)-1] == '\'':
			value = value[1 : len(value)-1]
		case len(value) >= 2 && value[0] == '"':
			if value, err = strconv.Unquote(value); err != nil {
				return fmt.Errorf("%s line %d: bad double-quoted value", file, n)
			}
		}
		env = append(env, key+"="+value)
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	return syscall.Exec(self, append([]string{self}, args...), env)
}
