// Package limits enforces Moat's resource limits on what one client or one
// user may make the broker hold: topic, filter and client-id lengths, topic
// depth, CONNECT size, subscriptions per client, sessions and retained
// messages per user. Its mochi hook runs before the auth hook, so a refusal
// costs no password verification; it can only refuse, never grant.
//
// Every record that reaches the store passes these checks first: the store's
// keys (a topic, or a client id and a filter) stay far below bbolt's 32 KiB
// key limit, so one client cannot make a store write fail for everyone.
package limits

import "strings"

// Settings are the limits in force. A zero field disables that limit.
type Settings struct {
	// MaxTopicLength bounds topic names and subscription filters, in bytes.
	MaxTopicLength int
	// MaxTopicLevels bounds the number of levels of a topic or filter.
	MaxTopicLevels int
	// MaxClientIDLength bounds client identifiers, in bytes.
	MaxClientIDLength int
	// MaxConnectSize bounds a CONNECT packet (Will, properties and
	// credentials included), in bytes after the fixed header.
	MaxConnectSize int
	// MaxSubscriptions bounds the subscriptions one session holds.
	MaxSubscriptions int
	// MaxSessionsPerUser bounds the sessions, live or offline, one
	// username holds (anonymous clients count as one user).
	MaxSessionsPerUser int
	// MaxRetainedPerUser and MaxRetainedBytesPerUser bound the retained
	// messages (count, and topic plus payload bytes) one user has stored.
	MaxRetainedPerUser      int
	MaxRetainedBytesPerUser int64
}

// Setting names, used as metric labels and in log lines.
const (
	LimitTopicLength       = "max_topic_length"
	LimitTopicLevels       = "max_topic_levels"
	LimitClientIDLength    = "max_client_id_length"
	LimitConnectSize       = "max_connect_size"
	LimitSubscriptions     = "max_subscriptions_per_client"
	LimitSessionsPerUser   = "max_sessions_per_user"
	LimitRetainedPerUser   = "max_retained_per_user"
	LimitRetainedBytesUser = "max_retained_bytes_per_user"
	LimitAuthMethod        = "authentication_method"
)

// CheckTopic returns the name of the limit a topic name or filter breaks,
// or "". It stops counting levels at the limit, so a 64 KiB filter of
// 30,000 levels costs one bounded scan.
func (s Settings) CheckTopic(t string) string {
	if s.MaxTopicLength > 0 && len(t) > s.MaxTopicLength {
		return LimitTopicLength
	}
	if s.MaxTopicLevels > 0 && levelsOver(t, s.MaxTopicLevels) {
		return LimitTopicLevels
	}
	return ""
}

// levelsOver reports whether t has more than max levels.
func levelsOver(t string, max int) bool {
	levels := 1
	for i := 0; i < len(t); i++ {
		if t[i] == '/' {
			levels++
			if levels > max {
				return true
			}
		}
	}
	return false
}

// CheckClientID returns the limit a client identifier breaks, or "".
func (s Settings) CheckClientID(id string) string {
	if s.MaxClientIDLength > 0 && len(id) > s.MaxClientIDLength {
		return LimitClientIDLength
	}
	return ""
}

// levelCount is the number of levels of t, for log lines (bounded cost).
func levelCount(t string) int { return strings.Count(t, "/") + 1 }
