package passwd

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

// MaxPasswordLen is MQTT's limit on a password.
const MaxPasswordLen = 65535

// ErrUserNotFound is returned by DeleteUser when the file has no such user.
var ErrUserNotFound = errors.New("user not found")

// ErrInterruptedEdit is returned when an earlier edit of the file was
// interrupted and its complete copy is still waiting next to the file.
var ErrInterruptedEdit = errors.New("an earlier edit of this file was interrupted")

// ErrBeingEdited is returned by Load when an edit holds the file's lock
// for longer than editLockWait.
var ErrBeingEdited = errors.New("the file is being edited (locked by moat passwd); try again")

// editLockWait bounds how long Load waits for an edit to finish.
const editLockWait = time.Second

// pendingSuffix names the complete copy of an edit in progress:
// ".NAME.moat-pending" in the file's directory.
const pendingSuffix = ".moat-pending"

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
// must exist. The file is rewritten in place (see rewrite).
func SetPassword(path, user string, password []byte, alg string, iterations int, create bool) error {
	if err := ValidateUsername(user); err != nil {
		return fmt.Errorf("passwd: %w", err)
	}
	if err := ValidatePassword(password); err != nil {
		return fmt.Errorf("passwd: %w", err)
	}
	hash, err := Hash(password, alg, iterations)
	if err != nil {
		return err
	}
	newLine := user + ":" + hash
	return rewrite(path, create, nil, func(lines []string) ([]string, error) {
		if create {
			lines = nil
		}
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
		return out, nil
	})
}

// DeleteUser removes every entry of user from the file at path, keeping
// other lines; ErrUserNotFound when there is none. The result must load
// as Moat loads it, without the user: otherwise the delete is refused with
// the file's line errors and the file left as it is, since a running Moat
// keeps the last file it loaded, where the user could still log in.
func DeleteUser(path, user string) error {
	return rewrite(path, false, nil, func(lines []string) ([]string, error) {
		out := lines[:0:0]
		for _, l := range lines {
			if lineUser(l) != user {
				out = append(out, l)
			}
		}
		if len(out) == len(lines) {
			return nil, fmt.Errorf("passwd %s: %q: %w", path, user, ErrUserNotFound)
		}
		f, err := Parse(path, joinLines(out))
		if err == nil && !slices.Contains(f.Users(), user) {
			return out, nil
		}
		if _, origErr := Parse(path, joinLines(lines)); origErr != nil {
			err = origErr // line numbers as in the file on disk
		} else if err == nil {
			err = errors.New("the user would remain")
		}
		return nil, fmt.Errorf("passwd %s: not deleting %q: Moat would not load the result and would keep the last file it loaded, where the user may still log in; fix these first: %w", path, user, err)
	})
}

// ConvertPlaintext replaces each plaintext `user:password` line of the file
// at path by `user:hash` and returns how many it converted. Blanks around the
// password are trimmed, as the broker did with plaintext files. Lines that
// already hold a valid hash are left alone (mosquitto_passwd -U would hash
// the hash). Nothing is written unless every line is valid.
func ConvertPlaintext(path, alg string, iterations int) (int, error) {
	if _, err := newSpec(alg, iterations); err != nil {
		return 0, err
	}
	n := 0
	err := rewrite(path, false, nil, func(lines []string) ([]string, error) {
		var errs []error
		seen := make(map[string]int)
		out := make([]string, len(lines))
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
				return nil, err
			}
			out[i] = user + ":" + hash
			n++
		}
		if len(errs) > 0 {
			return nil, errors.Join(errs...)
		}
		if n == 0 {
			return nil, errUnchanged
		}
		return out, nil
	})
	if errors.Is(err, errUnchanged) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	return n, nil
}

// errUnchanged tells rewrite that there is nothing to write.
var errUnchanged = errors.New("unchanged")

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

