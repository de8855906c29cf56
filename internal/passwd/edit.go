package passwd

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// MaxPasswordLen is MQTT's limit on a password.
const MaxPasswordLen = 65535

// ErrUserNotFound is returned by DeleteUser when the file has no such user.
var ErrUserNotFound = errors.New("user not found")

// ValidatePassword reports why password cannot be stored.
func ValidatePassword(password []byte) error {
	switch {
	case len(password) == 0:
		return errors.New("empty password")
	case len(password) > MaxPasswordLen:
		return fmt.Errorf("password longer than %d bytes", MaxPasswordLen)
	}
	return nil
}

// SetPassword gives user a new hash of password in the file at path,
// replacing the user's entry in place (and any duplicates of it) or
// appending one; other lines are kept as they are. With create the file is
// created, or overwritten to hold only this user. Without create the file
// must exist.
func SetPassword(path, user string, password []byte, alg string, iterations int, create bool) error {
	if err := ValidateUsername(user); err != nil {
		return fmt.Errorf("passwd: %w", err)
	}
	if err := ValidatePassword(password); err != nil {
		return fmt.Errorf("passwd: %w", err)
	}
	var lines []string
	if !create {
		var err error
		if lines, err = readLines(path); err != nil {
			return err
		}
	}
	hash, err := Hash(password, alg, iterations)
	if err != nil {
		return err
	}
	newLine := user + ":" + hash
	out := make([]string, 0, len(lines)+1)
	done := false
	for _, l := range lines {
		if lineUser(l) != user {
			out = append(out, l)
		} else if !done {
			out = append(out, newLine)
			done = true
		}
	}
	if !done {
		out = append(out, newLine)
	}
	return writeFile(path, out)
}

// DeleteUser removes every entry of user from the file at path, keeping
// other lines; ErrUserNotFound when there is none.
func DeleteUser(path, user string) error {
	lines, err := readLines(path)
	if err != nil {
		return err
	}
	out := lines[:0:0]
	for _, l := range lines {
		if lineUser(l) != user {
			out = append(out, l)
		}
	}
	if len(out) == len(lines) {
		return fmt.Errorf("passwd %s: %q: %w", path, user, ErrUserNotFound)
	}
	return writeFile(path, out)
}

// ConvertPlaintext replaces each plaintext `user:password` line of the file
// at path by `user:hash` and returns how many it converted. Blanks around the
// password are trimmed, as the broker did with plaintext files. Lines that
// already hold a valid hash are left alone (mosquitto_passwd -U would hash
// the hash). Nothing is written unless every line is valid.
func ConvertPlaintext(path, alg string, iterations int) (int, error) {
	lines, err := readLines(path)
	if err != nil {
		return 0, err
	}
	if _, err := newSpec(alg, iterations); err != nil {
		return 0, err
	}
	var errs []error
	seen := make(map[string]int)
	out := make([]string, len(lines))
	n := 0
	for i, l := range lines {
		out[i] = l
		t := strings.Trim(l, blanks)
		if t == "" || t[0] == '#' {
			continue
		}
		lineErr := func(err error) { errs = append(errs, &LineError{File: path, Line: i + 1, Err: err}) }
		user, pw, ok := strings.Cut(t, ":")
		if !ok {
			lineErr(errors.New("no ':' between username and password"))
			continue
		}
		user, pw = strings.Trim(user, blanks), strings.Trim(pw, blanks)
		if err := ValidateUsername(user); err != nil {
			lineErr(err)
			continue
		}
		if first, dup := seen[user]; dup {
			lineErr(fmt.Errorf("duplicate user %q (first defined at line %d)", user, first))
			continue
		}
		seen[user] = i + 1
		if _, err := parseHash(pw); err == nil {
			continue
		}
		if err := ValidatePassword([]byte(pw)); err != nil {
			lineErr(err)
			continue
		}
		hash, err := Hash([]byte(pw), alg, iterations)
		if err != nil {
			return 0, err
		}
		out[i] = user + ":" + hash
		n++
	}
	if len(errs) > 0 {
		return 0, errors.Join(errs...)
	}
	if n == 0 {
		return 0, nil
	}
	return n, writeFile(path, out)
}

// lineUser is the username a line defines, "" for blanks and comments.
func lineUser(l string) string {
	t := strings.Trim(l, blanks)
	if t == "" || t[0] == '#' {
		return ""
	}
	u, _, ok := strings.Cut(t, ":")
	if !ok {
		return ""
	}
	return strings.Trim(u, blanks)
}

// readLines returns the lines of path without their "\n" (a CR stays).
func readLines(path string) ([]string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("passwd: %w", err)
	}
	if fi.Size() > maxFileSize {
		return nil, fmt.Errorf("passwd %s: file larger than %d bytes", path, maxFileSize)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("passwd: %w", err)
	}
	s := strings.TrimSuffix(string(data), "\n")
	if s == "" {
		return nil, nil
	}
	return strings.Split(s, "\n"), nil
}

// writeFile replaces path atomically with lines: a temporary file in the
// same directory, fsync, rename, fsync of the directory. A new file gets mode
// 0600; an existing one keeps its permission bits and, when allowed, its
// owner. A symlink is followed, so the link stays.
func writeFile(path string, lines []string) (err error) {
	target := path
	if r, err := filepath.EvalSymlinks(path); err == nil {
		target = r
	}
	mode := fs.FileMode(0o600)
	fi, statErr := os.Stat(target)
	switch {
	case statErr == nil:
		if !fi.Mode().IsRegular() {
			return fmt.Errorf("passwd %s: not a regular file", path)
		}
		mode = fi.Mode().Perm()
	case !errors.Is(statErr, fs.ErrNotExist):
		return fmt.Errorf("passwd: %w", statErr)
	}
	dir := filepath.Dir(target)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(target)+".tmp-*") // created 0600
	if err != nil {
		return fmt.Errorf("passwd: %w", err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err = tmp.Chmod(mode); err != nil {
		return fmt.Errorf("passwd: %w", err)
	}
	if statErr == nil {
		keepOwner(tmp, fi)
	}
	var b strings.Builder
	for _, l := range lines {
		b.WriteString(l)
		b.WriteByte('\n')
	}
	if _, err = tmp.WriteString(b.String()); err != nil {
		return fmt.Errorf("passwd: writing %s: %w", tmp.Name(), err)
	}
	if err = tmp.Sync(); err != nil {
		return fmt.Errorf("passwd: %w", err)
	}
	if err = tmp.Close(); err != nil {
		return fmt.Errorf("passwd: %w", err)
	}
	if err = os.Rename(tmp.Name(), target); err != nil {
		return fmt.Errorf("passwd: %w", err)
	}
	if d, derr := os.Open(dir); derr == nil {
		d.Sync()
		d.Close()
	}
	return nil
}
