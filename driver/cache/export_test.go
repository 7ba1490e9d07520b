package cache

// Stats are counts of the cache's state, for tests.
type Stats struct {
	Entries int // keys with holders or a call in flight
	Data    int // entries holding a result in memory
	Users   int // holders (volumes)
}

// Stats returns the current counts.
func (c *Cache) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := Stats{Entries: len(c.entries), Users: len(c.users)}
	for _, e := range c.entries {
		if e.data != nil {
			s.Data++
		}
	}
	return s
}
