package cryptfs

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// FUSEError is a FUSE set-up problem found in this process's environment:
// the cause and the one change that fixes it. It matches ErrNoFUSE.
type FUSEError struct {
	Cause string
	Fix   string
	Err   error // the failed gocryptfs run, if it got that far
}

func (e *FUSEError) Error() string {
	s := "FUSE is not available: " + e.Cause + "; " + e.Fix
	if e.Err != nil {
		s += " (" + e.Err.Error() + ")"
	}
	return s
}

func (e *FUSEError) Unwrap() []error {
	if e.Err == nil {
		return []error{ErrNoFUSE}
	}
	return []error{ErrNoFUSE, e.Err}
}

// capSysAdmin is CAP_SYS_ADMIN's bit in the /proc/self/status masks.
const capSysAdmin = uint64(1) << unix.CAP_SYS_ADMIN

// fuseFacts is what decides whether this process can mount FUSE.
type fuseFacts struct {
	uid, gid int
	// devErr is the error opening /dev/fuse read-write; devStat its
	// node (nil when stat failed).
	devErr  error
	devStat *unix.Stat_t
	// From /proc/self/status; statusOK is false when it was unreadable.
	statusOK       bool
	noNewPrivs     bool
	capBnd, capEff uint64
	// fusermount is fusermount3's path ("" when missing) and whether it is
	// setuid root.
	fusermount       string
	fusermountSetuid bool
	// mountPoint and mountPointErr: access(2) W_OK of the mount point.
	mountPoint    string
	mountPointErr error
	// mountPointMode is the mount point's permission bits (0 if unknown).
	mountPointMode uint32
	// apparmor is this process's AppArmor label ("" without AppArmor).
	apparmor string
}

// gatherFUSEFacts inspects this process and the mount point.
func gatherFUSEFacts(mountPoint, fusermount string) fuseFacts {
	f := fuseFacts{uid: os.Geteuid(), gid: os.Getegid(), mountPoint: mountPoint, fusermount: fusermount}
	if dev, err := os.OpenFile("/dev/fuse", os.O_RDWR, 0); err != nil {
		f.devErr = err
	} else {
		dev.Close()
	}
	var st unix.Stat_t
	if unix.Stat("/dev/fuse", &st) == nil {
		f.devStat = &st
	}
	if b, err := os.ReadFile("/proc/self/status"); err == nil {
		f.statusOK = true
		f.noNewPrivs, f.capBnd, f.capEff = parseStatus(string(b))
	}
	if fusermount != "" {
		var fst unix.Stat_t
		if unix.Stat(fusermount, &fst) == nil {
			f.fusermountSetuid = fst.Mode&unix.S_ISUID != 0 && fst.Uid == 0
		}
	}
	f.mountPointErr = withTimeout(hungTimeout, func() error { return unix.Access(mountPoint, unix.W_OK) })
	if f.mountPointErr == nil {
		var mst unix.Stat_t
		if unix.Stat(mountPoint, &mst) == nil {
			f.mountPointMode = mst.Mode & 0o7777
		}
	}
	for _, p := range []string{"/proc/self/attr/apparmor/current", "/proc/self/attr/current"} {
		if b, err := os.ReadFile(p); err == nil {
			f.apparmor = strings.TrimSpace(strings.TrimRight(string(b), "\x00"))
			break
		}
	}
	return f
}

// parseStatus reads NoNewPrivs, CapBnd and CapEff from /proc/self/status.
func parseStatus(s string) (noNewPrivs bool, capBnd, capEff uint64) {
	for _, l := range strings.Split(s, "\n") {
		k, v, ok := strings.Cut(l, ":")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		switch k {
		case "NoNewPrivs":
			noNewPrivs = v == "1"
		case "CapBnd":
			capBnd, _ = strconv.ParseUint(v, 16, 64)
		case "CapEff":
			capEff, _ = strconv.ParseUint(v, 16, 64)
		}
	}
	return noNewPrivs, capBnd, capEff
}

