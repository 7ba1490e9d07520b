package registration

// Status reports kubelet's last verdict: notified is false until kubelet has
// called NotifyRegistrationStatus; errMsg is kubelet's reason for a refusal.
func (s *Server) Status() (notified, registered bool, errMsg string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.notified, s.registered, s.lastError
}
