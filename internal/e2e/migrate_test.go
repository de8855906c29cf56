package e2e

// The three mosquitto set-ups Moat replaces, migrated as the README's
// "Migrating from mosquitto" section says, step by step: check-config on
// the old files, the documented changes, the import of the retained
// messages the real mosquitto 2.0.11 saved, then `moat serve` with the old
// users, ports and client flows. testdata/migrate/README.md lists the
// files and the test-only changes (ports, container paths).

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moat-mqtt/moat/internal/mqtttest"
	"github.com/moat-mqtt/moat/internal/testenv"
)

const cliTimeout = 2 * time.Minute

// moatCLI runs the moat binary with args (and extra environment) and
// returns its exit code and outputs.
func moatCLI(t *testing.T, env []string, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cliTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, MoatBinary(t), args...)
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, out.String(), errb.String()
	case errors.As(err, &ee):
		return ee.ExitCode(), out.String(), errb.String()
	}
	t.Fatalf("moat %v: %v", args, err)
	return 0, "", ""
}

// migrateFiles copies testdata/migrate/SETUP into a temporary directory.
func migrateFiles(t *testing.T, setup string) string {
	t.Helper()
	src := filepath.Join("testdata", "migrate", setup)
	dir := t.TempDir()
	err := filepath.Walk(src, func(p string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		WriteFile(t, filepath.Join(dir, rel), string(b), 0o600)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// Where the compose files bind-mount things (see mounted).
	for _, d := range []string{"config", "conf", "log", "old-data", "secrets"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// mounted maps the set-ups' container paths to directories of the test,
// as the compose files bind-mount them. Line numbers do not change.
func mounted(dir string) *strings.Replacer {
	return strings.NewReplacer(
		"/mosquitto/config/", dir+"/config/",
		"/mosquitto/conf/", dir+"/conf/",
		"/mosquitto/log/", dir+"/log/",
		"/mosquitto/data", dir+"/data",
		"/mosquitto/encrypted", dir+"/encrypted",
		"/run/secrets/", dir+"/secrets/",
		"/etc/letsencrypt/", dir+"/letsencrypt/",
		"/var/lib/mosquitto", dir+"/old-plain",
	)
}

var portLine = regexp.MustCompile(`(?m)^(listener|port) (\d+)$`)

// testPorts moves the listeners to free loopback ports (test only) and
// returns the configuration and the old port → new port map.
func testPorts(t *testing.T, conf string) (string, map[int]int) {
	t.Helper()
	ports := map[int]int{}
	conf = portLine.ReplaceAllStringFunc(conf, func(line string) string {
		m := portLine.FindStringSubmatch(line)
		old, _ := strconv.Atoi(m[2])
		p := FreePort(t)
		for _, used := range ports {
			for p == used {
				p = FreePort(t)
			}
		}
		ports[old] = p
		if m[1] == "port" {
			return fmt.Sprintf("port %d\nbind_address 127.0.0.1", p)
		}
		return fmt.Sprintf("listener %d 127.0.0.1", p)
	})
	return conf, ports
}

// installConf writes a migrated configuration with the container paths
// and ports of the test, plus the test-only lines.
func installConf(t *testing.T, dir, conf string, extra ...string) (string, map[int]int) {
	t.Helper()
	conf, ports := testPorts(t, mounted(dir).Replace(conf))
	conf += strings.Join(append([]string{"admin_listener off"}, extra...), "\n") + "\n"
	return WriteFile(t, filepath.Join(dir, "config", "moat.conf"), conf, 0o600), ports
}

// runOldMosquitto runs the real mosquitto on conf (listening on port),
// runs the clients (mosquitto_pub/sub; -h and -p are added), and stops it
// with SIGTERM so that it saves its database, as `docker stop` does.
func runOldMosquitto(t *testing.T, dir, conf string, port int, clients [][]string) {
	t.Helper()
	mosq := testenv.LookPath(t, "mosquitto", "apt-get install mosquitto")
	testenv.LookPath(t, "mosquitto_pub", "apt-get install mosquitto-clients")
	if os.Getuid() == 0 {
		// mosquitto started as root drops to the user mosquitto, which
		// could not write the test's directories.
		conf += "user root\n"
	}
	path := WriteFile(t, filepath.Join(dir, "old-run", "mosquitto.conf"), conf, 0o600)
	m := StartProcess(t, "mosquitto", mosq, []string{"-c", path})
	m.WaitTCP(Loopback(port), startTimeout)
	for _, c := range clients {
		args := append([]string{"-h", "127.0.0.1", "-p", strconv.Itoa(port)}, c[1:]...)
		if out, errOut, err := RunCommand(t, time.Minute, nil, c[0], args...); err != nil {
			t.Fatalf("%v: %v\n%s%s", c, err, out, errOut)
		}
	}
	if err := m.cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	if code, ok := m.WaitExit(time.Minute); !ok || code != 0 {
		t.Fatalf("mosquitto did not stop cleanly (exit %d):\n%s", code, m.Output())
	}
	if !strings.Contains(m.Output(), "Saving in-memory database") || strings.Contains(m.Output(), "Error") {
		t.Fatalf("mosquitto saved nothing:\n%s", m.Output())
	}
}

// addUsers writes the password file as the README says: moat passwd.
func addUsers(t *testing.T, file string, users ...string) {
	t.Helper()
	for i := 0; i < len(users); i += 2 {
		args := []string{"passwd", "-b", file, users[i], users[i+1]}
		if i == 0 {
			args = []string{"passwd", "-c", "-b", file, users[i], users[i+1]}
		}
		if code, out, errOut := moatCLI(t, nil, args...); code != 0 {
			t.Fatalf("moat %v: exit %d\n%s%s", args[:len(args)-1], code, out, errOut)
		}
	}
}

func wantContains(t *testing.T, what, got string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(got, w) {
			t.Errorf("%s lacks %q:\n%s", what, w, got)
		}
	}
}

// connectWS connects over WebSocket, as cloudflared forwards a browser's
// or device's connection to the origin.
func connectWS(t *testing.T, url string, cfg *tls.Config, o mqtttest.Options) (*mqtttest.Client, byte) {
	t.Helper()
	ws, err := mqtttest.DialWS(url, cfg)
	if err != nil {
		t.Fatalf("websocket %s: %v", url, err)
	}
	c, ack, err := mqtttest.Connect(ws, mqttOptions(o))
	if err != nil {
		t.Fatalf("connect over %s as %q: %v", url, o.Username, err)
	}
	t.Cleanup(func() { c.Close() })
	return c, ack.ReasonCode
}

func connectTCP(t *testing.T, addr string, cfg *tls.Config, o mqtttest.Options) (*mqtttest.Client, byte) {
	t.Helper()
	var conn net.Conn
	var err error
	if cfg != nil {
		conn, err = tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", addr, cfg)
	} else {
		conn, err = net.DialTimeout("tcp", addr, 10*time.Second)
	}
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	c, ack, err := mqtttest.Connect(conn, mqttOptions(o))
	if err != nil {
		t.Fatalf("connect to %s as %q: %v", addr, o.Username, err)
	}
	t.Cleanup(func() { c.Close() })
	return c, ack.ReasonCode
}

// wantRetained waits for the retained messages (topic → payload).
func wantRetained(t *testing.T, c *mqtttest.Client, want map[string]string) {
	t.Helper()
	for topic, payload := range want {
		if !c.WaitTopic(topic) {
			t.Fatalf("%s not delivered (got %v, %v)", topic, c.Topics(), c.Err())
		}
		m, _ := c.Message(topic)
		if string(m.Payload) != payload || !m.FixedHeader.Retain {
			t.Errorf("%s: payload %q retain %v, want %q retained", topic, m.Payload, m.FixedHeader.Retain, payload)
		}
	}
}

func cipherListing(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		out = append(out, fmt.Sprintf("%s %d %s", p, info.Size(), info.ModTime()))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

// Set-up 1: anonymous mosquitto behind a Cloudflare Tunnel, no ACL, no
// persistence. The users choose their ACL at migration time, seeing which
// retained topics the %u/# layout would hide.
func TestMigrateTunnelAnonymous(t *testing.T) {
	dir := migrateFiles(t, "tunnel")
	old := filepath.Join(dir, "old", "mosquitto.conf")

	// 1. check-config names the lines that leave the broker open.
	code, out, errOut := moatCLI(t, nil, "check-config", "-c", old)
	if code != 0 {
		t.Fatalf("check-config on the old file: exit %d\n%s%s", code, out, errOut)
	}
	wantContains(t, "check-config", out,
		old+":1: listener mqtt::1883 allows anonymous clients on a non-loopback address",
		old+":3: listener ws::9001 allows anonymous clients on a non-loopback address",
		old+":1: listener mqtt::1883 allows anonymous clients with no acl_file",
		old+":3: listener ws::9001 allows anonymous clients with no acl_file")

	// 2. The topics in use: the old mosquitto with persistence on saves
	// the retained messages its clients publish.
	oldConf, oldPorts := testPorts(t, readFile(t, old))
	oldConf += "persistence true\npersistence_location " + dir + "/old-data/\n"
	runOldMosquitto(t, dir, oldConf, oldPorts[1883], [][]string{
		{"mosquitto_pub", "-r", "-q", "1", "-t", "home/livingroom/temperature", "-m", "21.5"},
		{"mosquitto_pub", "-r", "-t", "home/door", "-m", "closed"},
		{"mosquitto_pub", "-r", "-q", "1", "-u", "alice", "-t", "alice/status", "-m", "online"},
	})
	db := filepath.Join(dir, "old-data", "mosquitto.db")

	// 3. Users with passwords.
	addUsers(t, filepath.Join(dir, "config", "passwd"), "alice", "alice-pass", "bob", "bob-pass")

	// 4. The new configuration, first with each user's own tree only:
	// the import names the retained topics nobody could read.
	conf, ports := installConf(t, dir, readFile(t, filepath.Join(dir, "moat.conf")))
	CopyFile(t, filepath.Join(dir, "aclfile-own-topics"), filepath.Join(dir, "config", "aclfile"), 0o600)
	code, out, errOut = moatCLI(t, nil, "import", "mosquitto-db", "-n", "-c", conf, db)
	if code != 0 {
		t.Fatalf("import -n: exit %d\n%s%s", code, out, errOut)
	}
	wantContains(t, "import -n with %u/#", out, "warning: no user of this configuration may read 2 of these topics",
		`"home/door"`, `"home/livingroom/temperature"`, "dry run (-n): nothing written")
	if strings.Contains(out, `"alice/status"`) {
		t.Errorf("alice/status reported unreadable:\n%s", out)
	}
	// The shared topics kept: nothing is reported, then the real import.
	CopyFile(t, filepath.Join(dir, "aclfile"), filepath.Join(dir, "config", "aclfile"), 0o600)
	code, out, errOut = moatCLI(t, nil, "import", "mosquitto-db", "-n", "-c", conf, db)
	if code != 0 || strings.Contains(out, "warning") {
		t.Fatalf("import -n with the shared topics: exit %d\n%s%s", code, out, errOut)
	}
	code, out, errOut = moatCLI(t, nil, "import", "mosquitto-db", "-c", conf, db)
	if code != 0 {
		t.Fatalf("import: exit %d\n%s%s", code, out, errOut)
	}
	wantContains(t, "import", out, "3 retained messages (mosquitto format 6)", "imported 3 retained messages into "+dir+"/data/moat.db")
	if code, out, errOut = moatCLI(t, nil, "check-config", "-c", conf); code != 0 {
		t.Fatalf("check-config on moat.conf: exit %d\n%s%s", code, out, errOut)
	}

	// 5. moat serve: the old ports, users with passwords.
	m := StartMoat(t, conf)
	ws := fmt.Sprintf("ws://127.0.0.1:%d/", ports[9001])
	m.WaitTCP(Loopback(ports[9001]), startTimeout)
	alice, code8 := connectWS(t, ws, nil, mqtttest.Options{ClientID: "alice-phone", Username: "alice", Password: "alice-pass"})
	if code8 != 0 {
		t.Fatalf("alice over the tunnel origin: CONNACK 0x%02x", code8)
	}
	alice.MustSubscribe(t, 1, "home/#", "alice/#")
	wantRetained(t, alice, map[string]string{"home/livingroom/temperature": "21.5", "home/door": "closed", "alice/status": "online"})

	// bob shares home/# and writes into it; alice's tree stays hers, and
	// the refusal is logged.
	bob, code8 := connectTCP(t, Loopback(ports[1883]), nil, mqtttest.Options{ClientID: "bob-pc", Username: "bob", Password: "bob-pass"})
	if code8 != 0 {
		t.Fatalf("bob on 1883: CONNACK 0x%02x", code8)
	}
	if codes := bob.Subscribe(t, 1, "alice/#"); codes[0] < 0x80 {
		t.Errorf("bob subscribed to alice/#: 0x%02x", codes[0])
	}
	m.WaitOutput(regexp.MustCompile(`subscription refused.*user=bob.*filter=alice/#`), 10*time.Second)
	bob.Publish(t, "home/door", []byte("open"), 1, true)
	if !alice.WaitUntil(10*time.Second, func(s mqtttest.State) bool {
		return len(s.Messages) > 0 && string(s.Messages[len(s.Messages)-1].Payload) == "open"
	}) {
		t.Errorf("alice did not get bob's home/door: %v", alice.Topics())
	}

	// What the old set-up allowed is refused: anonymous, and alice's name
	// without her password.
	for _, o := range []mqtttest.Options{{ClientID: "anon"}, {ClientID: "fake", Username: "alice"}} {
		_, code8 := connectWS(t, ws, nil, o)
		if code8 < 0x80 {
			t.Errorf("%+v accepted over the tunnel origin", o)
		}
	}
}

// Set-up 2: the tunnel with a username-prefixed aclfile and retained
// messages in a gocryptfs directory keyed by GOCRYPT_PASSWORD.
func TestMigrateTunnelGocryptfs(t *testing.T) {
	testenv.RequireFUSE(t)
	gc := GocryptfsBinary(t)
	fusermount := testenv.LookPath(t, "fusermount3", "apt-get install fuse3")
	dir := migrateFiles(t, "tunnel-gocryptfs")
	GuardMounts(t, dir)
	password := ""
	sc := bufio.NewScanner(strings.NewReader(readFile(t, filepath.Join(dir, "old", ".env"))))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "GOCRYPT_PASSWORD="); ok {
			password = v
		}
	}
	if password == "" {
		t.Fatal("no GOCRYPT_PASSWORD in old/.env")
	}

	// The old installation: the entrypoint's gocryptfs -init and mount
	// (test-only: a cheap scrypt cost), then mosquitto saving into it.
	// The compose file's ./data (the ciphertext) and the mount point.
	data, plain := filepath.Join(dir, "old", "data"), filepath.Join(dir, "old-plain")
	for _, d := range []string{data, plain} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if out, errOut, err := RunCommand(t, time.Minute, []byte(password+"\n"), gc, "-init", "-q", "-scryptn", "10", data); err != nil {
		t.Fatalf("gocryptfs -init: %v\n%s%s", err, out, errOut)
	}
	if out, errOut, err := RunCommand(t, time.Minute, []byte(password+"\n"), gc, "-q", data, plain); err != nil {
		t.Fatalf("gocryptfs mount: %v\n%s%s", err, out, errOut)
	}
	t.Cleanup(func() { exec.Command(fusermount, "-u", plain).Run() })
	CopyFile(t, filepath.Join(dir, "old", "aclfile"), filepath.Join(dir, "config", "aclfile"), 0o600)
	old := WriteFile(t, filepath.Join(dir, "config", "mosquitto.conf"), mounted(dir).Replace(readFile(t, filepath.Join(dir, "old", "mosquitto.conf"))), 0o600)
	oldConf, oldPorts := testPorts(t, readFile(t, old))
	runOldMosquitto(t, dir, oldConf, oldPorts[1883], [][]string{
		{"mosquitto_pub", "-u", "my_username", "-t", "my_username/topic", "-m", "retained message", "-r", "-q", "1"},
		{"mosquitto_pub", "-V", "5", "-u", "alice", "-t", "alice/lights", "-m", "on", "-r", "-q", "1", "-D", "publish", "content-type", "text/plain"},
		{"mosquitto_pub", "-u", "bob", "-t", "bob/garage", "-m", "closed", "-r", "-q", "2"},
	})
	if out, err := exec.Command(fusermount, "-u", plain).CombinedOutput(); err != nil {
		t.Fatalf("fusermount -u: %v: %s", err, out)
	}
	if err := os.Remove(plain); err != nil {
		t.Fatal(err)
	}

	// 1. check-config names the persistence line and what it lacks.
	code, out, errOut := moatCLI(t, nil, "check-config", "-c", old)
	if code != 1 {
		t.Fatalf("check-config on the old file: exit %d\n%s%s", code, out, errOut)
	}
	wantContains(t, "check-config", errOut,
		old+":6: encrypted persistence needs persistence_cipher_dir",
		old+":6: encrypted persistence needs persistence_key_file")

	// 2. Users with passwords for the names the %u/# rules knew; a new key
	// in a file; the old password in a file for the import.
	addUsers(t, filepath.Join(dir, "config", "passwd"), "my_username", "my-pass", "alice", "alice-pass", "bob", "bob-pass")
	WriteFile(t, filepath.Join(dir, "secrets", "moat_persistence_key"), randHex(32)+"\n", 0o600)
	oldKey := WriteFile(t, filepath.Join(dir, "old.key"), password+"\n", 0o600)
	conf, ports := installConf(t, dir, readFile(t, filepath.Join(dir, "moat.conf")), "gocryptfs_path "+gc)
	env := []string{"MOAT_TEST_SCRYPTN=10"}

	// 3. The import reads the old directory read-only and writes the new
	// encrypted store.
	before := cipherListing(t, data)
	code, out, errOut = moatCLI(t, env, "import", "mosquitto-db", "-c", conf, "-cipher-dir", data, "-key-file", oldKey)
	if code != 0 {
		t.Fatalf("import: exit %d\n%s%s", code, out, errOut)
	}
	wantContains(t, "import", out, "mosquitto.db: 3 retained messages", "imported 3 retained messages into "+dir+"/data/moat.db")
	if strings.Contains(out, "warning") {
		t.Errorf("import warns:\n%s", out)
	}
	if after := cipherListing(t, data); !equalStrings(before, after) {
		t.Errorf("the old encrypted directory changed:\n%v\n%v", before, after)
	}
	if code, out, errOut = moatCLI(t, env, "check-config", "-c", conf); code != 0 {
		t.Fatalf("check-config on moat.conf: exit %d\n%s%s", code, out, errOut)
	}

	// 4. moat serve: the same users, now with passwords, read their own
	// retained messages through the tunnel origin.
	m := StartMoat(t, conf, env...)
	m.WaitTCP(Loopback(ports[9001]), startTimeout)
	ws := fmt.Sprintf("ws://127.0.0.1:%d/", ports[9001])
	mine, code8 := connectWS(t, ws, nil, mqtttest.Options{ClientID: "ci", Username: "my_username", Password: "my-pass"})
	if code8 != 0 {
		t.Fatalf("my_username: CONNACK 0x%02x", code8)
	}
	mine.MustSubscribe(t, 1, "my_username/#")
	wantRetained(t, mine, map[string]string{"my_username/topic": "retained message"})
	alice, _ := connectWS(t, ws, nil, mqtttest.Options{ClientID: "alice-1", Username: "alice", Password: "alice-pass"})
	alice.MustSubscribe(t, 1, "alice/#")
	wantRetained(t, alice, map[string]string{"alice/lights": "on"})
	if p, _ := alice.Message("alice/lights"); p.Properties.ContentType != "text/plain" {
		t.Errorf("alice/lights content type %q, want text/plain", p.Properties.ContentType)
	}
	if codes := alice.Subscribe(t, 1, "bob/#"); codes[0] < 0x80 {
		t.Errorf("alice subscribed to bob/#: 0x%02x", codes[0])
	}
	m.WaitOutput(regexp.MustCompile(`subscription refused.*user=alice.*filter=bob/#`), 10*time.Second)
	// The CI's "isolation" relied on nobody typing another name: now a
	// name without its password is refused.
	if _, code8 := connectWS(t, ws, nil, mqtttest.Options{ClientID: "x", Username: "bob"}); code8 < 0x80 {
		t.Errorf("bob without a password accepted: 0x%02x", code8)
	}

	// 5. The import refuses the store the running broker holds.
	code, _, errOut = moatCLI(t, env, "import", "mosquitto-db", "-c", conf, "-cipher-dir", data, "-key-file", oldKey)
	if code != 1 || !strings.Contains(errOut, "refusing to import while the store is in use: stop moat serve") {
		t.Fatalf("import beside moat serve: exit %d\n%s", code, errOut)
	}
	if m.HasExited() {
		t.Fatalf("moat serve stopped:\n%s", m.Output())
	}
	mine.Ping(t)
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// Set-up 3: mosquitto with certbot's Let's Encrypt files, password users,
// TLS 8883, WSS 8083 and plain 1883. Its configuration runs unchanged.
func TestMigrateCertbot(t *testing.T) {
	sub := testenv.LookPath(t, "mosquitto_sub", "apt-get install mosquitto-clients")
	dir := migrateFiles(t, "certbot")
	// certbot's layout, from a test CA.
	live := filepath.Join(dir, "letsencrypt", "live", "mqtt.example.com")
	if err := os.MkdirAll(live, 0o700); err != nil {
		t.Fatal(err)
	}
	certFile, keyFile, caFile, pool, _ := haTestCert(t, t.TempDir())
	CopyFile(t, certFile, filepath.Join(live, "fullchain.pem"), 0o644)
	CopyFile(t, keyFile, filepath.Join(live, "privkey.pem"), 0o600)
	CopyFile(t, caFile, filepath.Join(live, "chain.pem"), 0o644)
	CopyFile(t, filepath.Join(dir, "old", "passwd"), filepath.Join(dir, "conf", "passwd"), 0o600)
	if err := os.MkdirAll(filepath.Join(dir, "log"), 0o700); err != nil {
		t.Fatal(err)
	}
	old := WriteFile(t, filepath.Join(dir, "conf", "mosquitto.conf"), mounted(dir).Replace(readFile(t, filepath.Join(dir, "old", "mosquitto.conf"))), 0o600)

	// 1. check-config accepts the file and names the clear-text listener.
	code, out, errOut := moatCLI(t, nil, "check-config", "-c", old)
	if code != 0 {
		t.Fatalf("check-config: exit %d\n%s%s", code, out, errOut)
	}
	wantContains(t, "check-config", out, old+":1: listener mqtt::1883 sends passwords in clear text on a non-loopback address",
		"3 users from "+dir+"/conf/passwd", "configuration OK")

	// 2. moat serve on the unchanged file (test-only: ports).
	conf, ports := testPorts(t, readFile(t, old))
	conf = WriteFile(t, filepath.Join(dir, "conf", "moat-test.conf"), conf+"admin_listener off\n", 0o600)
	m := StartMoat(t, conf)
	for _, p := range ports {
		m.WaitTCP(Loopback(p), startTimeout)
	}
	tlsCfg := &tls.Config{RootCAs: pool, ServerName: "localhost", MinVersion: tls.VersionTLS12}
	carol, code8 := connectTCP(t, Loopback(ports[1883]), nil, mqtttest.Options{ClientID: "carol-sensor", Username: "carol", Password: "correct horse battery staple"})
	if code8 != 0 {
		t.Fatalf("carol on 1883: CONNACK 0x%02x", code8)
	}
	carol.Publish(t, "sensor/1/temp", []byte("19.0"), 1, true)

	// TLS 8883 with the real mosquitto client, as devices connect.
	subOut, subErr, err := RunCommand(t, time.Minute, nil, sub, "-h", "localhost", "-p", strconv.Itoa(ports[8883]),
		"--cafile", filepath.Join(live, "chain.pem"), "-u", "alice", "-P", "alice-pass", "-t", "sensor/#", "-C", "1", "-W", "20", "-v")
	if err != nil || strings.TrimSpace(string(subOut)) != "sensor/1/temp 19.0" {
		t.Errorf("mosquitto_sub over TLS: %v %q %s", err, subOut, subErr)
	}
	alice, code8 := connectTCP(t, Loopback(ports[8883]), tlsCfg, mqtttest.Options{ClientID: "alice-tls", Username: "alice", Password: "alice-pass"})
	if code8 != 0 {
		t.Fatalf("alice on 8883: CONNACK 0x%02x", code8)
	}
	alice.MustSubscribe(t, 1, "sensor/#")
	wantRetained(t, alice, map[string]string{"sensor/1/temp": "19.0"})

	// WSS 8083 (browsers) with a password holding ':', '$', ' ' and '#'.
	bob, code8 := connectWS(t, fmt.Sprintf("wss://localhost:%d/", ports[8083]), tlsCfg,
		mqtttest.Options{ClientID: "bob-browser", Username: "bob", Password: "b0b:with$pecial #chars"})
	if code8 != 0 {
		t.Fatalf("bob over WSS: CONNACK 0x%02x", code8)
	}
	bob.MustSubscribe(t, 0, "sensor/#")
	wantRetained(t, bob, map[string]string{"sensor/1/temp": "19.0"})
	if _, code8 := connectWS(t, fmt.Sprintf("wss://localhost:%d/", ports[8083]), tlsCfg,
		mqtttest.Options{ClientID: "guess", Username: "bob", Password: "b0b"}); code8 < 0x80 {
		t.Errorf("a wrong password accepted: 0x%02x", code8)
	}

	// certbot renews: new files replace the old ones (renamed into place);
	// new handshakes get the new certificate, connected clients stay.
	certFile2, keyFile2, _, pool2, _ := haTestCert(t, t.TempDir())
	for from, to := range map[string]string{certFile2: "fullchain.pem", keyFile2: "privkey.pem"} {
		CopyFile(t, from, filepath.Join(live, to+".new"), 0o600)
		if err := os.Rename(filepath.Join(live, to+".new"), filepath.Join(live, to)); err != nil {
			t.Fatal(err)
		}
	}
	// As a certbot deploy hook would; without it Moat looks within 30 s.
	if err := m.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	renewed := &tls.Config{RootCAs: pool2, ServerName: "localhost", MinVersion: tls.VersionTLS12}
	for deadline := time.Now().Add(60 * time.Second); ; {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", Loopback(ports[8883]), renewed)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the renewed certificate is not served: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	alice.Ping(t)
	bob.Ping(t)

	if log := readFile(t, filepath.Join(dir, "log", "mosquitto.log")); !strings.Contains(log, "alice") {
		t.Errorf("connection_messages: the log file does not name alice:\n%s", log)
	}
	if m.HasExited() {
		t.Fatal("moat stopped")
	}
}

// The README's migration section is what the tests above do: it quotes the
// migrated files verbatim and names the commands they run.
func TestMigrationREADME(t *testing.T) {
	readme := readFile(t, filepath.Join(RepoRoot(t), "README.md"))
	start := strings.Index(readme, "\n## Migrating from mosquitto\n")
	if start < 0 {
		t.Fatal("README has no \"Migrating from mosquitto\" section")
	}
	section := readme[start+1:]
	if end := strings.Index(section, "\n## "); end >= 0 {
		section = section[:end]
	}
	var blocks []string
	for _, part := range strings.Split(section, "   ```\n")[1:] {
		var lines []string
		for _, l := range strings.Split(part, "\n") {
			lines = append(lines, strings.TrimPrefix(l, "   "))
		}
		blocks = append(blocks, strings.Join(lines, "\n"))
	}
	for _, f := range []string{"tunnel/moat.conf", "tunnel/aclfile", "tunnel-gocryptfs/moat.conf"} {
		want := readFile(t, filepath.Join("testdata", "migrate", f))
		found := false
		for _, b := range blocks {
			found = found || b == want
		}
		if !found {
			t.Errorf("the README does not quote testdata/migrate/%s verbatim:\n%s", f, want)
		}
	}
	for _, want := range []string{
		"`pattern readwrite %u/#` alone",
		"moat import mosquitto-db -n -c moat.conf mosquitto.db",
		"moat import mosquitto-db -c moat.conf mosquitto.db",
		"moat import mosquitto-db -c moat.conf -cipher-dir ./data -key-file old.key",
		"warns for lines 1 and 3", "fails at line 6", "Line 1 warns", "`subscription refused user=... filter=...`",
	} {
		if !strings.Contains(section, want) {
			t.Errorf("the README's migration section lacks %q", want)
		}
	}
}