// diagnose names the first thing in f that keeps this process from
// mounting FUSE, with the change that fixes it; nil when none is found.
// afterFailure adds causes that only a failed mount proves (an AppArmor
// profile may or may not allow mount).
func diagnose(f fuseFacts, afterFailure bool) *FUSEError {
	who := fmt.Sprintf("Moat runs as uid %d", f.uid)
	switch {
	case errors.Is(f.devErr, fs.ErrNotExist):
		return &FUSEError{Cause: "there is no /dev/fuse",
			Fix: "pass the device to the container (compose: devices: [/dev/fuse]; docker run --device /dev/fuse)"}
	case f.devErr != nil && f.devStat != nil && errors.Is(f.devErr, unix.EACCES):
		return &FUSEError{
			Cause: fmt.Sprintf("/dev/fuse is mode %04o owned by %d:%d and %s", f.devStat.Mode&0o7777, f.devStat.Uid, f.devStat.Gid, who),
			Fix:   "make the device node mode 0666, the kernel's default (on the host: chmod 666 /dev/fuse, or pass a 0666 node of device 10:229 as /dev/fuse)"}
	case f.devErr != nil && errors.Is(f.devErr, unix.EPERM):
		return &FUSEError{Cause: "the container may not use /dev/fuse (device cgroup)",
			Fix: "pass it as a device, not a bind mount (compose: devices: [/dev/fuse]; Kubernetes: a FUSE device plugin)"}
	case f.devErr != nil:
		return &FUSEError{Cause: "opening /dev/fuse: " + f.devErr.Error(),
			Fix: "pass the device to the container (compose: devices: [/dev/fuse])"}
	case f.devStat != nil && !isFUSEDevice(f.devStat):
		return &FUSEError{Cause: fmt.Sprintf("/dev/fuse is not the FUSE device 10:229 (it is %s)", describeNode(f.devStat)),
			Fix: "pass the host's /dev/fuse (compose: devices: [/dev/fuse])"}
	case f.statusOK && f.capBnd&capSysAdmin == 0:
		return &FUSEError{Cause: "CAP_SYS_ADMIN is not in the container's bounding set, so nothing in it can mount",
			Fix: "add it (compose: cap_add: [SYS_ADMIN]; docker run --cap-add SYS_ADMIN); Moat itself still runs without capabilities"}
	}
	// With CAP_SYS_ADMIN in effect, gocryptfs mounts directly; otherwise
	// the setuid fusermount3 does, with its own rules.
	if !f.statusOK || f.capEff&capSysAdmin == 0 {
		switch {
		case f.statusOK && f.uid == 0:
			return &FUSEError{Cause: "Moat runs as root without CAP_SYS_ADMIN in effect",
				Fix: "add it (compose: cap_add: [SYS_ADMIN]), or run as uid 1883 as the image does"}
		case f.noNewPrivs:
			return &FUSEError{Cause: "no-new-privileges is set, so the setuid fusermount3 cannot mount",
				Fix: "remove no-new-privileges for this container (compose: drop security_opt no-new-privileges:true)"}
		case f.fusermount == "":
			return &FUSEError{Cause: "fusermount3 is not installed", Fix: "install it (Debian: apt-get install fuse3)"}
		case !f.fusermountSetuid && f.uid != 0:
			return &FUSEError{Cause: f.fusermount + " is not setuid root", Fix: "chmod u+s " + f.fusermount + " (as packaged by fuse3)"}
		case errors.Is(f.mountPointErr, unix.EROFS):
			return &FUSEError{Cause: "the mount point " + f.mountPoint + " is on a read-only file system (read_only: true), and fusermount3 mounts only where the user may write",
				Fix: fmt.Sprintf("mount an empty tmpfs there owned by Moat (compose: tmpfs: [\"%s:uid=%d,gid=%d,mode=0755\"])", f.mountPoint, f.uid, f.gid)}
		case errors.Is(f.mountPointErr, unix.EACCES) || errors.Is(f.mountPointErr, unix.EPERM):
			return &FUSEError{Cause: fmt.Sprintf("%s has no write access to the mount point %s, and fusermount3 mounts only where the user may write", who, f.mountPoint),
				Fix: fmt.Sprintf("chown %d:%d %s", f.uid, f.gid, f.mountPoint)}
		}
	}
	dacCaps := uint64(1)<<unix.CAP_DAC_OVERRIDE | uint64(1)<<unix.CAP_DAC_READ_SEARCH
	if afterFailure && f.statusOK && f.capEff&capSysAdmin == 0 && f.capBnd&dacCaps == 0 &&
		f.mountPointMode != 0 && f.mountPointMode&0o001 == 0 {
		return &FUSEError{
			Cause: fmt.Sprintf("the mount point %s is mode %04o, and fusermount3 mounts as root without CAP_DAC_OVERRIDE (cap_drop: ALL), which may not enter it", f.mountPoint, f.mountPointMode),
			Fix:   fmt.Sprintf("chmod 755 %s (a tmpfs there takes the mode of the directory beneath)", f.mountPoint)}
	}
	if afterFailure && f.apparmor != "" && f.apparmor != "unconfined" && !strings.HasPrefix(f.apparmor, "unconfined") {
		return &FUSEError{Cause: fmt.Sprintf("the AppArmor profile %q is in force and Docker's default profile denies mount", f.apparmor),
			Fix: "run the container unconfined (compose: security_opt: [apparmor:unconfined])"}
	}
	return nil
}

// fusermountPath finds fusermount3 (or fusermount).
func fusermountPath() string {
	for _, n := range []string{"fusermount3", "fusermount"} {
		if p, err := exec.LookPath(n); err == nil {
			return p
		}
	}
	return ""
}

func isFUSEDevice(st *unix.Stat_t) bool {
	return st.Mode&unix.S_IFMT == unix.S_IFCHR && unix.Major(uint64(st.Rdev)) == 10 && unix.Minor(uint64(st.Rdev)) == 229
}

func describeNode(st *unix.Stat_t) string {
	if st.Mode&unix.S_IFMT != unix.S_IFCHR {
		return "not a character device"
	}
	return fmt.Sprintf("device %d:%d", unix.Major(uint64(st.Rdev)), unix.Minor(uint64(st.Rdev)))
}
