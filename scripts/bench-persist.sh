#!/bin/sh
# Durable retained messages through gocryptfs: Moat against mosquitto 2.0
# (persistence true, autosave_interval 1, autosave_on_changes true, on a
# gocryptfs mount made by hand). Prints a table of medians; asserts nothing.
# Needs root (FUSE), fuse3 and Debian's mosquitto. Options go to
# scripts/benchpersist (-reps, -dur, -kill-set, -start-set).
set -eu
cd "$(dirname "$0")/.."
[ -x bin/gocryptfs ] || CGO_ENABLED=0 go build -trimpath -o bin/gocryptfs github.com/rfjakob/gocryptfs/v2
CGO_ENABLED=0 go build -trimpath -o bin/moat ./cmd/moat
go build -o bin/benchpersist ./scripts/benchpersist
exec bin/benchpersist -moat bin/moat -gocryptfs bin/gocryptfs -mosquitto "$(command -v mosquitto || echo /usr/sbin/mosquitto)" "$@"
