package cryptfs

import (
	"errors"
	"io/fs"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestDiagnoseFUSE(t *testing.T) {
	// ok is a container set up as deploy/direct asks: uid 1883, a 0666
	// /dev/fuse, SYS_ADMIN only in the bounding set, setuid fusermount3,
	// a writable mount point.
	ok := func() fuseFacts {
		return fuseFacts{
			uid: 1883, gid: 1883,
			devStat:  &unix.Stat_t{Mode: unix.S_IFCHR | 0o666, Rdev: unix.Mkdev(10, 229)},
			statusOK: true, capBnd: capSysAdmin,
			fusermount: "/usr/bin/fusermount3", fusermountSetuid: true,
			mountPoint: "/mosquitto/data", mountPointMode: 0o755,
			apparmor: "unconfined",
		}
	}
	tests := []struct {
		name  string
		edit  func(f *fuseFacts)
		after bool     // after a failed mount
		says  []string // cause and fix; nil: no cause found
	}{
		{name: "all well", edit: func(f *fuseFacts) {}},
		{name: "all well after failure", edit: func(f *fuseFacts) {}, after: true},
		{name: "no device", edit: func(f *fuseFacts) {
			f.devErr, f.devStat = &fs.PathError{Op: "open", Path: "/dev/fuse", Err: unix.ENOENT}, nil
		}, says: []string{"there is no /dev/fuse", "devices: [/dev/fuse]"}},
		{name: "device 0600 for another uid", edit: func(f *fuseFacts) {
			f.devErr = &fs.PathError{Op: "open", Path: "/dev/fuse", Err: unix.EACCES}
			f.devStat = &unix.Stat_t{Mode: unix.S_IFCHR | 0o600, Rdev: unix.Mkdev(10, 229)}
		}, says: []string{"/dev/fuse is mode 0600 owned by 0:0 and Moat runs as uid 1883", "mode 0666"}},
		{name: "another device as /dev/fuse", edit: func(f *fuseFacts) {
			f.devStat = &unix.Stat_t{Mode: unix.S_IFCHR | 0o666, Rdev: unix.Mkdev(1, 3)}
		}, says: []string{"/dev/fuse is not the FUSE device 10:229 (it is device 1:3)", "devices: [/dev/fuse]"}},
		{name: "a file as /dev/fuse", edit: func(f *fuseFacts) {
			f.devStat = &unix.Stat_t{Mode: unix.S_IFREG | 0o666}
		}, says: []string{"not a character device"}},
		{name: "device cgroup", edit: func(f *fuseFacts) {
			f.devErr = &fs.PathError{Op: "open", Path: "/dev/fuse", Err: unix.EPERM}
		}, says: []string{"device cgroup", "pass it as a device"}},
		{name: "no SYS_ADMIN in the bounding set", edit: func(f *fuseFacts) { f.capBnd = 0 },
			says: []string{"CAP_SYS_ADMIN is not in the container's bounding set", "cap_add: [SYS_ADMIN]"}},
		{name: "no-new-privileges", edit: func(f *fuseFacts) { f.noNewPrivs = true },
			says: []string{"no-new-privileges is set", "drop security_opt no-new-privileges:true"}},
		{name: "no fusermount3", edit: func(f *fuseFacts) { f.fusermount = "" },
			says: []string{"fusermount3 is not installed", "apt-get install fuse3"}},
		{name: "fusermount3 not setuid", edit: func(f *fuseFacts) { f.fusermountSetuid = false },
			says: []string{"is not setuid root", "chmod u+s /usr/bin/fusermount3"}},
		{name: "read-only mount point", edit: func(f *fuseFacts) { f.mountPointErr = unix.EROFS },
			says: []string{"read-only file system", `tmpfs: ["/mosquitto/data:uid=1883,gid=1883,mode=0755"]`}},
		{name: "mount point of another user", edit: func(f *fuseFacts) { f.mountPointErr = unix.EACCES },
			says: []string{"no write access to the mount point /mosquitto/data", "chown 1883:1883 /mosquitto/data"}},
		{name: "mount point 0700, before trying", edit: func(f *fuseFacts) { f.mountPointMode = 0o700 }},
		{name: "mount point 0700, after a failure", edit: func(f *fuseFacts) { f.mountPointMode = 0o700 }, after: true,
			says: []string{"mode 0700", "without CAP_DAC_OVERRIDE", "chmod 755 /mosquitto/data"}},
		{name: "mount point 0700 with DAC_OVERRIDE", edit: func(f *fuseFacts) {
			f.mountPointMode, f.capBnd = 0o700, capSysAdmin|1<<unix.CAP_DAC_OVERRIDE
		}, after: true},
		{name: "AppArmor profile, before trying", edit: func(f *fuseFacts) { f.apparmor = "docker-default (enforce)" }},
		{name: "AppArmor profile, after a failure", edit: func(f *fuseFacts) { f.apparmor = "docker-default (enforce)" }, after: true,
			says: []string{`"docker-default (enforce)"`, "apparmor:unconfined"}},
		// With CAP_SYS_ADMIN in effect gocryptfs mounts directly:
		// fusermount3's rules do not apply.
		{name: "effective SYS_ADMIN, read-only mount point", edit: func(f *fuseFacts) {
			f.capEff, f.noNewPrivs, f.mountPointErr = capSysAdmin, true, unix.EROFS
		}},
		{name: "root without SYS_ADMIN in effect", edit: func(f *fuseFacts) { f.uid, f.noNewPrivs = 0, true },
			says: []string{"root without CAP_SYS_ADMIN in effect", "cap_add: [SYS_ADMIN]"}},
		{name: "first cause wins", edit: func(f *fuseFacts) {
			f.devErr, f.devStat = &fs.PathError{Op: "open", Path: "/dev/fuse", Err: unix.ENOENT}, nil
			f.capBnd, f.noNewPrivs, f.mountPointErr = 0, true, unix.EROFS
		}, says: []string{"there is no /dev/fuse"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := ok()
			tt.edit(&f)
			d := diagnose(f, tt.after)
			if tt.says == nil {
				if d != nil {
					t.Fatalf("found a cause where there is none: %v", d)
				}
				return
			}
			if d == nil {
				t.Fatalf("no cause found, want one saying %q", tt.says)
			}
			if !errors.Is(d, ErrNoFUSE) {
				t.Errorf("%v is not ErrNoFUSE", d)
			}
			for _, s := range tt.says {
				if !strings.Contains(d.Error(), s) {
					t.Errorf("%q does not say %q", d, s)
				}
			}
			if strings.Contains(d.Error(), "\n") {
				t.Errorf("message has a newline: %q", d)
			}
		})
	}
}

func TestFUSEErrorWrapsTheRun(t *testing.T) {
	run := newExitError("mount", exitFuseNewServer, "fusermount3: user has no write access to mountpoint /m")
	d := &FUSEError{Cause: "c", Fix: "f", Err: run}
	var ee *ExitError
	if !errors.Is(d, ErrNoFUSE) || !errors.As(d, &ee) || ee.Code != exitFuseNewServer {
		t.Fatalf("%v: does not unwrap to ErrNoFUSE and the ExitError", d)
	}
	if !strings.Contains(d.Error(), "no write access") {
		t.Errorf("%q drops gocryptfs's message", d)
	}
}

func TestParseStatus(t *testing.T) {
	in := "Name:\tmoat\nNoNewPrivs:\t1\nCapEff:\t0000000000000000\nCapBnd:\t0000000000200000\n"
	nnp, bnd, eff := parseStatus(in)
	if !nnp || bnd != capSysAdmin || eff != 0 {
		t.Errorf("parseStatus = %v %x %x", nnp, bnd, eff)
	}
	if nnp, bnd, eff := parseStatus("garbage\x00:\n:::\nCapBnd:\tzz\n"); nnp || bnd != 0 || eff != 0 {
		t.Errorf("garbage parsed as %v %x %x", nnp, bnd, eff)
	}
}

// The facts of this very process are read without error.
func TestGatherFUSEFacts(t *testing.T) {
	f := gatherFUSEFacts(t.TempDir(), fusermountPath())
	if !f.statusOK {
		t.Fatal("/proc/self/status not read")
	}
	if f.uid != os.Geteuid() || f.mountPointErr != nil {
		t.Errorf("facts: %+v", f)
	}
}
