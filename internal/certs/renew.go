package certs

import (
	"errors"
	"strings"
	"time"

	"github.com/go-acme/lego/v4/acme"
	"github.com/go-acme/lego/v4/acme/api"
	"github.com/go-acme/lego/v4/certificate"
)

// DefaultBackoff returns the waits after the 1st, 2nd, 3rd and later
// consecutive failures, as Let's Encrypt's integration guide advises.
func DefaultBackoff() []time.Duration {
	return []time.Duration{time.Minute, 10 * time.Minute, 100 * time.Minute, 24 * time.Hour}
}

// fallbackRenewAt is when to renew without ARI: when a third of the lifetime
// is left, or half for lifetimes of 10 days or less. It never assumes 90 days.
func fallbackRenewAt(notBefore, notAfter time.Time) time.Time {
	life := notAfter.Sub(notBefore)
	if life <= 0 {
		return notBefore
	}
	left := life / 3
	if life <= 10*24*time.Hour {
		left = life / 2
	}
	return notAfter.Add(-left)
}

// emergencyRenewAt is the latest moment any advice may push renewal to: a
// twentieth of the lifetime before expiry.
func emergencyRenewAt(notBefore, notAfter time.Time) time.Time {
	return notAfter.Add(-notAfter.Sub(notBefore) / 20)
}

// planRenewal decides when to renew a certificate valid from notBefore to
// notAfter. ari is the CA's renewal info (nil when unavailable); nextCheck is
// how long until ARI is asked again. The ARI window wins when it is sane
// (RFC 9773 selection); otherwise the lifetime fallback applies; either is
// capped at the emergency point.
func planRenewal(now, notBefore, notAfter time.Time, ari *certificate.RenewalInfoResponse, nextCheck time.Duration) time.Time {
	at := fallbackRenewAt(notBefore, notAfter)
	if ari != nil {
		w := ari.SuggestedWindow
		if !w.Start.IsZero() && !w.End.Before(w.Start) && w.Start.Before(notAfter) {
			if t := ari.ShouldRenewAt(now, nextCheck); t != nil {
				at = *t
			} else {
				// The random pick lies beyond the next check; it is redrawn then.
				at = now.Add(nextCheck)
				if w.Start.After(at) {
					at = w.Start
				}
			}
		}
	}
	if em := emergencyRenewAt(notBefore, notAfter); at.After(em) {
		at = em
	}
	return at
}

// backoffFor returns the wait after the n-th consecutive failure (n >= 1),
// stretched to the server's Retry-After when that is longer.
func backoffFor(schedule []time.Duration, n int, err error) time.Duration {
	if len(schedule) == 0 {
		schedule = DefaultBackoff()
	}
	i := min(max(n-1, 0), len(schedule)-1)
	d := schedule[i]
	if ra, ok := retryAfter(err); ok && ra > d {
		d = ra
	}
	return d
}

// retryAfter extracts a rate-limit Retry-After from an ACME error.
func retryAfter(err error) (time.Duration, bool) {
	var rl *acme.RateLimitedError
	if !errors.As(err, &rl) || rl.RetryAfter == "" {
		return 0, false
	}
	d, perr := api.ParseRetryAfter(rl.RetryAfter)
	if perr != nil || d <= 0 {
		return 0, false
	}
	// A hostile or broken header must not park renewal for ever.
	return min(d, 7*24*time.Hour), true
}

// reason turns an ACME/DNS error into one line an operator can act on.
func reason(err error) string {
	var rl *acme.RateLimitedError
	if errors.As(err, &rl) {
		return "rate limited by the CA"
	}
	s := err.Error()
	switch {
	case strings.Contains(s, "Authentication error") || strings.Contains(s, "[status code 403]") || strings.Contains(s, "[status code 401]"):
		return "Cloudflare rejected the API token (it needs Zone:Read and DNS:Edit on the zone)"
	case strings.Contains(s, "zone could not be found") || strings.Contains(s, "ambiguous zone name"):
		return "Cloudflare has no (single) zone for this name: check the domain and the token's zone access"
	case strings.Contains(s, "could not find zone") || strings.Contains(s, "could not find the start of authority"):
		return "DNS has no zone (SOA) for this name: check the domain and the resolvers"
	case strings.Contains(s, "time limit exceeded") || strings.Contains(s, "propagation"):
		return "DNS propagation timeout: the TXT record did not show on the resolvers in time"
	}
	var pd *acme.ProblemDetails
	if errors.As(err, &pd) {
		return "the CA refused the request (" + strings.TrimPrefix(pd.Type, "urn:ietf:params:acme:error:") + ")"
	}
	return "certificate request failed"
}
