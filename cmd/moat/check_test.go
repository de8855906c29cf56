package main

import (
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
