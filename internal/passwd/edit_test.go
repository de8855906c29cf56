package passwd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
)

func mustVerify(t *testing.T, path, user, pw string, want bool) {
	t.Helper()
	f, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	ok, err := NewVerifier(1, 0).Verify(context.Background(), f, user, []byte(pw))
	if err != nil || ok != want {
		t.Fatalf("%s with %q: %v %v, want %v", user, pw, ok, err, want)
	}
}

func fileMode(t *testing.T, path string) fs.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

func noTempFiles(t *testing.T, dir string) {
	t.Helper()
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.Contains(e.Name(), ".tmp-") {
			t.Errorf("temporary file left behind: %s", e.Name())
		}
	}
}

func TestSetPassword(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "pw")
	if err := SetPassword(path, "alice", []byte("a"), "", 10, false); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("update of a missing file: %v", err)
	}
	if err := SetPassword(path, "alice", []byte("a1"), "", 10, true); err != nil {
		t.Fatal(err)
	}
	if m := fileMode(t, path); m != 0o600 {
		t.Fatalf("new file mode %04o, want 0600", m)
	}
	mustVerify(t, path, "alice", "a1", true)

	// Hand edits survive an update: comments, order, CRLF lines of others.
	h := testHash(t, "bee")
	orig := "# users\nalice:" + testHash(t, "old") + "\r\nbob:" + h + "\r\n\n# end\n  alice :" + testHash(t, "dup") + "\n"
	os.WriteFile(path, []byte(orig), 0o640)
	os.Chmod(path, 0o640)
	if err := SetPassword(path, "alice", []byte("new"), AlgSHA512, 0, false); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(path)
	lines := strings.Split(string(data), "\n")
	if len(lines) != 6 || lines[0] != "# users" || !strings.HasPrefix(lines[1], "alice:$6$") ||
		lines[2] != "bob:"+h+"\r" || lines[3] != "" || lines[4] != "# end" || lines[5] != "" {
		t.Fatalf("updated file:\n%q", data)
	}
	if m := fileMode(t, path); m != 0o640 {
		t.Fatalf("mode changed to %04o, want 0640", m)
	}
	mustVerify(t, path, "alice", "new", true)
	mustVerify(t, path, "bob", "bee", true)

	if err := SetPassword(path, "carol", []byte("c"), "", 10, false); err != nil {
		t.Fatal(err)
	}
	mustVerify(t, path, "carol", "c", true)

	// -c over an existing file keeps only the new user, and the file's mode.
	if err := SetPassword(path, "dave", []byte("d"), "", 10, true); err != nil {
		t.Fatal(err)
	}
	if f, _ := Load(path); strings.Join(f.Users(), ",") != "dave" {
		t.Fatalf("after create: %v", f.Users())
	}
	if m := fileMode(t, path); m != 0o640 {
		t.Fatalf("mode changed to %04o, want 0640", m)
	}

	for _, bad := range []struct{ user, pw string }{{"a:b", "x"}, {"a\nb", "x"}, {"", "x"}, {"#a", "x"}, {"a", ""}} {
		if err := SetPassword(path, bad.user, []byte(bad.pw), "", 10, false); err == nil {
			t.Errorf("SetPassword(%q, %q) succeeded", bad.user, bad.pw)
		}
	}
	if err := SetPassword(path, "a", []byte("x"), "md5", 0, false); err == nil {
		t.Error("unknown algorithm accepted")
	}
	noTempFiles(t, dir)
}

func TestWriteKeepsSymlink(t *testing.T) {
	dir := t.TempDir()
	real := filepath.Join(dir, "real")
	link := filepath.Join(dir, "link")
	if err := SetPassword(real, "a", []byte("x"), "", 10, true); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("real", link); err != nil {
		t.Fatal(err)
	}
	if err := SetPassword(link, "b", []byte("y"), "", 10, false); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(link); err != nil || fi.Mode()&fs.ModeSymlink == 0 {
		t.Fatalf("link replaced by a file: %v", err)
	}
	mustVerify(t, real, "b", "y", true)
}

