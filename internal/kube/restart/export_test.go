package restart

// WaitIdle waits until no job is queued or running.
func (r *Restarter) WaitIdle() {
	r.mu.Lock()
	for r.busy > 0 {
		r.idle.Wait()
	}
	r.mu.Unlock()
}
