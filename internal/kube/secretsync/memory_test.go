package secretsync

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"k8s.io/apimachinery/pkg/runtime"
	k8stesting "k8s.io/client-go/testing"

	"github.com/secretfs/secretfs/driver/budget"
	"github.com/secretfs/secretfs/driver/class"
	"github.com/secretfs/secretfs/driver/hook"
	"github.com/secretfs/secretfs/provider"
)

// manySecrets is a class whose n secretObjects all copy the same file.
func manySecrets(n int, objects ...string) *class.Class {
	c := &class.Class{Name: "big", Namespace: "ns", Provider: "fake"}
	for i := range n {
		var data []class.SecretObjectData
		for _, o := range objects {
			data = append(data, class.SecretObjectData{ObjectName: o, Key: o})
		}
		c.SecretObjects = append(c.SecretObjects, class.SecretObject{SecretName: fmt.Sprint("s-", i), Data: data})
	}
	return c
}

func bigVolume(id string, c *class.Class, files ...provider.File) hook.Volume {
	return hook.Volume{ID: id, Pod: provider.Pod{Namespace: "ns", Name: "p-" + id, UID: "uid-" + id}, Class: c, Provider: "fake", Files: files}
}

func file(path string, n int, fill byte) provider.File {
	return provider.File{Path: path, Mode: 0o644, Contents: bytes.Repeat([]byte{fill}, n)}
}

// entries returns how many Secrets the syncer still holds content for.
func (s *Syncer) held() (n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range s.secrets {
		if e.want != nil || e.inflight != nil {
			n++
		}
	}
	return n
}

// After a successful write only a hash is kept, whatever the volume's
// life: no copy of the files per Secret for as long as the volume lives.
func TestWrittenContentIsNotKept(t *testing.T) {
	s, c, _ := newSyncer(t)
	v := bigVolume("v1", manySecrets(8, "a"), file("a", 64<<10, 'x'))
	s.Changed(context.Background(), v)
	if n := writes(c); n != 8 {
		t.Fatalf("%d writes, want 8", n)
	}
	if n := s.held(); n != 0 {
		t.Fatalf("%d Secrets' content still held after they were written", n)
	}
	// The same content again: no request, nothing held.
	s.Changed(context.Background(), bigVolume("v1", manySecrets(8, "a"), file("a", 64<<10, 'x')))
	if n := writes(c); n != 8 || s.held() != 0 {
		t.Fatalf("unchanged content: %d writes, %d held", n, s.held())
	}
}

// What the sync holds is in the node budget, each file once however many
// Secrets copy it, while writes are pending, and given back once written.
func TestSyncChargesNodeBudget(t *testing.T) {
	b := budget.New(1 << 20)
	release := make(chan struct{})
	s, c, ev := newSyncerWith(t, func(o *Options) { o.Budget = b; o.Wait = 1 })
	c.PrependReactor("create", "secrets", func(k8stesting.Action) (bool, runtime.Object, error) {
		<-release
		return false, nil, nil
	})
	const size = 100 << 10
	s.Changed(context.Background(), bigVolume("v1", manySecrets(MaxSecretObjects, "a"), file("a", size, 'x')))
	if used := b.Used(); used != size {
		t.Fatalf("budget holds %d bytes for %d Secrets of one %d-byte file; want the file once", used, MaxSecretObjects, size)
	}
	close(release)
	waitFor(t, func() bool { return writes(c) == MaxSecretObjects && s.held() == 0 })
	if used := b.Used(); used != 0 {
		t.Fatalf("budget holds %d bytes after every Secret was written", used)
	}
	if e := ev.all(); len(e) != 0 {
		t.Fatalf("events %q", e)
	}
}