func TestDeleteUser(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "pw")
	orig := "# c\na:" + testHash(t, "x") + "\nb:" + testHash(t, "y") + "\n"
	os.WriteFile(path, []byte(orig), 0o600)
	if err := DeleteUser(path, "nobody"); !errors.Is(err, ErrUserNotFound) {
		t.Fatalf("delete of unknown user: %v", err)
	}
	if data, _ := os.ReadFile(path); string(data) != orig {
		t.Fatal("failed delete changed the file")
	}
	if err := DeleteUser(path, "a"); err != nil {
		t.Fatal(err)
	}
	if data, _ := os.ReadFile(path); string(data) != "# c\nb:"+testHash(t, "y")+"\n" {
		t.Fatalf("after delete:\n%s", data)
	}
	if err := DeleteUser(filepath.Join(dir, "missing"), "a"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
	noTempFiles(t, dir)
}

func TestConvertPlaintext(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "pw")
	hashed := testHash(t, "kept")
	os.WriteFile(path, []byte("# plain\nalice:pa:ss\r\n  bob :  spaced out \ncarol:"+hashed+"\n\n"), 0o644)
	os.Chmod(path, 0o644)
	n, err := ConvertPlaintext(path, "", 10)
	if err != nil || n != 2 {
		t.Fatalf("ConvertPlaintext = %d, %v; want 2", n, err)
	}
	data, _ := os.ReadFile(path)
	if strings.Contains(string(data), "pa:ss") || !strings.Contains(string(data), "carol:"+hashed+"\n") ||
		!strings.HasPrefix(string(data), "# plain\n") {
		t.Fatalf("converted file:\n%s", data)
	}
	mustVerify(t, path, "alice", "pa:ss", true)
	mustVerify(t, path, "bob", "spaced out", true)
	mustVerify(t, path, "carol", "kept", true)
	if m := fileMode(t, path); m != 0o644 {
		t.Fatalf("mode %04o, want the file's 0644", m)
	}
	if n, err := ConvertPlaintext(path, "", 10); n != 0 || err != nil {
		t.Fatalf("second conversion = %d, %v; want nothing to do", n, err)
	}

	for _, bad := range []string{"a:s3cret\nnocolon\n", "a:s3cret\na:s3cret\n", "a:\n", "a:s3cret:c\n:s3cret\n", "a\x01:s3cret\n"} {
		os.WriteFile(path, []byte(bad), 0o600)
		n, err := ConvertPlaintext(path, "", 10)
		if err == nil || n != 0 || !strings.Contains(err.Error(), "passwd "+path+":") {
			t.Errorf("%q: %d, %v; want a line error", bad, n, err)
		}
		if data, _ := os.ReadFile(path); string(data) != bad {
			t.Errorf("%q: file changed on error", bad)
		}
		if err != nil && strings.Contains(err.Error(), "s3cret") {
			t.Errorf("error quotes a password: %v", err)
		}
	}
	noTempFiles(t, dir)
}

