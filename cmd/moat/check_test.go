package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheckConfigWarnsAboutReadablePasswordFile(t *testing.T) {
	dir, conf, _ := cliSetup(t, cliConf, cliACL)
	code, out, _ := runCLI(t, "check-config", "-c", conf)
	if code != 0 || strings.Contains(out, "readable by every user") {
		t.Fatalf("0600 files: exit %d\n%s", code, out)
	}
	if err := os.Chmod(filepath.Join(dir, "passwd"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, _ = runCLI(t, "check-config", "-c", conf)
	if code != 0 || !strings.Contains(out, "warning: "+filepath.Join(dir, "passwd")+" is readable by every user") {
		t.Fatalf("0644 passwd: exit %d\n%s", code, out)
	}
}

// The advice must not lock Moat out: chmod 600 only when Moat's user owns
// the file; a file owned by another uid (a host user's bind mount) gets
// Moat's group and 640.
func TestPermissionAdviceFitsTheOwner(t *testing.T) {
	dir, conf, _ := cliSetup(t, cliConf, cliACL)
	pw := filepath.Join(dir, "passwd")
	if err := os.Chmod(pw, 0o644); err != nil {
		t.Fatal(err)
	}
	_, out, _ := runCLI(t, "check-config", "-c", conf)
	if want := fmt.Sprintf("chmod 600 %s (Moat runs as uid %d", pw, os.Geteuid()); !strings.Contains(out, want) {
		t.Errorf("own file: advice lacks %q:\n%s", want, out)
	}
	other := 1000
	if os.Geteuid() == other {
		other = 1001
	}
	if err := os.Chown(pw, other, other); err != nil {
		t.Skipf("cannot give the file to another uid (run as root for this part): %v", err)
	}
	_, out, _ = runCLI(t, "check-config", "-c", conf)
	if strings.Contains(out, "chmod 600 "+pw+" (") || !strings.Contains(out, fmt.Sprintf("chgrp %d %s && chmod 640 %s", os.Getegid(), pw, pw)) {
		t.Errorf("file of uid %d: wrong advice:\n%s", other, out)
	}
	if !strings.Contains(out, "uid and gid 1883") {
		t.Errorf("advice does not say what works in the image:\n%s", out)
	}
}

// A file with errors still gets its warnings: check-config names every
// line a migration has to change at once, not only the broken ones.
func TestCheckConfigWarnsDespiteErrors(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "mosquitto.conf")
	text := "listener 1883\nallow_anonymous true\npersistence true\npersistence_location " + dir + "/data\nautosave_interval 1\n"
	if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, errOut := runCLI(t, "check-config", "-c", conf)
	if code != 1 {
		t.Fatalf("exit %d, want 1\n%s", code, errOut)
	}
	for _, want := range []string{
		"mosquitto.conf:5: autosave_interval is accepted and ignored",
		"mosquitto.conf:3: encrypted persistence needs persistence_cipher_dir",
	} {
		if !strings.Contains(errOut, want) {
			t.Errorf("missing %q in:\n%s", want, errOut)
		}
	}
}
