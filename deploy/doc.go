// Package deploy holds no code: its tests check the deployment files next to
// it (compose files, their Moat configs, the systemd unit) and the
// repository's Dockerfile.
package deploy
