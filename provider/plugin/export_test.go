package plugin

// knownProviders is the number of provider names the client remembers.
func (c *Client) knownProviders() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.providers)
}
