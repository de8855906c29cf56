package cryptfs

import (
	"errors"
	"strings"
	"testing"
)

func TestParseMountinfoLine(t *testing.T) {
	tests := []struct {
		name    string
		line    string
		want    mountEntry
		wantErr bool
	}{
		{
			name: "proc(5) example",
			line: `36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue`,
			want: mountEntry{ID: 36, Parent: 35, Minor: 0, MountPoint: "/mnt2", FSType: "ext3", Source: "/dev/root"},
		},
		{
			name: "gocryptfs, no optional fields",
			line: `812 29 0:77 / /var/lib/moat/plain rw,nosuid,nodev,relatime - fuse.gocryptfs /var/lib/moat/cipher rw,user_id=0,group_id=0,max_read=1048576`,
			want: mountEntry{ID: 812, Parent: 29, Minor: 77, MountPoint: "/var/lib/moat/plain", FSType: "fuse.gocryptfs", Source: "/var/lib/moat/cipher"},
		},
		{
			name: "several optional fields",
			line: `1 0 0:1 / / rw shared:1 master:2 propagate_from:3 unbindable - rootfs rootfs rw`,
			want: mountEntry{ID: 1, Parent: 0, Minor: 1, MountPoint: "/", FSType: "rootfs", Source: "rootfs"},
		},
		{
			name: "escaped space, tab, newline, backslash",
			line: `90 29 0:50 / /tmp/a\040b\011c\012d\134e rw - fuse.gocryptfs /tmp/ci\040pher rw`,
			want: mountEntry{ID: 90, Parent: 29, Minor: 50, MountPoint: "/tmp/a b\tc\nd\\e", FSType: "fuse.gocryptfs", Source: "/tmp/ci pher"},
		},
		{name: "empty", line: "", wantErr: true},
		{name: "too few fields", line: `36 35 98:0 /mnt1 /mnt2 rw - ext3`, wantErr: true},
		{name: "no separator", line: `36 35 98:0 /mnt1 /mnt2 rw a b c d`, wantErr: true},
		{name: "separator at the end", line: `36 35 98:0 /mnt1 /mnt2 rw a b c - ext3`, wantErr: true},
		{name: "bad id", line: `x 35 98:0 / /m rw - ext3 /dev/root rw`, wantErr: true},
		{name: "negative parent", line: `1 -3 98:0 / /m rw - ext3 /dev/root rw`, wantErr: true},
		{name: "bad device", line: `1 2 98 / /m rw - ext3 /dev/root rw`, wantErr: true},
		{name: "truncated escape", line: `1 2 98:0 / /m\04 rw - ext3 /dev/root rw`, wantErr: true},
		{name: "escape out of range", line: `1 2 98:0 / /m\777 rw - ext3 /dev/root rw`, wantErr: true},
		{name: "non-octal escape", line: `1 2 98:0 / /m\09x rw - ext3 /dev/root rw`, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseMountinfoLine(tt.line)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("got %+v, want error", got)
				}
				if !errors.Is(err, errMountinfoLine) {
					t.Errorf("error %v does not wrap errMountinfoLine", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestParseMountinfoTable(t *testing.T) {
	table := strings.Join([]string{
		`22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw`,
		``,
		`40 22 0:30 / /srv/plain rw shared:2 - tmpfs tmpfs rw`,
		`41 40 0:31 / /srv/plain rw,nosuid,nodev - fuse.gocryptfs /srv/cipher rw`,
	}, "\n")
	entries, err := parseMountinfo(strings.NewReader(table))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 3 {
		t.Fatalf("got %d entries, want 3", len(entries))
	}
	top, ok := topMount(entries, "/srv/plain")
	if !ok || top.ID != 41 || top.FSType != fstypeGocryptfs {
		t.Errorf("topMount = %+v, %v; want the gocryptfs mount stacked last", top, ok)
	}
	if n := len(mountsAt(entries, "/srv/plain")); n != 2 {
		t.Errorf("mountsAt = %d entries, want 2", n)
	}
	if _, ok := topMount(entries, "/srv"); ok {
		t.Error("topMount found a mount at /srv")
	}

	if _, err := parseMountinfo(strings.NewReader(table + "\ngarbage\n")); err == nil || !strings.Contains(err.Error(), "line 5") {
		t.Errorf("bad line: err = %v, want one naming line 5", err)
	}
}

func TestReadMountinfoSelf(t *testing.T) {
	entries, err := readMountinfo()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := topMount(entries, "/"); !ok {
		t.Error("no root mount in /proc/self/mountinfo")
	}
}

func FuzzParseMountinfo(f *testing.F) {
	f.Add(`36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue`)
	f.Add(`90 29 0:50 / /tmp/a\040b rw - fuse.gocryptfs /tmp/ci\134pher rw`)
	f.Add(`1 0 0:1 / / rw shared:1 master:2 - rootfs rootfs rw` + "\n" + `2 1 0:2 / /x rw - - - -`)
	f.Add(`1 2 3 4 5 6 - \`)
	f.Add("")
	f.Fuzz(func(t *testing.T, s string) {
		entries, err := parseMountinfo(strings.NewReader(s))
		if err != nil {
			return
		}
		for _, e := range entries {
			// What the kernel would print for the entry parses back to it.
			line := strings.Join([]string{"1", "0", "0:0", "/", escapeMountinfo(e.MountPoint), "rw", "-",
				escapeMountinfo(e.FSType), escapeMountinfo(e.Source), "rw"}, " ")
			if e.MountPoint == "" || e.FSType == "" || e.Source == "" {
				t.Fatalf("empty field parsed from %q: %+v", s, e)
			}
			back, err := parseMountinfoLine(line)
			if err != nil {
				t.Fatalf("re-parse of %q: %v", line, err)
			}
			back.ID, back.Parent, back.Minor = e.ID, e.Parent, e.Minor
			if back != e {
				t.Fatalf("round trip: got %+v, want %+v", back, e)
			}
		}
	})
}
