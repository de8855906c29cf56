// Package passwd reads, verifies and writes mosquitto password files.
//
// The format is mosquitto's: one `user:hash` per line, `#` comments, blank
// lines, blanks and CR around fields trimmed. Hashes are `$6$` (SHA-512 of
// password||salt), `$7$` (PBKDF2-HMAC-SHA512, any iteration count, 12- or
// 64-byte salt) and `$argon2id$` PHC strings.
//
// Moat is stricter than mosquitto on purpose: a malformed, plaintext or
// duplicate entry makes the whole file an error (mosquitto drops the user
// silently, or lets the last duplicate win). A line whose first non-blank
// character is '#' is a comment even when indented, so usernames cannot
// start with '#'. Errors name file and line but never quote line content,
// which may be a plaintext password.
package passwd

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Size limits. MQTT caps a username at 65535 bytes, as mosquitto does.
const (
	MaxUsernameLen = 65535
	maxLineLen     = MaxUsernameLen + maxHashLen + 1024
	maxFileSize    = 64 << 20
	maxLineErrors  = 50
	blanks         = " \t\r\v\f"
)

// File is a parsed password file. It is immutable after Parse or Load and
// safe for concurrent use.
type File struct {
	name    string
	entries map[string]*entry
	dummy   *hashSpec // verified for unknown users, shaped like the file's typical entry
}

type entry struct {
	hash string // as written in the file
	spec *hashSpec
	line int
}

// LineError is a problem with one line of a password file.
type LineError struct {
	File string
	Line int
	Err  error
}

func (e *LineError) Error() string { return fmt.Sprintf("passwd %s:%d: %v", e.File, e.Line, e.Err) }
func (e *LineError) Unwrap() error { return e.Err }

// Load reads and parses the password file at path.
func Load(path string) (*File, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("passwd: %w", err)
	}
	defer fh.Close()
	// moat passwd holds an exclusive lock while it rewrites the file in
	// place: wait for it rather than read a half-written file.
	if err := lockShared(fh, editLockWait); err != nil {
		return nil, fmt.Errorf("passwd %s: %w", path, err)
	}
	data, err := io.ReadAll(io.LimitReader(fh, maxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("passwd %s: %w", path, err)
	}
	return Parse(path, data)
}

// Parse parses the contents of a password file; name is used in errors. On
// error it returns a nil File and every line error joined (errors.Join).
func Parse(name string, data []byte) (*File, error) {
	if len(data) > maxFileSize {
		return nil, fmt.Errorf("passwd %s: file larger than %d bytes", name, maxFileSize)
	}
	f := &File{name: name, entries: make(map[string]*entry)}
	var errs []error
	nerr := 0
	lineNo := 0
	for rest := string(data); rest != ""; {
		var line string
		line, rest, _ = strings.Cut(rest, "\n")
		lineNo++
		user, e, err := parseLine(line, lineNo)
		if err == nil && e != nil {
			if prev, dup := f.entries[user]; dup {
				err = fmt.Errorf("duplicate user %q (first defined at line %d)", user, prev.line)
			} else {
				f.entries[user] = e
			}
		}
		if err != nil {
			nerr++
			if nerr <= maxLineErrors {
				errs = append(errs, &LineError{File: name, Line: lineNo, Err: err})
			}
		}
	}
	if nerr > 0 {
		if nerr > maxLineErrors {
			errs = append(errs, fmt.Errorf("passwd %s: %d more errors not shown", name, nerr-maxLineErrors))
		}
		errs = append(errs, fmt.Errorf("passwd %s: %d entries rejected, refusing the whole file", name, nerr))
		return nil, errors.Join(errs...)
	}
	f.dummy = dummyFor(f.typicalParams())
	return f, nil
}

// parseLine returns the user and entry of a line, or a nil entry for a blank
// or comment line.
func parseLine(line string, lineNo int) (string, *entry, error) {
	if len(line) > maxLineLen {
		return "", nil, fmt.Errorf("line longer than %d bytes", maxLineLen)
	}
	t := strings.Trim(line, blanks)
	if t == "" || t[0] == '#' {
		return "", nil, nil
	}
	user, hash, ok := strings.Cut(t, ":")
	if !ok {
		return "", nil, errors.New("no ':' between username and password hash")
	}
	user, hash = strings.Trim(user, blanks), strings.Trim(hash, blanks)
	if err := ValidateUsername(user); err != nil {
		return "", nil, err
	}
	if hash == "" {
		return "", nil, errors.New("missing password hash")
	}
	if strings.Contains(hash, ":") {
		return "", nil, errors.New("unexpected ':' after the username (a plaintext password? convert the file with `moat passwd -U`)")
	}
	spec, err := parseHash(hash)
	if err != nil {
		return "", nil, err
	}
	return user, &entry{hash: hash, spec: spec, line: lineNo}, nil
}

// ValidateUsername reports why user cannot appear in a password file.
func ValidateUsername(user string) error {
	switch {
	case user == "":
		return errors.New("empty username")
	case len(user) > MaxUsernameLen:
		return fmt.Errorf("username longer than %d bytes", MaxUsernameLen)
	case !utf8.ValidString(user):
		return errors.New("username is not valid UTF-8")
	case strings.Trim(user, blanks) != user:
		return errors.New("username starts or ends with a blank")
	case user[0] == '#':
		return errors.New("username starts with '#'")
	case strings.ContainsRune(user, ':'):
		return errors.New("username contains ':'")
	case strings.ContainsFunc(user, unicode.IsControl):
		return errors.New("username contains a control character")
	}
	return nil
}

// typicalParams picks the parameters the dummy hash copies: the most common
// ones in the file, the most expensive on a tie, the default for an empty file.
func (f *File) typicalParams() params {
	count := make(map[params]int)
	best, bestN := defaultParams(), 0
	for _, e := range f.entries {
		p := e.spec.params()
		count[p]++
		n := count[p]
		if n > bestN || (n == bestN && p.cost() > best.cost()) {
			best, bestN = p, n
		}
	}
	return best
}

// Name is the name the file was parsed under.
func (f *File) Name() string { return f.name }

// Len is the number of users.
func (f *File) Len() int { return len(f.entries) }

// Users returns the usernames, sorted.
func (f *File) Users() []string {
	us := make([]string, 0, len(f.entries))
	for u := range f.entries {
		us = append(us, u)
	}
	sort.Strings(us)
	return us
}

// Fingerprint returns a digest of user's entry that changes whenever the
// entry does, for deciding which sessions to drop after a reload. It does
// not reveal the hash.
func (f *File) Fingerprint(user string) (string, bool) {
	e, ok := f.entries[user]
	if !ok {
		return "", false
	}
	d := sha256.New()
	d.Write([]byte("moat passwd fingerprint\x00"))
	d.Write([]byte(user))
	d.Write([]byte{0})
	d.Write([]byte(e.hash))
	return hex.EncodeToString(d.Sum(nil)[:16]), true
}
