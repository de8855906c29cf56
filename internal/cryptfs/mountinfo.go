package cryptfs

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// mountEntry is one line of /proc/<pid>/mountinfo (proc(5)), reduced to
// the fields the supervisor decides on.
type mountEntry struct {
	ID         int
	Parent     int
	Minor      uint32 // device minor; names the FUSE connection in fusectl
	MountPoint string
	FSType     string
	Source     string
}

// errMountinfoLine is wrapped by every parse error of a single line.
var errMountinfoLine = errors.New("malformed mountinfo line")

// parseMountinfoLine parses one mountinfo line:
//
//	36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
//
// The number of optional fields before "-" varies; paths are octal-escaped.
func parseMountinfoLine(line string) (mountEntry, error) {
	// The kernel separates fields by single spaces and escapes spaces
	// inside them, so any other whitespace belongs to a field.
	f := strings.Split(line, " ")
	if len(f) < 10 {
		return mountEntry{}, fmt.Errorf("%w: %d fields", errMountinfoLine, len(f))
	}
	for i, s := range f {
		if s == "" {
			return mountEntry{}, fmt.Errorf("%w: empty field %d", errMountinfoLine, i+1)
		}
	}
	sep := -1
	for i := 6; i < len(f); i++ {
		if f[i] == "-" {
			sep = i
			break
		}
	}
	if sep < 0 || sep+3 > len(f) {
		return mountEntry{}, fmt.Errorf("%w: no separator", errMountinfoLine)
	}
	id, err := strconv.Atoi(f[0])
	if err != nil || id < 0 {
		return mountEntry{}, fmt.Errorf("%w: mount id %q", errMountinfoLine, f[0])
	}
	parent, err := strconv.Atoi(f[1])
	if err != nil || parent < 0 {
		return mountEntry{}, fmt.Errorf("%w: parent id %q", errMountinfoLine, f[1])
	}
	_, minStr, ok := strings.Cut(f[2], ":")
	minor, err := strconv.ParseUint(minStr, 10, 32)
	if !ok || err != nil {
		return mountEntry{}, fmt.Errorf("%w: device %q", errMountinfoLine, f[2])
	}
	mp, err := unescapeMountinfo(f[4])
	if err != nil {
		return mountEntry{}, fmt.Errorf("%w: mount point: %w", errMountinfoLine, err)
	}
	fstype, err := unescapeMountinfo(f[sep+1])
	if err != nil {
		return mountEntry{}, fmt.Errorf("%w: fstype: %w", errMountinfoLine, err)
	}
	src, err := unescapeMountinfo(f[sep+2])
	if err != nil {
		return mountEntry{}, fmt.Errorf("%w: source: %w", errMountinfoLine, err)
	}
	return mountEntry{ID: id, Parent: parent, Minor: uint32(minor), MountPoint: mp, FSType: fstype, Source: src}, nil
}

// unescapeMountinfo undoes the kernel's mangling of space, tab, newline and
// backslash as \ooo octal escapes.
func unescapeMountinfo(s string) (string, error) {
	if !strings.Contains(s, `\`) {
		return s, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' {
			b.WriteByte(s[i])
			continue
		}
		if i+4 > len(s) {
			return "", fmt.Errorf("truncated escape in %q", s)
		}
		v, err := strconv.ParseUint(s[i+1:i+4], 8, 8)
		if err != nil {
			return "", fmt.Errorf("bad escape in %q", s)
		}
		b.WriteByte(byte(v))
		i += 3
	}
	return b.String(), nil
}

// escapeMountinfo is the kernel's mangling, the inverse of unescapeMountinfo.
func escapeMountinfo(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case ' ', '\t', '\n', '\\':
			fmt.Fprintf(&b, `\%03o`, c)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// maxMountinfo bounds what is read; a real table is a few hundred KiB at most.
const maxMountinfo = 16 << 20

// parseMountinfo parses a whole mountinfo table.
func parseMountinfo(r io.Reader) ([]mountEntry, error) {
	sc := bufio.NewScanner(io.LimitReader(r, maxMountinfo))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	var out []mountEntry
	n := 0
	for sc.Scan() {
		n++
		line := sc.Bytes()
		if len(line) == 0 {
			continue
		}
		e, err := parseMountinfoLine(string(line))
		if err != nil {
			return nil, fmt.Errorf("mountinfo line %d: %w", n, err)
		}
		out = append(out, e)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("mountinfo: %w", err)
	}
	return out, nil
}

// readMountinfo reads this process's mount table.
func readMountinfo() ([]mountEntry, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return parseMountinfo(f)
}

// topMount returns the visible (last listed, so topmost) mount at path.
func topMount(entries []mountEntry, path string) (mountEntry, bool) {
	for i := len(entries) - 1; i >= 0; i-- {
		if entries[i].MountPoint == path {
			return entries[i], true
		}
	}
	return mountEntry{}, false
}

// mountsAt returns every mount stacked at path, bottom first.
func mountsAt(entries []mountEntry, path string) []mountEntry {
	var out []mountEntry
	for _, e := range entries {
		if e.MountPoint == path {
			out = append(out, e)
		}
	}
	return out
}
