// Command pause is the pod sandbox image of the local test cluster: it holds
// the pod's namespaces and does nothing until it is told to stop.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	// As PID 1, signals without a handler are ignored: handle them.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
}
