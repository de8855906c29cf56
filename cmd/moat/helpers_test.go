package main

import (
	"net"
	"testing"

	"github.com/moat-mqtt/moat/internal/moattest"
)

// writeTestCert writes server.crt and server.key (127.0.0.1) into dir.
func writeTestCert(t *testing.T, dir string) (certFile, keyFile string) {
	t.Helper()
	return moattest.WriteServerFiles(t, dir, "server")
}

// freeTCPPort is a port that was free a moment ago on 127.0.0.1.
func freeTCPPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
