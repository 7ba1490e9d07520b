package main

import (
	"fmt"
	"runtime"

	"github.com/secretfs/secretfs/driver"
)

func versionString() string {
	return fmt.Sprintf("secretfs %s (%s %s/%s)", driver.Version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
