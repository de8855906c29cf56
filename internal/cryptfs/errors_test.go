package cryptfs

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestExitErrorMapping(t *testing.T) {
	tests := []struct {
		op     string
		code   int
		stderr string
		want   error
		says   string
	}{
		{"mount", 12, "failed to unlock master key: cipher: message authentication failed\nPassword incorrect.\n", ErrWrongKey, "wrong key in persistence_key_file"},
		{"mount", 10, "Invalid mountpoint: directory /m not empty", ErrMountPoint, "not empty"},
		{"mount", 11, "Cannot open config file: unexpected end of JSON input", ErrConfig, "restore gocryptfs.conf from a backup"},
		{"mount", 23, "", ErrConfig, "unrecoverable"},
		{"mount", 8, "", ErrConfig, "gocryptfs.conf"},
		{"mount", 19, "fs.Mount failed: fusermount exited with code 256", ErrNoFUSE, "--device /dev/fuse --cap-add SYS_ADMIN"},
		{"mount", 19, "", ErrNoFUSE, "apparmor:unconfined"},
		{"mount", 9, "got empty Password from stdin", ErrEmptyKey, "empty"},
		{"init", 22, "", ErrEmptyKey, "persistence_key_file"},
		{"init", 6, "CIPHERDIR is not empty", ErrCipherDir, "CIPHERDIR is not empty"},
		{"init", 11, "", ErrGocryptfs, "gocryptfs failed"},
		{"mount", 2, "panic: x", ErrGocryptfs, "panic: x"},
		{"mount", -1, "", ErrGocryptfs, "exit -1"},
	}
	for _, tt := range tests {
		err := newExitError(tt.op, tt.code, tt.stderr)
		if !errors.Is(err, tt.want) {
			t.Errorf("%s exit %d: %v is not %v", tt.op, tt.code, err, tt.want)
		}
		if !strings.Contains(err.Error(), tt.says) {
			t.Errorf("%s exit %d: %q does not say %q", tt.op, tt.code, err, tt.says)
		}
		if strings.Contains(err.Error(), "\n") {
			t.Errorf("%s exit %d: message has a newline: %q", tt.op, tt.code, err)
		}
		var ee *ExitError
		if !errors.As(err, &ee) || ee.Code != tt.code || ee.Op != tt.op {
			t.Errorf("%s exit %d: errors.As gave %+v", tt.op, tt.code, ee)
		}
	}
	long := newExitError("mount", 11, strings.Repeat("x", 10*maxStderr))
	if len(long.Stderr) > maxStderr+8 {
		t.Errorf("stderr not bounded: %d bytes", len(long.Stderr))
	}
}

func TestReadKey(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name    string
		content string
		want    string
		wantErr error
	}{
		{"plain", "s3cret", "s3cret", nil},
		{"first line only", "s3cret\nsecond line\n", "s3cret", nil},
		{"crlf", "s3cret\r\n", "s3cret", nil},
		{"spaces kept", " a b \n", " a b ", nil},
		{"empty", "", "", ErrEmptyKey},
		{"empty first line", "\nsecond", "", ErrEmptyKey},
		{"too long", strings.Repeat("k", maxKeyLen+1), "", errAny},
		{"max length", strings.Repeat("k", maxKeyLen) + "\n", strings.Repeat("k", maxKeyLen), nil},
	}
	log := discardLogger()
	for i, tt := range tests {
		p := filepath.Join(dir, "key"+string(rune('a'+i)))
		if err := os.WriteFile(p, []byte(tt.content), 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := readKey(p, log)
		switch {
		case tt.wantErr == errAny && err == nil:
			t.Errorf("%s: no error", tt.name)
		case tt.wantErr != nil && tt.wantErr != errAny && !errors.Is(err, tt.wantErr):
			t.Errorf("%s: err = %v, want %v", tt.name, err, tt.wantErr)
		case tt.wantErr == nil && err != nil:
			t.Errorf("%s: %v", tt.name, err)
		case tt.wantErr == nil && string(got) != tt.want:
			t.Errorf("%s: key = %q, want %q", tt.name, got, tt.want)
		}
		if err != nil && len(tt.content) > 3 && strings.Contains(err.Error(), tt.content) {
			t.Errorf("%s: error leaks the key: %v", tt.name, err)
		}
	}
	if _, err := readKey(filepath.Join(dir, "missing"), log); err == nil {
		t.Error("missing key file: no error")
	}
	if _, err := readKey(dir, log); err == nil {
		t.Error("directory as key file: no error")
	}
}

var errAny = errors.New("any error")

func TestFind(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "gocryptfs")
	if err := os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if got, err := Find(exe); err != nil || got != exe {
		t.Errorf("Find(%s) = %q, %v", exe, got, err)
	}
	noexec := filepath.Join(dir, "noexec")
	if err := os.WriteFile(noexec, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{noexec, filepath.Join(dir, "missing"), dir} {
		_, err := Find(p)
		if !errors.Is(err, ErrNoBinary) || !strings.Contains(err.Error(), p) {
			t.Errorf("Find(%s) = %v, want ErrNoBinary naming the path", p, err)
		}
	}
	t.Setenv("PATH", dir)
	if got, err := Find(""); err != nil || (got != exe && filepath.Base(got) != "gocryptfs") {
		t.Errorf("Find(\"\") via PATH = %q, %v", got, err)
	}
	t.Setenv("PATH", t.TempDir())
	if _, err := Find(""); err != nil && (!errors.Is(err, ErrNoBinary) || !strings.Contains(err.Error(), "$PATH")) {
		t.Errorf("Find(\"\") with empty PATH: %v", err)
	}
}

func TestStderrTail(t *testing.T) {
	s := &stderrLog{log: discardLogger()}
	if s.tail() != "" {
		t.Fatal("tail of nothing")
	}
	s.Write([]byte("panic: boom\n\ngoroutine 1\n"))
	for i := range 20 {
		fmt.Fprintf(s, "frame %d\n", i)
	}
	s.Write([]byte("exit status 2"))
	got := s.tail()
	want := "panic: boom; goroutine 1; frame 0; …; frame 15; frame 16; frame 17; frame 18; frame 19; exit status 2"
	if got != want {
		t.Errorf("tail = %q\nwant   %q", got, want)
	}
}

// A group-readable key (a secret owned by root, group Moat's) draws no
// warning; a world-readable one does, without advice that would lock Moat
// out of a file it does not own.
func TestReadKeyPermissionWarning(t *testing.T) {
	dir := t.TempDir()
	for _, tt := range []struct {
		mode os.FileMode
		warn bool
	}{{0o600, false}, {0o640, false}, {0o644, true}, {0o604, true}} {
		var logs bytes.Buffer
		log := slog.New(slog.NewTextHandler(&logs, nil))
		p := filepath.Join(dir, fmt.Sprintf("key-%o", tt.mode))
		if err := os.WriteFile(p, []byte("s3cret\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, tt.mode); err != nil {
			t.Fatal(err)
		}
		if _, err := readKey(p, log); err != nil {
			t.Fatal(err)
		}
		if got := strings.Contains(logs.String(), "persistence_key_file is readable"); got != tt.warn {
			t.Errorf("mode %o: warned %v, want %v: %s", tt.mode, got, tt.warn, logs.String())
		}
		if strings.Contains(logs.String(), "s3cret") {
			t.Errorf("mode %o: the key reached the log", tt.mode)
		}
	}
}
