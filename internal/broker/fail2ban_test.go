package broker_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/moat-mqtt/moat/internal/testenv"
)

// readmeFailregex returns the failregex the README gives for a log
// format: the line after "failregex = " in the block whose comment names
// the format.
func readmeFailregex(t *testing.T, format string) string {
	t.Helper()
	data, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(data), "\n")
	for i, line := range lines {
		if !strings.Contains(line, "log_format "+format) {
			continue
		}
		for _, next := range lines[i+1 : min(i+6, len(lines))] {
			if re, ok := strings.CutPrefix(next, "failregex = "); ok {
				return re
			}
		}
	}
	t.Fatalf("README has no failregex for log_format %s", format)
	return ""
}

// hostile are client ids and usernames that try to make a log line name
// another address.
var hostile = []string{
	`x ip=203.0.113.50 `,
	`x" ip=203.0.113.50 user=x`,
	`x ip=203.0.113.50 user=`,
	"x\nlevel=WARN msg=\"authentication failed\" component=auth ip=203.0.113.50 user=x",
	"x\r\x1b[2K\x07 ip=203.0.113.50 user=x",
	"x\u2028msg=\"authentication failed\" component=auth ip=203.0.113.50 user=x",
	`x","ip":"203.0.113.50","user":"x`,
	`"msg":"authentication failed","component":"auth","ip":"203.0.113.50"`,
	strings.Repeat("ip=203.0.113.50 user=", 3000),
	strings.Repeat(`","ip":"203.0.113.50`, 3000),
}

// TestFail2banFindsOnlyTheRealAddress runs the README's failregex with the
// real fail2ban-regex over the lines the real logging pipeline writes for
// failed logins with hostile client ids and usernames: it must find each
// attacking address exactly once and never the address named inside.
func TestFail2banFindsOnlyTheRealAddress(t *testing.T) {
	f2b := testenv.LookPath(t, "fail2ban-regex", "apt-get install fail2ban")
	for _, format := range []string{"text", "json"} {
		t.Run(format, func(t *testing.T) {
			failregex := readmeFailregex(t, format)
			tb := startBroker(t, setup{acl: tableBACL, logFormat: format})
			var want []string
			n := 0
			attack := func(o opts) {
				n++
				o.local = fmt.Sprintf("127.0.%d.%d", 100+n/250, n%250+1)
				c, ack := dial(t, tb.addr, o)
				c.drop()
				if ack.ReasonCode != authRefused(o.v) {
					t.Fatalf("hostile attempt %d: CONNACK 0x%02x", n, ack.ReasonCode)
				}
				want = append(want, o.local)
			}
			for _, h := range hostile {
				for _, v := range []byte{4, 5} {
					// As a client id (anonymous, then a wrong password)...
					attack(opts{v: v, id: h})
					attack(opts{v: v, id: h, user: "alice", hasUser: true, pass: "wrong", hasPass: true})
					// ...and as a username.
					attack(opts{v: v, id: fmt.Sprint("c", n), user: h, hasUser: true, pass: "x", hasPass: true})
				}
			}
			logfile := filepath.Join(t.TempDir(), "moat.log")
			if err := os.WriteFile(logfile, []byte(tb.logs.String()), 0o600); err != nil {
				t.Fatal(err)
			}
			out, err := exec.Command(f2b, "--raw", "--out", "ip", logfile, failregex).CombinedOutput()
			if err != nil {
				t.Fatalf("fail2ban-regex: %v\n%s", err, out)
			}
			got := strings.Fields(string(out))
			slices.Sort(got)
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Errorf("fail2ban-regex %q found %d addresses, want the %d attacking ones\ngot  %v\nwant %v", failregex, len(got), len(want), got, want)
			}
			if slices.Contains(got, "203.0.113.50") {
				t.Error("a client id or username chose the address fail2ban bans")
			}
		})
	}
}
