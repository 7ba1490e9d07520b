package secretsync

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"github.com/secretfs/secretfs/provider"
	"maps"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/secretfs/secretfs/driver/class"
)

// ManagedLabel marks a Secret as written by a Secrets Store driver: the same
// label the Secrets Store CSI Driver sets, so tools that look for it find
// ours, and a Secret without it is never touched.
const ManagedLabel = "secrets-store.csi.k8s.io/managed"

// Bounds on what one class can make the driver build and send. The data
// itself is already bounded by the volume's tmpfs size; the API server
// refuses Secrets over 1 MiB, so anything larger is refused before the call.
const (
	MaxSecretObjects = 64      // spec.secretObjects entries acted on per class
	MaxKeys          = 256     // data entries per secretObjects entry
	MaxSecretBytes   = 1 << 20 // data bytes per Secret
)

// desired is the Secret one secretObjects entry asks for, built from the
// files of one volume. Its data belongs to its batch: release it when done.
type desired struct {
	name        string
	typ         corev1.SecretType
	labels      map[string]string
	annotations map[string]string
	data        map[string][]byte
	// size is the bytes of data (what one write of it sends).
	size int64
	// hash identifies the content (type, labels, annotations, data): equal
	// hashes need no write.
	hash [32]byte

	batch    *batch
	released bool // guarded by Syncer.mu, like every desired the Syncer holds
}

// release gives d's data back; the batch wipes it and its share of the node
// budget when the last Secret built with it is released. Once only.
func (d *desired) release() {
	if d == nil || d.released {
		return
	}
	d.released = true
	if d.batch != nil {
		d.batch.release()
	}
}

// buildError is a secretObjects entry that cannot be built: it names the
// entry and what to change.
type buildError struct {
	secret string
	msg    string
	// refused: the class asks for something a class may not (policy.go),
	// posted as ReasonRefused.
	refused bool
}

func (e *buildError) Error() string {
	if e.secret == "" {
		return e.msg
	}
	return fmt.Sprintf("Secret %q: %s", e.secret, e.msg)
}

// build returns the Secrets the class's secretObjects ask for, without a
// per-class cap or node budget (see buildWith).
func build(objs []class.SecretObject, files []provider.File) ([]*desired, []error) {
	return buildWith(objs, files, limits{})
}

// buildWith returns the Secrets the class's secretObjects ask for, taking
// each data entry's value from the volume file whose path is its objectName
// (the object's file name or alias, as the Secrets Store CSI Driver
// resolves it). Entries that cannot be built are returned as errors; the
// others are still built. Before it copies anything it checks lim (see
// batch.go): what the class makes it hold, each file counted once however
// many Secrets use it, within the per-class cap and the node budget.
func buildWith(objs []class.SecretObject, files []provider.File, lim limits) ([]*desired, []error) {
	var errs []error
	if len(objs) > MaxSecretObjects {
		errs = append(errs, &buildError{msg: fmt.Sprintf("the class has %d secretObjects; only the first %d are synced: split the class", len(objs), MaxSecretObjects)})
		objs = objs[:MaxSecretObjects]
	}
	byPath := make(map[string][]byte, len(files))
	for _, f := range files {
		byPath[f.Path] = f.Contents
	}
	b, err := newBatch(objs, byPath, lim)
	if err != nil {
		return nil, append(errs, err)
	}
	seen := map[string]bool{}
	var out []*desired
	for i := range objs {
		d, err := buildOne(&objs[i], b)
		if err != nil {
			if many, ok := err.(interface{ Unwrap() []error }); ok {
				errs = append(errs, many.Unwrap()...)
			} else {
				errs = append(errs, err)
			}
			continue
		}
		if seen[d.name] {
			errs = append(errs, &buildError{secret: d.name, msg: "declared twice in spec.secretObjects; only the first entry is synced"})
			continue
		}
		seen[d.name] = true
		out = append(out, d)
	}
	if err := b.settle(len(out)); err != nil {
		return nil, append(errs, err)
	}
	for _, d := range out {
		d.batch = b
	}
	return out, errs
}

