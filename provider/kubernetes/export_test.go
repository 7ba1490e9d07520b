package kubernetes

// OpenWatches is the number of API watch streams open now.
func (p *Provider) OpenWatches() int { return int(p.streams.Load()) }

// sharedWatches is the number of (namespace, Secret, service account)
// watches held by at least one volume.
func (p *Provider) sharedWatches() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.watches)
}
