package cryptfs

import (
	"errors"
	"io/fs"
	"log/slog"
	"os"
)

// Preflight runs the checks of Start that need no mount and change nothing:
// the key file, and the mount point and encrypted directory when they exist
// (Start creates missing ones). check-config calls it so that it refuses what
// Start would, with the same message.
func Preflight(o Options) error {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	key, err := readKey(o.KeyFile, log)
	if err != nil {
		return err
	}
	clear(key)
	if _, err := os.Lstat(o.CipherDir); err == nil {
		if _, err := prepareCipherDir(o.CipherDir); err != nil {
			return err
		}
	}
	if _, err := os.Lstat(o.MountPoint); err == nil || !errors.Is(err, fs.ErrNotExist) {
		if _, err := resolveMountPoint(o.MountPoint); err != nil {
			return err
		}
	}
	return nil
}
