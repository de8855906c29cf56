//go:build unix

package passwd

import (
	"errors"
	"os"
	"syscall"
	"time"
)

// lockFile takes an exclusive advisory lock on f, held until f is closed,
// so two edits of one file run one after the other.
func lockFile(f *os.File) error {
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX)
		if err != syscall.EINTR {
			return err
		}
	}
}

// lockShared waits up to wait for a shared lock on f, held until f is
// closed. A file system without flock is read without one.
func lockShared(f *os.File, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, syscall.EINTR):
			continue
		case !errors.Is(err, syscall.EWOULDBLOCK):
			return nil
		case time.Now().After(deadline):
			return ErrBeingEdited
		}
		time.Sleep(10 * time.Millisecond)
	}
}
