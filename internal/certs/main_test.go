package certs

import (
	"io"
	"log"
	"os"
	"testing"

	legolog "github.com/go-acme/lego/v4/log"
)

func TestMain(m *testing.M) {
	// lego logs through a package logger of its own; keep test output readable.
	if os.Getenv("CERTS_LEGO_LOG") == "" {
		legolog.Logger = log.New(io.Discard, "", 0)
	}
	os.Exit(m.Run())
}
