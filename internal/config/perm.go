package config

import (
	"fmt"
	"io/fs"
	"os"
	"syscall"
)

// ImageUID is the uid and gid Moat runs as in its container image (that of
// eclipse-mosquitto's "mosquitto" user, so migrated volumes need no chown).
const ImageUID = 1883

// PermissionAdvice says how to close a secret file that others may read
// without locking Moat out: "chmod 600" helps only when Moat's own user owns
// the file; a file owned by someone else (a bind mount edited on the host, a
// compose secret owned by root) needs Moat's group and mode 640.
func PermissionAdvice(path string, fi fs.FileInfo) string {
	uid, gid := os.Geteuid(), os.Getegid()
	st, ok := fi.Sys().(*syscall.Stat_t)
	if ok && int(st.Uid) == uid {
		return fmt.Sprintf("%s is readable by every user on this host; chmod 600 %s (Moat runs as uid %d, which owns it; uid %d in the Moat image)", path, path, uid, ImageUID)
	}
	owner := "another user"
	if ok {
		owner = fmt.Sprintf("uid %d", st.Uid)
	}
	return fmt.Sprintf("%s is readable by every user on this host; it is owned by %s, not by Moat's uid %d, so chmod 600 would lock Moat out: chgrp %d %s && chmod 640 %s (in the Moat image: uid and gid %d, or chown %d:%d and chmod 600)",
		path, owner, uid, gid, path, path, ImageUID, ImageUID, ImageUID)
}
