package cryptfs

import (
	"errors"
	"fmt"
	"strings"
)

// Sentinel errors; test with errors.Is.
var (
	// ErrNoBinary: the gocryptfs executable was not found.
	ErrNoBinary = errors.New("gocryptfs executable not found")
	// ErrNoFUSE: the kernel FUSE device is missing or mounting is not permitted.
	ErrNoFUSE = errors.New("FUSE is not available: in a container run with --device /dev/fuse --cap-add SYS_ADMIN (on AppArmor hosts also --security-opt apparmor:unconfined; Kubernetes: CAP_SYS_ADMIN plus a FUSE device plugin)")
	// ErrWrongKey: the password does not unlock gocryptfs.conf.
	ErrWrongKey = errors.New("wrong key in persistence_key_file")
	// ErrEmptyKey: the key file is empty or its first line is.
	ErrEmptyKey = errors.New("persistence_key_file is empty (the key is its first line)")
	// ErrMountPoint: the mount point is missing, not an empty directory,
	// already mounted, or a dead mount that could not be cleaned.
	ErrMountPoint = errors.New("unusable mount point")
	// ErrConfig: gocryptfs.conf is missing or damaged. Without it the
	// encrypted data cannot be decrypted.
	ErrConfig = errors.New("gocryptfs.conf is missing or damaged: the encrypted data is unrecoverable without it, restore gocryptfs.conf from a backup")
	// ErrServed: a live gocryptfs serves the mount point already (another
	// Moat runs on it). Errors wrapping it wrap ErrMountPoint too.
	ErrServed = errors.New("already served by another gocryptfs process")
	// ErrCipherDir: the encrypted directory is unusable.
	ErrCipherDir = errors.New("unusable encrypted directory")
	// ErrGocryptfs: gocryptfs failed for another reason; see the message.
	ErrGocryptfs = errors.New("gocryptfs failed")
	// ErrNotMounted: the mount is gone, dead or is not the verified gocryptfs mount.
	ErrNotMounted = errors.New("encrypted directory is not mounted")
	// ErrClosed: the Mount was closed.
	ErrClosed = errors.New("cryptfs mount closed")
)

// gocryptfs exit codes (Documentation/CLI_ABI.md, internal/exitcodes).
const (
	exitCipherDir         = 6
	exitLoadConf          = 8
	exitReadPassword      = 9
	exitMountPoint        = 10
	exitOther             = 11
	exitPasswordIncorrect = 12
	exitSigInt            = 15
	exitFuseNewServer     = 19
	exitPasswordEmpty     = 22
	exitOpenConf          = 23
	exitWriteConf         = 24
)

// ExitError is a failed gocryptfs run. It unwraps to one of the sentinel errors.
type ExitError struct {
	Op     string // "init" or "mount"
	Code   int    // exit code, or -1 when killed by a signal
	Stderr string // gocryptfs's own message, trimmed (never holds the key)
	kind   error
}

func (e *ExitError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "gocryptfs %s: %v (exit %d)", e.Op, e.kind, e.Code)
	if e.Stderr != "" {
		fmt.Fprintf(&b, ": %s", e.Stderr)
	}
	return b.String()
}

func (e *ExitError) Unwrap() error { return e.kind }

// exitKind maps a gocryptfs exit code to a sentinel error.
func exitKind(op string, code int) error {
	switch code {
	case exitPasswordIncorrect:
		return ErrWrongKey
	case exitReadPassword, exitPasswordEmpty:
		return ErrEmptyKey
	case exitMountPoint:
		return ErrMountPoint
	case exitLoadConf, exitOpenConf:
		return ErrConfig
	case exitOther:
		// While mounting, exit 11 comes from loading gocryptfs.conf
		// (unparsable or unreadable); elsewhere it is a generic failure.
		if op == "mount" {
			return ErrConfig
		}
		return ErrGocryptfs
	case exitFuseNewServer:
		return ErrNoFUSE
	case exitCipherDir, exitWriteConf:
		return ErrCipherDir
	}
	return ErrGocryptfs
}

// maxStderr bounds the gocryptfs message kept for errors.
const maxStderr = 2048

func newExitError(op string, code int, stderr string) *ExitError {
	s := strings.TrimSpace(stderr)
	if len(s) > maxStderr {
		s = "…" + s[len(s)-maxStderr:]
	}
	s = strings.Join(strings.Fields(strings.ReplaceAll(s, "\n", "; ")), " ")
	return &ExitError{Op: op, Code: code, Stderr: s, kind: exitKind(op, code)}
}
