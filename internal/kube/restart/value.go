package restart

// The restart value. It must be the same on every node that sees one
// change (so one change makes one rollout), and it must change when the
// content does, so it is derived from the class and the content itself:
// object versions would do on some backends, but not on all (an external
// provider need not report them, and a version can move without the
// content changing, which two nodes refreshing at different times would
// then write as two values).
//
// The value sits in a pod template, where anyone who may read the
// workload can see it, which is often more people than may read the
// Secret. A plain hash of a guessable secret (a PIN, a short password)
// could be found by trying every candidate, so the digest of the content
// is stretched with PBKDF2 before it is written: each guess costs what
// valueIterations rounds of HMAC-SHA-256 cost. It is a delay, not a
// guarantee: a class whose content is guessable among a few million
// candidates should not restart on change.

import (
	"cmp"
	"crypto/pbkdf2"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"slices"

	"github.com/secretfs/secretfs/provider"
)

// valueIterations is PBKDF2's iteration count: about 20 ms per value on
// one core of the driver's nodes, paid once per change and node.
const valueIterations = 100_000

// Digest is the SHA-256 of a class's identity and its files (paths, modes
// and contents, in path order), each length-prefixed.
func Digest(namespace, class string, files []provider.File) [32]byte {
	h := sha256.New()
	var n [8]byte
	put := func(b []byte) {
		binary.BigEndian.PutUint64(n[:], uint64(len(b)))
		h.Write(n[:])
		h.Write(b)
	}
	put([]byte(namespace))
	put([]byte(class))
	order := make([]int, len(files))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int { return cmp.Compare(files[a].Path, files[b].Path) })
	for _, i := range order {
		put([]byte(files[i].Path))
		binary.BigEndian.PutUint64(n[:], uint64(files[i].Mode))
		h.Write(n[:])
		put(files[i].Contents)
	}
	var sum [32]byte
	h.Sum(sum[:0])
	return sum
}

// Value is the annotation value of a digest: 32 hex digits.
func Value(sum [32]byte) string {
	k, err := pbkdf2.Key(sha256.New, string(sum[:]), []byte(Annotation), valueIterations, 16)
	if err != nil { // only for lengths and counts out of FIPS bounds
		panic(err)
	}
	return hex.EncodeToString(k)
}
