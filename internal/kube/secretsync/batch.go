package secretsync

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc/codes"

	"github.com/secretfs/secretfs/driver/budget"
	"github.com/secretfs/secretfs/driver/class"
	"github.com/secretfs/secretfs/provider"
)

// MaxClassBytesFlag is the driver flag of Options.MaxClassBytes; errors
// name it.
const MaxClassBytesFlag = "--sync-secrets-max-bytes"

// DefaultMaxClassBytes is the default per-class cap: the size of one
// Secret the API server accepts.
const DefaultMaxClassBytes = 1 << 20

// MaxInflightBytes bounds the Secret data the node's writes send at once
// (each write counts at most this much, so a write is never kept out).
const MaxInflightBytes = 4 << 20

// limits bound what one build may hold.
type limits struct {
	// maxClassBytes caps the bytes of the distinct files a class's Secrets
	// read, each counted once (0: no cap).
	maxClassBytes int64
	// budget is the node budget the held bytes are charged to (nil: none).
	budget *budget.Budget
	// where names the class for messages: `class "c" in namespace "n"`.
	where string
}

// A batch holds the data of the Secrets built from one volume's files in
// one Changed: one copy of each file used as it is, however many Secrets
// use it, and one of each part a kubernetes.io/tls split derives from a
// file. Its bytes are charged to the node budget (they are the driver's
// memory, like the volumes' tmpfs pages) from before the first copy until
// the last Secret built with it is released: once written (only the hash
// stays), replaced by newer content, or forgotten with its last volume.
type batch struct {
	files  map[string][]byte // the volume's files, by path (not ours)
	budget *budget.Budget
	id     string // in the budget
	where  string

	raw     map[string][]byte // object -> copy
	derived map[string][]byte // object "\x00" key -> tls part
	held    int64

	mu   sync.Mutex
	refs int
}

var batchSeq atomic.Uint64

// newBatch checks the class against lim before anything is copied: the
// distinct files its (first MaxSecretObjects) secretObjects read, each
// counted once, must be within the per-class cap, and that much must fit in
// the node budget, where it is reserved.
func newBatch(objs []class.SecretObject, files map[string][]byte, lim limits) (*batch, error) {
	b := &batch{files: files, budget: lim.budget, where: lim.where, raw: map[string][]byte{}, derived: map[string][]byte{}}
	used := map[string]bool{}
	var need int64
	for i := range objs {
		for _, e := range objs[i].Data {
			obj := strings.TrimSpace(e.ObjectName)
			if data, ok := files[obj]; ok && !used[obj] {
				used[obj] = true
				need += int64(len(data))
			}
		}
	}
	if lim.maxClassBytes > 0 && need > lim.maxClassBytes {
		return nil, provider.Errorf(codes.ResourceExhausted,
			"%s: its secretObjects read %d bytes of files (each file counted once), more than the per-class limit of %d bytes (driver flag %s): sync fewer or smaller objects, or split the class",
			lim.where, need, lim.maxClassBytes, MaxClassBytesFlag)
	}
	if b.budget != nil {
		b.id = fmt.Sprintf("\x00secretsync\x00%d", batchSeq.Add(1))
		if err := b.budget.Reserve(b.id, need); err != nil {
			return nil, provider.Errorf(codes.ResourceExhausted, "%s: syncing its Secrets needs %d bytes: %s", lim.where, need, err.Error())
		}
	}
	return b, nil
}

func (b *batch) has(obj string) bool {
	_, ok := b.files[obj]
	return ok
}

// value is what a Secret holds under key from object obj: for a
// kubernetes.io/tls Secret the part certPart derives, else the file as it
// is. Each is made once per batch and shared.
func (b *batch) value(obj, key string, tls bool) ([]byte, error) {
	if tls && (key == "tls.crt" || key == "tls.key") {
		k := obj + "\x00" + key
		if v, ok := b.derived[k]; ok {
			return v, nil
		}
		v, err := certPart(b.files[obj], key)
		if err != nil {
			return nil, err
		}
		b.derived[k] = v
		b.held += int64(len(v))
		return v, nil
	}
	if v, ok := b.raw[obj]; ok {
		return v, nil
	}
	v := slices.Clone(b.files[obj])
	if v == nil {
		v = []byte{}
	}
	b.raw[obj] = v
	b.held += int64(len(v))
	return v, nil
}

// settle records that refs Secrets use the batch and charges exactly what
// it holds (the TLS parts may differ a little from the files they came
// from); with none, or over the budget, it is wiped at once.
func (b *batch) settle(refs int) error {
	b.files = nil
	b.refs = refs
	if refs > 0 && b.budget != nil {
		if err := b.budget.Reserve(b.id, b.held); err != nil {
			b.refs = 0
			b.free()
			return provider.Errorf(codes.ResourceExhausted, "%s: syncing its Secrets needs %d bytes: %s", b.where, b.held, err.Error())
		}
	}
	if refs == 0 {
		b.free()
	}
	return nil
}

func (b *batch) release() {
	b.mu.Lock()
	b.refs--
	last := b.refs == 0
	b.mu.Unlock()
	if last {
		b.free()
	}
}

// free wipes the copies and gives their bytes back to the node budget.
func (b *batch) free() {
	for _, m := range []map[string][]byte{b.raw, b.derived} {
		for _, v := range m {
			clear(v)
		}
	}
	b.raw, b.derived = nil, nil
	if b.budget != nil {
		b.budget.Release(b.id)
	}
}