// A sync that does not fit in the node budget is refused before anything
// is copied or sent; the pod is told, naming the flag.
func TestSyncOverNodeBudget(t *testing.T) {
	b := budget.New(64 << 10)
	s, c, ev := newSyncerWith(t, func(o *Options) { o.Budget = b })
	s.Changed(context.Background(), bigVolume("v1", manySecrets(2, "a"), file("a", 100<<10, 'x')))
	if n := requests(c); n != 0 {
		t.Fatalf("%d requests", n)
	}
	if e := ev.all(); len(e) != 1 || !strings.Contains(e[0], ReasonFailed) || !strings.Contains(e[0], budget.Flag) || !strings.Contains(e[0], `class "big"`) {
		t.Fatalf("events %q", e)
	}
	if b.Used() != 0 {
		t.Fatalf("budget holds %d", b.Used())
	}
}

// The per-class cap counts each file once: 64 Secrets of one file within
// the cap are synced; files that together exceed it are refused, naming
// the flag.
func TestSyncClassCap(t *testing.T) {
	s, c, ev := newSyncerWith(t, func(o *Options) { o.MaxClassBytes = 64 << 10 })
	s.Changed(context.Background(), bigVolume("v1", manySecrets(MaxSecretObjects, "a"), file("a", 40<<10, 'x')))
	if n := writes(c); n != MaxSecretObjects {
		t.Fatalf("%d writes for %d Secrets of one file within the cap", n, MaxSecretObjects)
	}
	s.Changed(context.Background(), bigVolume("v2", manySecrets(1, "a", "b"), file("a", 40<<10, 'x'), file("b", 40<<10, 'y')))
	if n := writes(c); n != MaxSecretObjects {
		t.Fatalf("a class over the cap was written (%d writes)", n)
	}
	e := ev.all()
	if len(e) != 1 || !strings.Contains(e[0], MaxClassBytesFlag) || !strings.Contains(e[0], "81920 bytes") || !strings.Contains(e[0], "ResourceExhausted") && !strings.Contains(e[0], "limit") {
		t.Fatalf("events %q", e)
	}
}

// A failed write keeps the newest content (charged) for the retry, which
// sends it; then only the hash stays. Content a write is sending stays
// charged until that attempt returns, and not a moment longer.
func TestFailedWriteKeepsNewestContent(t *testing.T) {
	b := budget.New(1 << 20)
	var down atomic.Bool
	down.Store(true)
	s, c, _ := newSyncerWith(t, func(o *Options) { o.Budget = b; o.Wait = 1 })
	// Each failing attempt waits inside the API call until the test lets
	// it fail, so the test knows which content is in flight.
	attempts := make(chan chan error)
	c.PrependReactor("create", "secrets", func(k8stesting.Action) (bool, runtime.Object, error) {
		if !down.Load() {
			return false, nil, nil
		}
		reply := make(chan error)
		attempts <- reply
		return true, nil, <-reply
	})
	inFlight := func() chan error {
		t.Helper()
		select {
		case reply := <-attempts:
			return reply
		case <-time.After(20 * time.Second):
			t.Fatal("no write attempt in time")
			return nil
		}
	}
	s.Changed(context.Background(), bigVolume("v1", manySecrets(1, "a"), file("a", 10, 'x')))
	first := inFlight()
	// Rotated while the first attempt is sending the old content: both are
	// charged until that attempt returns.
	s.Changed(context.Background(), bigVolume("v1", manySecrets(1, "a"), file("a", 20, 'y')))
	if s.held() != 1 || b.Used() != 30 {
		t.Fatalf("during the attempt: %d held, budget %d; want the old content in flight and the newest, 30 bytes", s.held(), b.Used())
	}
	first <- fmt.Errorf("API server down")
	// The retry sends the newest content; the old one is gone.
	second := inFlight()
	if s.held() != 1 || b.Used() != 20 {
		t.Fatalf("while failing: %d held, budget %d; want the newest content, 20 bytes", s.held(), b.Used())
	}
	down.Store(false)
	second <- fmt.Errorf("API server down")
	waitFor(t, func() bool { return s.held() == 0 })
	sec, err := c.CoreV1().Secrets("ns").Get(context.Background(), "s-0", metav1.GetOptions{})
	if err != nil || string(sec.Data["a"]) != strings.Repeat("y", 20) {
		t.Fatalf("after the retry: %v %q", err, sec.Data)
	}
	if b.Used() != 0 {
		t.Fatalf("budget holds %d after the retry wrote", b.Used())
	}
}
