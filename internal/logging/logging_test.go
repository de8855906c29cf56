package logging

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLevelFromLogType(t *testing.T) {
	tests := []struct {
		types map[string]bool
		want  slog.Level
	}{
		{nil, slog.LevelInfo},
		{map[string]bool{"all": true}, slog.LevelDebug},
		{map[string]bool{"debug": true, "error": true}, slog.LevelDebug},
		{map[string]bool{"warning": true, "error": true}, slog.LevelWarn},
		{map[string]bool{"error": true}, slog.LevelError},
		{map[string]bool{"information": true}, slog.LevelInfo},
	}
	for _, tt := range tests {
		if got := Level(tt.types); got != tt.want {
			t.Errorf("Level(%v) = %v, want %v", tt.types, got, tt.want)
		}
	}
	if Level(map[string]bool{"none": true}) <= slog.LevelError {
		t.Error("log_type none must silence errors too")
	}
}

func TestRedactsPacketsAndSecrets(t *testing.T) {
	for _, format := range []string{"text", "json"} {
		var buf bytes.Buffer
		l, err := New(Options{Format: format, Types: map[string]bool{"all": true}, Stderr: &buf})
		if err != nil {
			t.Fatal(err)
		}
		l.Warn("failed", "pk", struct{ Payload []byte }{[]byte("SECRET-PAYLOAD")}, "password", "SECRET-PW", "client", "c1")
		out := buf.String()
		if strings.Contains(out, "SECRET") || !strings.Contains(out, "c1") || !strings.Contains(out, "[redacted]") {
			t.Fatalf("%s: %s", format, out)
		}
		if format == "json" && !strings.HasPrefix(out, "{") {
			t.Fatalf("json format wrote %s", out)
		}
	}
}

func TestFileDestinationReopens(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "moat.log")
	l, err := New(Options{Dests: []Dest{{Kind: "file", Path: path}}})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	l.Info("first")
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	if err := l.Reopen(); err != nil {
		t.Fatal(err)
	}
	l.Info("second")
	old, _ := os.ReadFile(path + ".1")
	cur, _ := os.ReadFile(path)
	if !strings.Contains(string(old), "first") || !strings.Contains(string(cur), "second") || strings.Contains(string(cur), "first") {
		t.Fatalf("rotated %q, current %q", old, cur)
	}
	if st, _ := os.Stat(path); st.Mode().Perm()&0o007 != 0 {
		t.Fatalf("log file mode %v is world-accessible", st.Mode().Perm())
	}
}

func TestUnsupportedDestination(t *testing.T) {
	if _, err := New(Options{Dests: []Dest{{Kind: "syslog"}}}); err == nil || !strings.Contains(err.Error(), "syslog") {
		t.Fatalf("syslog: %v", err)
	}
}
