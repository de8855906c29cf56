package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moat-mqtt/moat/internal/passwd"
	"github.com/moat-mqtt/moat/internal/testenv"
)

const secret = "s3cret:pw #1" // must never appear in any output

func runPasswdTest(t *testing.T, stdin string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = runPasswd(args, stdio{strings.NewReader(stdin), &out, &errb})
	if strings.Contains(out.String()+errb.String(), secret) {
		t.Fatalf("password printed:\n%s\n%s", out.String(), errb.String())
	}
	return code, out.String(), errb.String()
}

func verifies(t *testing.T, path, user, pw string) bool {
	t.Helper()
	f, err := passwd.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	ok, err := passwd.NewVerifier(1, 0).Verify(context.Background(), f, user, []byte(pw))
	if err != nil {
		t.Fatal(err)
	}
	return ok
}

func TestPasswdCLI(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "passwd")
	plain := filepath.Join(dir, "plain")
	if err := os.WriteFile(plain, []byte("alice:"+secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	type check func(t *testing.T)
	hasUser := func(user, pw, prefix string) check {
		return func(t *testing.T) {
			data, _ := os.ReadFile(file)
			if !strings.Contains(string(data), user+":"+prefix) {
				t.Errorf("%s: no %s entry in\n%s", user, prefix, data)
			}
			if !verifies(t, file, user, pw) {
				t.Errorf("%s: password does not verify", user)
			}
		}
	}
	tests := []struct {
		name    string
		stdin   string
		args    []string
		code    int
		errText string // in stderr
		outText string // in stdout
		check   check
	}{
		{"no args", "", nil, 1, "usage: moat passwd", "", nil},
		{"help", "", []string{"-h"}, 0, "", "usage: moat passwd", nil},
		{"bad flag", "", []string{"-x", file, "a"}, 1, "flag provided but not defined", "", nil},
		{"c and D", "", []string{"-c", "-D", file, "a"}, 1, "-c and -D cannot be used together", "", nil},
		{"b and D", "", []string{"-b", "-D", file, "a"}, 1, "-b cannot be used with -D", "", nil},
		{"unknown hash", "", []string{"-H", "md5", "-c", "-b", file, "a", secret}, 1, `unknown hash type "md5"`, "", nil},
		{"zero iterations", "", []string{"-I", "0", "-c", "-b", file, "a", secret}, 1, "iterations must be > 0", "", nil},
		{"batch needs password", "", []string{"-c", "-b", file, "a"}, 1, "usage:", "", nil},
		{"too many args", "", []string{"-c", file, "a", "b"}, 1, "usage:", "", nil},
		{"missing file", secret + "\n" + secret + "\n", []string{file, "a"}, 1, "unable to open password file", "", nil},
		{"colon in user", "", []string{"-c", "-b", file, "a:b", secret}, 1, "username contains ':'", "", nil},
		{"create batch", "", []string{"-c", "-b", "-I", "10", file, "alice", secret}, 0, "", "",
			func(t *testing.T) {
				hasUser("alice", secret, "$7$10$")(t)
				if fi, _ := os.Stat(file); fi.Mode().Perm() != 0o600 {
					t.Errorf("new file mode %04o, want 0600", fi.Mode().Perm())
				}
			}},
		{"prompt from stdin", secret + "\r\n" + secret + "\n", []string{"-I", "10", file, "bob"}, 0, "", "Password: \nReenter password: \n",
			hasUser("bob", secret, "$7$10$")},
		{"prompt without final newline", "pw2\npw2", []string{"-H", "sha512", file, "carol"}, 0, "", "", hasUser("carol", "pw2", "$6$")},
		{"mismatch", secret + "\nother\n", []string{"-I", "10", file, "bob"}, 1, "passwords do not match", "", hasUser("bob", secret, "$7$10$")},
		{"empty password", "\n\n", []string{"-I", "10", file, "bob"}, 1, "empty password", "", nil},
		{"empty batch password", "", []string{"-b", file, "bob", ""}, 1, "empty password", "", nil},
		{"stdin ends early", secret + "\n", []string{"-I", "10", file, "bob"}, 1, "reading password: EOF", "", nil},
		{"argon2id", "", []string{"-H", "argon2id", "-b", file, "dave", secret}, 0, "", "", hasUser("dave", secret, "$argon2id$v=19$m=47104,t=1,p=1$")},
		{"update keeps others", "", []string{"-b", "-I", "11", file, "alice", "new"}, 0, "", "",
			func(t *testing.T) { hasUser("alice", "new", "$7$11$")(t); hasUser("bob", secret, "$7$10$")(t) }},
		{"delete", "", []string{"-D", file, "dave"}, 0, "", "", func(t *testing.T) {
			if data, _ := os.ReadFile(file); strings.Contains(string(data), "dave:") {
				t.Error("dave still in the file")
			}
		}},
		{"delete unknown", "", []string{"-D", file, "dave"}, 1, "Warning: User dave not found in password file.", "", nil},
		{"convert", "", []string{"-U", "-I", "10", plain}, 0, "", "1 plaintext passwords hashed", func(t *testing.T) {
			if !verifies(t, plain, "alice", secret) {
				t.Error("converted password does not verify")
			}
		}},
		{"convert args", "", []string{"-U", plain, "x"}, 1, "-U takes exactly one argument", "", nil},
		{"convert with c", "", []string{"-U", "-c", plain}, 1, "-U cannot be used with", "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errOut := runPasswdTest(t, tt.stdin, tt.args...)
			if code != tt.code || !strings.Contains(errOut, tt.errText) || !strings.Contains(out, tt.outText) {
				t.Fatalf("exit %d (want %d)\nstdout: %s\nstderr: %s\nwant stderr %q, stdout %q", code, tt.code, out, errOut, tt.errText, tt.outText)
			}
			if tt.check != nil {
				tt.check(t)
			}
		})
	}
}

