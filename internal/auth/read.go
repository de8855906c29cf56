package auth

import "github.com/moat-mqtt/moat/internal/acl"

// CanRead reports whether c may receive messages on topic under this
// scope, as deliveries are checked (offline tools ask it too).
func (s *Scope) CanRead(c *acl.Client, topic string) bool { return s.canRead(c, topic) }
