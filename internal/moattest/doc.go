// Package moattest is what Moat's tests share: a log buffer, a poller
// with a deadline (Eventually) and a test certificate authority (NewCA);
// its brokertest package starts a whole broker on loopback. It imports no
// part of Moat, so every package's tests can use it. Tests only.
package moattest
