package fake

import "sync/atomic"

// Calls returns the number of Fetch calls so far, failed ones included.
func (f *Fake) Calls() int64 { return f.calls.Load() }

// ObjectFetches returns how often objectName was read for namespace, that is
// how many Fetch calls got past fault injection and read it.
func (f *Fake) ObjectFetches(namespace, objectName string) int64 {
	if c, ok := f.fetches.Load(namespace + "/" + objectName); ok {
		return c.(*atomic.Int64).Load()
	}
	return 0
}
