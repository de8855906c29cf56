package broker

// Records counts the per-client records held: mochi's clients and what
// Moat adds beside them. Each is bounded by the connections (and the
// persistent sessions) the broker holds; tests check that they return to
// their baseline once clients are gone.
type Records struct {
	Clients    int // mochi's client entries (connected and persistent)
	Identities int // auth identities by client id
	Approved   int // CONNECTs approved, not yet claimed
	Sessions   int // listener sessions tracked for Close
	Counted    int // connections counted against the listener limits
	Networks   int // per-IP limiter entries
}

// Records returns the current counts.
func (b *Broker) Records() Records {
	var r Records
	r.Clients = b.srv.Clients.Len()
	r.Identities, r.Approved = b.auth.Records()
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, l := range b.listeners {
		r.Sessions += l.Sessions()
		conns, ips := l.Stats()
		r.Counted += conns
		r.Networks += ips
	}
	return r
}

// recordCounts is Records for moat_client_records.
func (b *Broker) recordCounts() map[string]int {
	if b.auth == nil || b.srv == nil {
		return nil // not built yet
	}
	r := b.Records()
	return map[string]int{
		"clients": r.Clients, "identities": r.Identities, "approved": r.Approved,
		"sessions": r.Sessions, "counted": r.Counted, "networks": r.Networks,
	}
}