// splitLines returns the lines of data without their "\n" (a CR stays).
func splitLines(data []byte) []string {
	s := strings.TrimSuffix(string(data), "\n")
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

func joinLines(lines []string) []byte {
	var b bytes.Buffer
	for _, l := range lines {
		b.WriteString(l)
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// PendingCopy is where an edit of the file at path keeps its complete new
// content while it overwrites the file: ".NAME.moat-pending" beside it.
func PendingCopy(path string) string {
	target := path
	if r, err := filepath.EvalSymlinks(path); err == nil {
		target = r
	}
	return filepath.Join(filepath.Dir(target), "."+filepath.Base(target)+pendingSuffix)
}

// rewrite edits the file at path in place. The file keeps its inode, so
// it keeps its owner, mode, hard links and symlinks, and a bind mount of it
// sees the change: rename(2) cannot replace a bind-mounted file (EBUSY,
// EXDEV), and a rename on the host is never seen through a bind mount,
// which holds the old inode.
//
// Protocol, so that an interruption never leaves the only copy of the new
// content truncated or half-written:
//  1. open the file read-write (a missing one only with create, as 0600)
//     and take an exclusive flock(2): concurrent edits wait for each other;
//  2. refuse if a pending copy (step 4) exists: an earlier edit was
//     interrupted, and the file may be incomplete;
//  3. read the file and compute the new content (change);
//  4. write the new content to a temporary file beside the file, fsync it,
//     rename it to the pending copy (.NAME.moat-pending) and fsync the
//     directory: a complete copy of the new content is now on disk;
//  5. truncate the file, write the new content from offset 0, fsync it;
//  6. remove the pending copy and fsync the directory.
//
// An interruption before step 4 completes leaves the file as it was; during
// step 5 the file may be empty or a prefix of the new content (never more
// users than the new file: a cut line does not parse), and the pending
// copy holds the whole of it: restore with `cat COPY > FILE; rm COPY`.
// Load takes a shared lock, so a reader (a reload) waits for step 5 to
// end; Moat's watcher, which does not lock, applies a changed file only
// once it has been stable for a whole watch interval.
//
// interrupt, for tests, is called at each step; true stops there as a
// crash would, without any clean-up.
func rewrite(path string, create bool, interrupt func(step string) bool, change func(lines []string) ([]string, error)) (err error) {
	if interrupt == nil {
		interrupt = func(string) bool { return false }
	}
	crashed := errors.New("interrupted (test)")
	flags := os.O_RDWR
	if create {
		flags |= os.O_CREATE
	}
	_, statErr := os.Stat(path)
	f, err := os.OpenFile(path, flags, 0o600)
	if err != nil {
		return fmt.Errorf("passwd: %w%s", err, openAdvice(err))
	}
	defer f.Close()
	written := false // the file has been touched (step 5)
	if errors.Is(statErr, fs.ErrNotExist) {
		defer func() {
			if err != nil && !written && !errors.Is(err, crashed) {
				os.Remove(path) // created here and never written
			}
		}()
	}
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("passwd: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("passwd %s: not a regular file", path)
	}
	if err := lockFile(f); err != nil {
		return fmt.Errorf("passwd %s: lock: %w", path, err)
	}
	pending := PendingCopy(path)
	if _, err := os.Lstat(pending); err == nil {
		return fmt.Errorf("passwd %s: %w: %s holds the complete new file; check it, restore it in place with `cat %s > %s`, then remove it (or remove it to keep %s as it is)",
			path, ErrInterruptedEdit, pending, pending, path, path)
	}
	if fi.Size() > maxFileSize {
		return fmt.Errorf("passwd %s: file larger than %d bytes", path, maxFileSize)
	}
	old, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return fmt.Errorf("passwd %s: %w", path, err)
	}
	if len(old) > maxFileSize {
		return fmt.Errorf("passwd %s: file larger than %d bytes", path, maxFileSize)
	}
	lines, err := change(splitLines(old))
	if errors.Is(err, errUnchanged) {
		return err
	}
	if err != nil {
		return err
	}
	data := joinLines(lines)

	// Step 4: the complete copy.
	dir := filepath.Dir(pending)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*") // created 0600
	if err != nil {
		return fmt.Errorf("passwd %s: cannot write the safety copy of the new file beside it, so the file was not changed: %w", path, err)
	}
	defer func() {
		if err != nil && !errors.Is(err, crashed) {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if _, err = tmp.Write(data); err != nil {
		return fmt.Errorf("passwd: writing %s: %w", tmp.Name(), err)
	}
	if err = tmp.Sync(); err != nil {
		return fmt.Errorf("passwd: %w", err)
	}
	if err = tmp.Close(); err != nil {
		return fmt.Errorf("passwd: %w", err)
	}
	if interrupt("copy written") {
		return crashed
	}
	if err = os.Rename(tmp.Name(), pending); err != nil {
		return fmt.Errorf("passwd: %w", err)
	}
	if err = syncDir(dir); err != nil {
		os.Remove(pending)
		return fmt.Errorf("passwd: %w", err)
	}
	if interrupt("copy committed") {
		return crashed
	}

	// Step 5: overwrite in place. From here a failure keeps the pending
	// copy, which the error names.
	restore := func(err error) error {
		return fmt.Errorf("passwd %s: rewriting in place failed: %w; the complete new file is in %s: restore it with `cat %s > %s`, then remove it", path, err, pending, pending, path)
	}
	written = true
	if err := f.Truncate(0); err != nil {
		return restore(err)
	}
	half := len(data) / 2
	if _, err := f.WriteAt(data[:half], 0); err != nil {
		return restore(err)
	}
	if interrupt("half written") {
		return crashed
	}
	if _, err := f.WriteAt(data[half:], int64(half)); err != nil {
		return restore(err)
	}
	if err := f.Sync(); err != nil {
		return restore(err)
	}
	if interrupt("file written") {
		return crashed
	}

	// Step 6.
	if err := os.Remove(pending); err != nil {
		return fmt.Errorf("passwd %s: the file is complete, but its safety copy %s could not be removed (remove it before the next edit): %w", path, pending, err)
	}
	_ = syncDir(dir) // the file is complete; a copy reappearing after a crash only asks for a check
	return nil
}

// openAdvice says what to do when the file cannot be opened for writing.
func openAdvice(err error) string {
	switch {
	case errors.Is(err, syscall.EROFS):
		return " (the file is on a read-only mount, e.g. a container volume mounted :ro: edit it where it is writable, on the host)"
	case errors.Is(err, fs.ErrPermission):
		return " (no write permission: run as the file's owner)"
	case errors.Is(err, syscall.ETXTBSY), errors.Is(err, syscall.EBUSY):
		return " (the file is busy)"
	}
	return ""
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, syscall.EINVAL) {
		return err
	}
	return nil
}
