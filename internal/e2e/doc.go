// Package e2e holds end-to-end tests of the moat binary: each test writes a
// configuration into a temporary directory, runs `moat serve -c` as a child
// process on 127.0.0.1 and talks to it as real clients do.
package e2e