func buildOne(o *class.SecretObject, b *batch) (*desired, error) {
	name := strings.TrimSpace(o.SecretName)
	if name == "" {
		return nil, &buildError{msg: "a spec.secretObjects entry has no secretName"}
	}
	if msgs := validation.IsDNS1123Subdomain(name); len(msgs) > 0 {
		return nil, &buildError{secret: clip(name), msg: "secretName is not a valid Secret name: " + strings.Join(msgs, "; ")}
	}
	typ := corev1.SecretType(strings.TrimSpace(o.Type))
	if typ == "" {
		typ = corev1.SecretTypeOpaque
	}
	if errs := checkPolicy(name, typ, o.Labels, o.Annotations); len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if err := checkMeta(name, o.Labels, o.Annotations); err != nil {
		return nil, err
	}
	if len(o.Data) == 0 {
		return nil, &buildError{secret: name, msg: "no data entries: list the objects to copy under data (objectName, key)"}
	}
	if len(o.Data) > MaxKeys {
		return nil, &buildError{secret: name, msg: fmt.Sprintf("%d data entries, more than %d", len(o.Data), MaxKeys)}
	}
	d := &desired{name: name, typ: typ, data: make(map[string][]byte, len(o.Data))}
	var size int
	for _, e := range o.Data {
		obj, key := strings.TrimSpace(e.ObjectName), strings.TrimSpace(e.Key)
		switch {
		case obj == "":
			return nil, &buildError{secret: name, msg: "a data entry has no objectName"}
		case key == "":
			return nil, &buildError{secret: name, msg: fmt.Sprintf("the data entry for object %q has no key", clip(obj))}
		}
		if msgs := validation.IsConfigMapKey(key); len(msgs) > 0 {
			return nil, &buildError{secret: name, msg: fmt.Sprintf("key %q is not a valid Secret key: %s", clip(key), strings.Join(msgs, "; "))}
		}
		if _, dup := d.data[key]; dup {
			return nil, &buildError{secret: name, msg: fmt.Sprintf("key %q is listed twice", key)}
		}
		if !b.has(obj) {
			return nil, &buildError{secret: name, msg: fmt.Sprintf("file matching objectName %q not found in the volume: objectName must be an object's file name (its objectAlias, if it has one)", clip(obj))}
		}
		content, err := b.value(obj, key, typ == corev1.SecretTypeTLS)
		if err != nil {
			return nil, &buildError{secret: name, msg: fmt.Sprintf("key %q from object %q: %v", key, obj, err)}
		}
		size += len(key) + len(content)
		if size > MaxSecretBytes {
			return nil, &buildError{secret: name, msg: fmt.Sprintf("more than %d bytes of data, which the API server refuses", MaxSecretBytes)}
		}
		d.data[key] = content
	}
	d.labels = maps.Clone(o.Labels)
	if d.labels == nil {
		d.labels = map[string]string{}
	}
	d.labels[ManagedLabel] = "true"
	d.annotations = maps.Clone(o.Annotations)
	for _, v := range d.data {
		d.size += int64(len(v))
	}
	d.hash = d.contentHash()
	return d, nil
}

// contentHash hashes everything the driver writes into the Secret, with
// lengths, so that no two different contents collide by concatenation.
func (d *desired) contentHash() [32]byte {
	h := sha256.New()
	var n [8]byte
	put := func(s string) {
		binary.BigEndian.PutUint64(n[:], uint64(len(s)))
		h.Write(n[:])
		h.Write([]byte(s))
	}
	putMap := func(m map[string]string) {
		put(fmt.Sprint(len(m)))
		for _, k := range slices.Sorted(maps.Keys(m)) {
			put(k)
			put(m[k])
		}
	}
	put(string(d.typ))
	putMap(d.labels)
	putMap(d.annotations)
	put(fmt.Sprint(len(d.data)))
	for _, k := range slices.Sorted(maps.Keys(d.data)) {
		put(k)
		binary.BigEndian.PutUint64(n[:], uint64(len(d.data[k])))
		h.Write(n[:])
		h.Write(d.data[k])
	}
	var sum [32]byte
	h.Sum(sum[:0])
	return sum
}

// clip shortens a class-supplied string for a message.
func clip(s string) string {
	if len(s) > 128 {
		return s[:125] + "..."
	}
	return s
}
