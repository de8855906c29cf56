package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moat-mqtt/moat/internal/passwd"
)

// runCLI runs moat with args and returns the exit code and both outputs.
func runCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(args, stdio{strings.NewReader(""), &out, &errb})
	return code, out.String(), errb.String()
}

// cliSetup writes a configuration with a password file and an aclfile.
func cliSetup(t *testing.T, conf, aclText string) (dir, confPath, aclPath string) {
	t.Helper()
	dir = t.TempDir()
	var pw strings.Builder
	for _, u := range []string{"alice", "bob"} {
		h, err := passwd.Hash([]byte(u+"-pass"), "sha512-pbkdf2", 1000)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&pw, "%s:%s\n", u, h)
	}
	write := func(name, data string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	write("passwd", pw.String())
	aclPath = write("acl", aclText)
	confPath = write("moat.conf", conf)
	return dir, confPath, aclPath
}

const cliConf = "listener 1883 127.0.0.1\nadmin_listener off\nallow_anonymous false\npassword_file passwd\nacl_file acl\n"

const cliACL = "topic read public/#\n\nuser alice\ntopic deny alice/locked\ntopic readwrite shared/#\n\npattern readwrite %u/#\n"

func TestCheckConfig(t *testing.T) {
	_, conf, _ := cliSetup(t, cliConf, cliACL)
	code, out, errOut := runCLI(t, "check-config", "-c", conf)
	if code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	for _, want := range []string{
		"mqtt:127.0.0.1:1883",
		"2 users from",
		"1 anonymous rules, 1 users with 2 rules, 1 patterns",
		"subscriptions: strict true",
		"divergences from mosquitto applied:",
		"reload: a broken password_file or acl_file keeps the previous one in force",
		"configuration OK",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}

	bad := []struct {
		name      string
		conf, acl string
		want      []string // substrings of stderr
	}{
		{"unknown directive", cliConf + "frobnicate yes\n", cliACL, []string{"moat.conf:6: unknown configuration variable"}},
		{"boolean", strings.Replace(cliConf, "allow_anonymous false", "allow_anonymous yes", 1), cliACL, []string{"moat.conf:3: value must be true or false"}},
		{"acl tab", cliConf, "topic read public/#\ntopic\tread x\n", []string{"acl:2:", "tab"}},
		{"acl indented comment", cliConf, "topic read a\n  # note\n", []string{"acl:2:", "column 0"}},
		{"acl bad filter", cliConf, "topic read a/#/b\n", []string{"acl:1:"}},
		{"missing password_file", strings.Replace(cliConf, "password_file passwd", "password_file nope", 1), cliACL, []string{"password_file (", "moat.conf:4"}},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			_, conf, _ := cliSetup(t, tc.conf, tc.acl)
			code, out, errOut := runCLI(t, "check-config", "-c", conf)
			if code == 0 {
				t.Fatalf("exit 0 for a bad configuration:\n%s", out)
			}
			for _, w := range tc.want {
				if !strings.Contains(errOut, w) {
					t.Errorf("stderr lacks %q:\n%s", w, errOut)
				}
			}
			if strings.Contains(out, "configuration OK") {
				t.Error("printed configuration OK")
			}
		})
	}

	if code, _, _ := runCLI(t, "check-config"); code != 2 {
		t.Errorf("check-config without -c: exit %d, want 2", code)
	}
}

func TestACLExplain(t *testing.T) {
	_, conf, aclPath := cliSetup(t, cliConf, cliACL)
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"alice", "write", "shared/x"}, fmt.Sprintf("allow: %s:5: topic readwrite shared/#", aclPath)},
		{[]string{"alice", "write", "alice/locked"}, fmt.Sprintf("deny: %s:4: topic deny alice/locked", aclPath)},
		{[]string{"bob", "read", "bob/x"}, fmt.Sprintf("allow: %s:7: pattern readwrite %%u/#", aclPath)},
		{[]string{"bob", "write", "alice/x"}, "deny: no rule matched: deny"},
		// allow_anonymous false: anonymous clients never get that far.
		{[]string{"", "read", "public/news"}, "deny: CONNECT refused"},
		{[]string{"", "write", "public/news"}, "deny: CONNECT refused"},
		{[]string{"bob", "subscribe", "#"}, "deny: no rule matched: deny"},
		{[]string{"alice", "write", "$SYS/x"}, "deny: $SYS topics are never writable"},
	}
	for _, tc := range cases {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			code, out, errOut := runCLI(t, append([]string{"acl", "explain", "-c", conf}, tc.args...)...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errOut)
			}
			if !strings.HasPrefix(out, tc.want) {
				t.Errorf("got %q, want prefix %q", out, tc.want)
			}
		})
	}
	t.Run("client id pattern", func(t *testing.T) {
		_, conf, aclPath := cliSetup(t, cliConf, "pattern read clients/%c/#\n")
		_, out, _ := runCLI(t, "acl", "explain", "-c", conf, "-i", "c1", "alice", "read", "clients/c1/x")
		if want := fmt.Sprintf("allow: %s:1: pattern read clients/%%c/#", aclPath); !strings.HasPrefix(out, want) {
			t.Errorf("got %q, want prefix %q", out, want)
		}
		_, out, _ = runCLI(t, "acl", "explain", "-c", conf, "-i", "c2", "alice", "read", "clients/c1/x")
		if !strings.HasPrefix(out, "deny: no rule matched") {
			t.Errorf("another client id: %q", out)
		}
	})
	for _, args := range [][]string{
		{"acl"},
		{"acl", "explain", "-c", conf, "alice", "delete", "x"},
		{"acl", "explain", "-c", conf, "alice", "read"},
	} {
		if code, _, _ := runCLI(t, args...); code != 2 {
			t.Errorf("%v: exit %d, want 2", args, code)
		}
	}
}

func TestVersionAndUsage(t *testing.T) {
	code, out, _ := runCLI(t, "version")
	if code != 0 || out != "moat "+version+"\n" {
		t.Errorf("version: exit %d, %q", code, out)
	}
	if code, _, errOut := runCLI(t); code != 2 || !strings.Contains(errOut, "usage: moat COMMAND") {
		t.Errorf("no args: exit %d, %q", code, errOut)
	}
	if code, out, _ := runCLI(t, "help"); code != 0 || !strings.Contains(out, "check-config") {
		t.Errorf("help: exit %d, %q", code, out)
	}
	if code, _, errOut := runCLI(t, "frob"); code != 2 || !strings.Contains(errOut, `unknown command "frob"`) {
		t.Errorf("unknown: exit %d, %q", code, errOut)
	}
}
