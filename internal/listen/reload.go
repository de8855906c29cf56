package listen

import "golang.org/x/time/rate"

// SetLimits changes the listener-wide cap (0: none), the per-IP cap (0:
// none) and the per-IP connection rate (0: off) for connections accepted
// from now on. Open connections stay: a lower cap refuses new ones until
// enough have left. A reload calls it.
func (l *Listener) SetLimits(maxConns, maxPerIP int, r rate.Limit, burst int) {
	lim := l.limits
	if r > 0 && burst < 1 {
		burst = 1
	}
	lim.mu.Lock()
	defer lim.mu.Unlock()
	lim.maxTotal, lim.maxPerIP = maxConns, maxPerIP
	if lim.rate == r && lim.burst == burst {
		return
	}
	lim.rate, lim.burst = r, burst
	for _, st := range lim.perIP {
		switch {
		case r <= 0:
			st.lim = nil
		case st.lim == nil:
			st.lim = rate.NewLimiter(r, burst)
		default:
			st.lim.SetLimit(r)
			st.lim.SetBurst(burst)
		}
	}
}
