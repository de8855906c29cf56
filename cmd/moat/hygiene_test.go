package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestHelpGoesToStdout(t *testing.T) {
	for _, args := range [][]string{
		{"--help"}, {"-h"}, {"help"},
		{"serve", "--help"}, {"serve", "-h"}, {"check-config", "--help"},
		{"acl", "--help"}, {"acl", "explain", "--help"}, {"cert", "--help"}, {"cert", "status", "-h"}, {"health", "--help"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			code, out, errOut := runCLI(t, args...)
			if code != 0 || out == "" || errOut != "" {
				t.Errorf("exit %d, stdout %q, stderr %q; want 0, usage on stdout, nothing on stderr", code, out, errOut)
			}
		})
	}
}

func TestUsageErrorsGoToStderr(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"serve", "--bogus"}, "flag provided but not defined"},
		{[]string{"check-config", "-x"}, "flag provided but not defined"},
		{[]string{"serve", "/etc/moat/moat.conf"}, "moat serve -c /etc/moat/moat.conf"},
		{[]string{"acl", "frob"}, "usage: moat acl explain"},
		{[]string{"cert"}, "usage: moat cert"},
		{[]string{"frob"}, "unknown command"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			code, out, errOut := runCLI(t, tc.args...)
			if code != 2 || out != "" || !strings.Contains(errOut, tc.want) {
				t.Errorf("exit %d, stdout %q, stderr %q; want 2, nothing on stdout, %q on stderr", code, out, errOut, tc.want)
			}
		})
	}
}

// A container runtime shows stdout and stderr only: with the log in a
// file, a broker that cannot start must still say why on stderr.
func TestFatalStartErrorReachesStderr(t *testing.T) {
	dir := t.TempDir()
	logFile := filepath.Join(dir, "moat.log")
	conf := filepath.Join(dir, "moat.conf")
	data := "listener 0 127.0.0.1\nadmin_listener off\nallow_anonymous false\npassword_file missing-passwd\nlog_dest file " + logFile + "\n"
	if err := os.WriteFile(conf, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, errOut := runCLI(t, "serve", "-c", conf)
	if code == 0 {
		t.Fatal("serve started without its password file")
	}
	if !strings.Contains(errOut, "cannot start") || !strings.Contains(errOut, "password_file") {
		t.Errorf("stderr does not carry the start-up error: %q", errOut)
	}
	logged, err := os.ReadFile(logFile)
	if err != nil || !strings.Contains(string(logged), "password_file") {
		t.Errorf("log file lacks the error (%v): %q", err, logged)
	}
}
