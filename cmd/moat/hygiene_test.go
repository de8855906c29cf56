package main

import (
	"fmt"
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

// acl explain answers for the clients the broker would let in: an
// identity refused at CONNECT gets no "allow".
func TestACLExplainRefusesWhatTheBrokerRefuses(t *testing.T) {
	_, conf, _ := cliSetup(t, cliConf, cliACL+"pattern read clients/%c/#\n")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"alice/evil", "write", "alice/evil/x"}, "deny: CONNECT refused"},
		{[]string{"mallory", "write", "mallory/x"}, "deny: CONNECT refused on listener mqtt:127.0.0.1:1883: user \"mallory\" is not in"},
		{[]string{"", "read", "public/news"}, "deny: CONNECT refused on listener mqtt:127.0.0.1:1883: anonymous clients are not allowed"},
		{[]string{"-i", "c/1", "alice", "read", "clients/c/1/x"}, "deny: CONNECT refused"},
		{[]string{"-i", "#", "alice", "read", "clients/x"}, "deny: CONNECT refused"},
		{[]string{"-l", "mqtt:127.0.0.1:1883", "alice", "write", "alice/x"}, "allow:"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			code, out, errOut := runCLI(t, append([]string{"acl", "explain", "-c", conf}, tc.args...)...)
			if code != 0 || !strings.HasPrefix(out, tc.want) {
				t.Errorf("exit %d, %q (%s); want prefix %q", code, out, errOut, tc.want)
			}
		})
	}
	code, out, errOut := runCLI(t, "acl", "explain", "-c", conf, "-l", "mqtt:0.0.0.0:1", "alice", "write", "alice/x")
	if code != 2 || out != "" || !strings.Contains(errOut, `no listener "mqtt:0.0.0.0:1"`) || !strings.Contains(errOut, "mqtt:127.0.0.1:1883") {
		t.Errorf("unknown listener: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
}

func TestACLExplainAnonymous(t *testing.T) {
	_, conf, aclPath := cliSetup(t, strings.Replace(cliConf, "allow_anonymous false", "allow_anonymous true", 1), cliACL)
	for _, tc := range [][2]string{{"read", "allow: " + aclPath + ":1: topic read public/#"}, {"write", "deny: no rule matched: deny"}} {
		if _, out, _ := runCLI(t, "acl", "explain", "-c", conf, "", tc[0], "public/news"); !strings.HasPrefix(out, tc[1]) {
			t.Errorf("anonymous %s: %q, want %q", tc[0], out, tc[1])
		}
	}
}

func TestACLExplainWithoutACLFile(t *testing.T) {
	_, conf, _ := cliSetup(t, "listener 1883 127.0.0.1\nadmin_listener off\nallow_anonymous false\npassword_file passwd\n", "")
	for _, tc := range []struct{ op, topic, want string }{
		{"read", "$SYS/broker/uptime", "allow:"},
		{"subscribe", "$SYS/#", "allow:"},
		{"write", "$SYS/broker/uptime", "deny:"},
		{"read", "$other/x", "deny:"},
		{"write", "a/b", "allow:"},
	} {
		_, out, _ := runCLI(t, "acl", "explain", "-c", conf, "alice", tc.op, tc.topic)
		if !strings.HasPrefix(out, tc.want) {
			t.Errorf("%s %s: %q, want %s", tc.op, tc.topic, out, tc.want)
		}
	}
}

// With no certificate yet, cert status shows why and when the next try is;
// cert renew says what a running broker needs to serve its result.
func TestCertStatusWithoutCertificate(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "moat.conf")
	data := "listener 0 127.0.0.1\nlistener " + fmt.Sprint(freeTCPPort(t)) + " 127.0.0.1\ntls acme\nallow_anonymous true\nadmin_listener off\n" +
		"acme_domain mqtt.example.com\nacme_directory https://127.0.0.1:1/directory\nacme_state_dir " + filepath.Join(dir, "acme") + "\n"
	if err := os.WriteFile(conf, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("CLOUDFLARE_DNS_API_TOKEN", "test-token-not-real")
	code, out, errOut := runCLI(t, "cert", "status", "-c", conf)
	if code != 0 || !strings.Contains(out, "certificate:  none stored") || !strings.Contains(out, "none recorded yet") {
		t.Errorf("before any attempt: exit %d\n%s%s", code, out, errOut)
	}
	if code, _, _ := runCLI(t, "cert", "renew", "-c", conf); code == 0 {
		t.Fatal("renew against an unreachable CA succeeded")
	}
	code, out, errOut = runCLI(t, "cert", "status", "-c", conf)
	for _, want := range []string{"domains:      mqtt.example.com", "certificate:  none stored", "last error:", "1 failed attempts in a row", "next attempt: "} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("after a failed attempt: exit %d, output lacks %q\n%s%s", code, want, out, errOut)
		}
	}
	if strings.Contains(out, "test-token-not-real") {
		t.Error("the token reached the output")
	}
}

// A file shared by several listeners is reported once, not per listener.
func TestCheckConfigReportsSharedFileOnce(t *testing.T) {
	_, conf, _ := cliSetup(t, "listener 1883 127.0.0.1\nlistener 1884 127.0.0.1\nlistener 1885 127.0.0.1\nadmin_listener off\nallow_anonymous false\npassword_file nope\n", "")
	code, _, errOut := runCLI(t, "check-config", "-c", conf)
	if n := strings.Count(errOut, "password_file ("); code != 1 || n != 1 {
		t.Errorf("exit %d, %d password_file errors, want 1:\n%s", code, n, errOut)
	}
}