func TestPasswdCLIWarnings(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "passwd")
	os.WriteFile(file, []byte("frank:plain-pass\n"), 0o644)
	os.Chmod(file, 0o644)
	code, _, errOut := runPasswdTest(t, "", "-b", "-I", "10", file, "alice", "x")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{"Warning: Moat will refuse", file + ":1: not a password hash", "accessible by other users (mode 0644)"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("stderr lacks %q:\n%s", want, errOut)
		}
	}
	if strings.Contains(errOut, "plain-pass") {
		t.Errorf("warning quotes a plaintext password:\n%s", errOut)
	}
	if fi, _ := os.Stat(file); fi.Mode().Perm() != 0o644 {
		t.Errorf("mode changed to %04o", fi.Mode().Perm())
	}
}

// TestPasswdMosquittoAccepts has mosquitto 2.0 itself load a file written by
// `moat passwd` and authenticate against it.
func TestPasswdMosquittoAccepts(t *testing.T) {
	broker := testenv.LookPath(t, "mosquitto", "apt-get install mosquitto")
	pub := testenv.LookPath(t, "mosquitto_pub", "apt-get install mosquitto-clients")

	dir := t.TempDir()
	file := filepath.Join(dir, "passwd")
	users := []struct {
		name string
		args []string
	}{
		{"default", nil}, // $7$ 210000, 12-byte salt
		{"sha512", []string{"-H", "sha512"}},
		{"rounds", []string{"-I", "1000"}},
	}
	for i, u := range users {
		args := append([]string{"-b"}, u.args...)
		if i == 0 {
			args = append(args, "-c")
		}
		args = append(args, file, u.name, secret+u.name)
		if code, _, errOut := runPasswdTest(t, "", args...); code != 0 {
			t.Fatalf("moat passwd %v: exit %d: %s", args, code, errOut)
		}
	}

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().(*net.TCPAddr)
	l.Close()
	conf := filepath.Join(dir, "mosquitto.conf")
	// user root: mosquitto started as root would otherwise drop to the
	// mosquitto user, which cannot read our 0600 file.
	cfg := fmt.Sprintf("listener %d 127.0.0.1\nallow_anonymous false\npassword_file %s\npersistence false\nuser root\nlog_dest stderr\n", addr.Port, file)
	if err := os.WriteFile(conf, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var logs bytes.Buffer
	cmd := exec.CommandContext(ctx, broker, "-c", conf)
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	// The log buffer may be read only once mosquitto has exited.
	stop := sync.OnceFunc(func() {
		cmd.Process.Kill()
		<-exited
	})
	defer func() {
		stop()
		if t.Failed() {
			t.Logf("mosquitto log:\n%s", logs.String())
		}
	}()
	for deadline := time.Now().Add(20 * time.Second); ; {
		c, err := net.DialTimeout("tcp", addr.String(), time.Second)
		if err == nil {
			c.Close()
			break
		}
		select {
		case <-exited:
			t.Fatal("mosquitto exited")
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("mosquitto not listening: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}

	publish := func(user, pw string) error {
		c := exec.CommandContext(ctx, pub, "-h", "127.0.0.1", "-p", fmt.Sprint(addr.Port),
			"-u", user, "-P", pw, "-t", "moat/test", "-m", "hi", "-q", "1")
		out, err := c.CombinedOutput()
		if err != nil {
			return fmt.Errorf("%v: %s", err, bytes.ReplaceAll(out, []byte(pw), []byte("***")))
		}
		return nil
	}
	for _, u := range users {
		if err := publish(u.name, secret+u.name); err != nil {
			t.Errorf("%s: mosquitto refused the right password: %v", u.name, err)
		}
		if err := publish(u.name, secret); err == nil {
			t.Errorf("%s: mosquitto accepted a wrong password", u.name)
		}
	}
	stop()
	if strings.Contains(logs.String(), "Unable to decode") || strings.Contains(logs.String(), "Invalid password hash") {
		t.Errorf("mosquitto rejected entries:\n%s", logs.String())
	}
}

// TestPasswdDeleteBadLine: `moat passwd -D` on a file with a bad line
// elsewhere never exits 0 while the user can still log in: Moat refuses
// such a file and keeps the last one it loaded. It says file:line and
// leaves the file alone.
func TestPasswdDeleteBadLine(t *testing.T) {
	file := filepath.Join(t.TempDir(), "passwd")
	h, err := passwd.Hash([]byte(secret), passwd.AlgPBKDF2, 10)
	if err != nil {
		t.Fatal(err)
	}
	orig := "alice:" + h + "\nbob\ncarol:" + h + "\n"
	if err := os.WriteFile(file, []byte(orig), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, errOut := runPasswdTest(t, "", "-D", file, "alice")
	if code == 0 || !strings.Contains(errOut, file+":2:") {
		t.Fatalf("exit %d, stderr:\n%s\nwant a refusal naming %s:2:", code, errOut, file)
	}
	if data, _ := os.ReadFile(file); string(data) != orig {
		t.Fatalf("refused -D changed the file:\n%s", data)
	}
	// Fixed, the delete goes through and the file loads without alice.
	os.WriteFile(file, []byte("alice:"+h+"\ncarol:"+h+"\n"), 0o600)
	if code, _, errOut := runPasswdTest(t, "", "-D", file, "alice"); code != 0 || errOut != "" {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if verifies(t, file, "alice", secret) || !verifies(t, file, "carol", secret) {
		t.Fatal("alice not deleted, or carol lost")
	}
}