// TestEditInterrupted stops an edit at each step as a crash would. The file
// is never lost: it is either as it was, or the complete new content is in
// the pending copy, and later edits refuse (naming the copy) until it has
// been restored.
func TestEditInterrupted(t *testing.T) {
	orig := "a:" + testHash(t, "x") + "\nb:" + testHash(t, "y") + "\nc:" + testHash(t, "z") + "\n"
	newContent := "b:" + testHash(t, "y") + "\nc:" + testHash(t, "z") + "\n"
	drop := func(lines []string) ([]string, error) {
		return slices.DeleteFunc(slices.Clone(lines), func(l string) bool { return lineUser(l) == "a" }), nil
	}
	for _, step := range []string{"copy written", "copy committed", "half written", "file written"} {
		t.Run(step, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "passwd")
			os.WriteFile(path, []byte(orig), 0o600)
			err := rewrite(path, false, func(s string) bool { return s == step }, drop)
			if err == nil {
				t.Fatal("the interruption was not reached")
			}
			data, _ := os.ReadFile(path)
			if f, err := Parse(path, data); err == nil && slices.Contains(f.Users(), "a") && string(data) != orig {
				t.Fatalf("the interrupted file lets a in and is not the original:\n%s", data)
			}
			if !strings.HasPrefix(newContent, string(data)) && string(data) != orig {
				t.Fatalf("interrupted file is neither the original nor a prefix of the new one:\n%q", data)
			}
			pending := PendingCopy(path)
			copyData, copyErr := os.ReadFile(pending)
			if step == "copy written" {
				if string(data) != orig || copyErr == nil {
					t.Fatalf("before the copy is committed the file must be untouched and no copy pending: %q, %v", data, copyErr)
				}
				if err := DeleteUser(path, "a"); err != nil {
					t.Fatalf("edit after an early interruption: %v", err)
				}
				if got, _ := os.ReadFile(path); string(got) != newContent {
					t.Fatalf("after the retried edit: %q", got)
				}
				return
			}
			if copyErr != nil || string(copyData) != newContent {
				t.Fatalf("pending copy: %q, %v; want the complete new file", copyData, copyErr)
			}
			for _, edit := range []func() error{
				func() error { return DeleteUser(path, "b") },
				func() error { return SetPassword(path, "d", []byte("w"), "", 10, false) },
				func() error { _, err := ConvertPlaintext(path, "", 10); return err },
			} {
				err := edit()
				if !errors.Is(err, ErrInterruptedEdit) || !strings.Contains(err.Error(), pending) {
					t.Fatalf("edit after an interruption: %v; want ErrInterruptedEdit naming %s", err, pending)
				}
			}
			if got, _ := os.ReadFile(path); !bytes.Equal(got, data) {
				t.Fatal("a refused edit changed the file")
			}
			// The advice: cat COPY > FILE; rm COPY.
			if err := os.WriteFile(path, copyData, 0); err != nil {
				t.Fatal(err)
			}
			os.Remove(pending)
			mustVerify(t, path, "a", "x", false)
			mustVerify(t, path, "b", "y", true)
			if err := DeleteUser(path, "b"); err != nil {
				t.Fatalf("edit after the restore: %v", err)
			}
		})
	}
}

// TestDeleteUserBadLine: -D on a file Moat does not load is refused with
// file:line and leaves the file as it was (a running Moat would keep the
// user otherwise); on a good file the result loads without the user.
func TestDeleteUserBadLine(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "pw")
	for _, bad := range []string{"bob\n", "bob:plaintext\n", "bob:$7$broken\n", "  \x01:" + testHash(t, "c") + "\n", strings.Repeat("x", 70000) + "\n"} {
		orig := "a:" + testHash(t, "x") + "\n" + bad + "c:" + testHash(t, "z") + "\n"
		os.WriteFile(path, []byte(orig), 0o600)
		err := DeleteUser(path, "a")
		if err == nil || !strings.Contains(err.Error(), path+":2:") {
			t.Errorf("%q: %v; want a refusal naming %s:2:", bad, err, path)
		}
		if data, _ := os.ReadFile(path); string(data) != orig {
			t.Errorf("%q: refused delete changed the file", bad)
		}
	}
	// A duplicate of the deleted user: the result loads, so it is written.
	os.WriteFile(path, []byte("a:"+testHash(t, "x")+"\nc:"+testHash(t, "z")+"\n a :"+testHash(t, "dup")+"\n"), 0o600)
	if err := DeleteUser(path, "a"); err != nil {
		t.Fatalf("delete of a duplicated user: %v", err)
	}
	mustVerify(t, path, "a", "dup", false)
	mustVerify(t, path, "c", "z", true)
	noTempFiles(t, dir)
}

// TestEditConcurrent: many edits of one file at once (scripts adding users
// in parallel) all land: each waits for the others' lock, none is lost.
func TestEditConcurrent(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "passwd")
	if err := SetPassword(path, "admin", []byte("a"), AlgSHA512, 0, true); err != nil {
		t.Fatal(err)
	}
	const n = 100
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			user := fmt.Sprintf("u%d", i)
			if err := SetPassword(path, user, []byte("p"+user), AlgSHA512, 0, false); err != nil {
				errs <- err
			}
			if i%4 == 0 {
				if err := DeleteUser(path, user); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	f, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := len(f.Users()); got != 1+n-n/4 {
		t.Fatalf("%d users, want %d: edits were lost", got, 1+n-n/4)
	}
	mustVerify(t, path, "u1", "pu1", true)
	mustVerify(t, path, "u4", "pu4", false)
	noTempFiles(t, dir)
}
