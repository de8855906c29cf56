// Package layers holds no code: its test fails when a package of Moat
// imports another one sideways, against the layering in layers_test.go.
//
// The broker wiring (internal/broker) knows the parts; the parts know
// nothing of each other except where the table says so; cmd/moat wires
// the broker and the command-line tools; test-support packages are for
// tests and benchmarks only.
package layers
