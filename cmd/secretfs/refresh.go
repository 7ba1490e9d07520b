package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/secretfs/secretfs/driver"
	"github.com/secretfs/secretfs/internal/unixsock"
)

// runRefresh asks the driver on this node to refresh one class's or one
// pod's volumes now (see driver.RequestRefresh for how requests are bounded).
func runRefresh(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("refresh", "Refresh the volumes of one class or one pod on this node now, without waiting for the rotation interval. Requests for one class or pod coalesce, and each is refreshed at most once per -min-rotation-interval of the driver.", stdout)
	socket := fs.String("socket", defaultStatusSocket, "the driver's status socket (status.sock next to its CSI socket, see driver -status-socket)")
	var t driver.RefreshTarget
	fs.StringVar(&t.Namespace, "namespace", "", "the namespace of the class or pod (required)")
	fs.StringVar(&t.Class, "class", "", "refresh every volume of this SecretProviderClass on this node")
	fs.StringVar(&t.Pod, "pod", "", "refresh every volume of this pod")
	timeout := fs.Duration("timeout", 5*time.Second, "how long to wait for the driver")
	if code, ok := parse(fs, args, stderr); !ok {
		return code
	}
	if t.Namespace == "" || (t.Class == "") == (t.Pod == "") {
		return fail(stderr, fs, 2, "give -namespace and exactly one of -class and -pod")
	}
	path, err := unixsock.Parse(*socket)
	if err != nil {
		return fail(stderr, fs, 2, "-socket: %v", err)
	}
	reply, err := requestRefresh(path, t, *timeout)
	if err != nil {
		return fail(stderr, fs, 1, "%v", err)
	}
	what := "class " + t.Class
	if t.Pod != "" {
		what = "pod " + t.Pod
	}
	fmt.Fprintf(stdout, "refresh of %s in namespace %s requested: %d volume(s) on this node; see `secretfs status -o json` (lastRequestedRefresh)\n",
		printable(what), printable(t.Namespace), reply.Volumes)
	return 0
}

func requestRefresh(path string, t driver.RefreshTarget, timeout time.Duration) (*driver.RefreshReply, error) {
	body, err := json.Marshal(t)
	if err != nil {
		return nil, err
	}
	resp, err := statusClient(path, timeout).Post("http://secretfs/refresh", "application/json", bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("asking the driver at %s: %w (is the driver running, and is this its -status-socket?)", path, err)
	}
	defer resp.Body.Close()
	var reply driver.RefreshReply
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&reply); err != nil {
		return nil, fmt.Errorf("the driver at %s answered %s", path, resp.Status)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("the driver refused: %s", printable(reply.Error))
	}
	return &reply, nil
}
