package driver

import "sync"

// keyLock is a set of per-key locks. gRPC calls use TryLock, so a second
// call for a volume that is busy fails fast with Aborted and kubelet retries;
// background refreshes wait with Lock.
type keyLock struct {
	mu   sync.Mutex
	held map[string]chan struct{} // closed on unlock
}

// TryLock takes the lock for key if it is free.
func (l *keyLock) TryLock(key string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, busy := l.held[key]; busy {
		return false
	}
	if l.held == nil {
		l.held = map[string]chan struct{}{}
	}
	l.held[key] = make(chan struct{})
	return true
}

// Lock waits for the lock for key; it gives up and returns false when
// cancel is closed first.
func (l *keyLock) Lock(key string, cancel <-chan struct{}) bool {
	for {
		l.mu.Lock()
		ch, busy := l.held[key]
		if !busy {
			if l.held == nil {
				l.held = map[string]chan struct{}{}
			}
			l.held[key] = make(chan struct{})
			l.mu.Unlock()
			return true
		}
		l.mu.Unlock()
		select {
		case <-ch:
		case <-cancel:
			return false
		}
	}
}

// Unlock releases key.
func (l *keyLock) Unlock(key string) {
	l.mu.Lock()
	ch := l.held[key]
	delete(l.held, key)
	l.mu.Unlock()
	if ch != nil {
		close(ch)
	}
}
