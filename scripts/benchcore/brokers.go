package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// clockTick is USER_HZ, the unit of /proc/PID/stat times (100 on Linux).
const clockTick = 100

// broker is one broker process under test.
type broker struct {
	name      string
	bin       string
	args      []string
	addr      string // plain MQTT, 127.0.0.1:port
	tlsAddr   string
	logPath   string
	cmd       *exec.Cmd
	env       []string // added to the environment
	exited    chan struct{}
	startedAt time.Time
}

func (b *broker) start() error {
	logf, err := os.OpenFile(b.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	cmd := exec.Command(b.bin, b.args...)
	cmd.Env = append(os.Environ(), b.env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group: a Ctrl-C of the script reaches it through us.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", b.name, err)
	}
	b.cmd = cmd
	b.exited = make(chan struct{})
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(b.exited)
	}()
	deadline := time.Now().Add(20 * time.Second)
	for _, a := range []string{b.addr, b.tlsAddr} {
		for {
			select {
			case <-b.exited:
				return fmt.Errorf("%s exited at start; see %s", b.name, b.logPath)
			default:
			}
			c, err := net.DialTimeout("tcp", a, time.Second)
			if err == nil {
				c.Close()
				break
			}
			if time.Now().After(deadline) {
				b.stop()
				return fmt.Errorf("%s does not listen on %s: %v; see %s", b.name, a, err, b.logPath)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	b.startedAt = time.Now()
	return nil
}

func (b *broker) stop() {
	if b.cmd == nil {
		return
	}
	_ = b.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-b.exited:
	case <-time.After(10 * time.Second):
		_ = b.cmd.Process.Kill()
		<-b.exited
	}
	b.cmd = nil
}

func (b *broker) restart() error {
	b.stop()
	return b.start()
}

func (b *broker) pid() int { return b.cmd.Process.Pid }

// cpu is the broker's user+system CPU time so far.
func (b *broker) cpu() (time.Duration, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", b.pid()))
	if err != nil {
		return 0, err
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, errors.New("malformed /proc stat")
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0, errors.New("short /proc stat")
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return time.Duration(ut+st) * time.Second / clockTick, nil
}

// rss is the broker's resident set in bytes.
func (b *broker) rss() (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", b.pid()))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10, err
		}
	}
	return 0, errors.New("no VmRSS")
}

// selfCPU is the generator's own user+system CPU time.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// freeAddr picks a free 127.0.0.1 port.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func port(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}

// users of the benchmark. Each user owns userN/# through the shared ACL.
type user struct{ name, pass string }

// setup is everything the two brokers share: files and accounts.
type setup struct {
	dir          string
	passwdPath   string
	aclPath      string
	certPath     string
	keyPath      string
	caPEM        []byte
	fanin        []user // one per publisher/subscriber pair
	lat, fan     user   // full-cost entries
	cheap        user   // a 1-iteration entry: connection cost without hashing
	storm        []user // full-cost entries sharing one hash string
	iterations   int
	memoryLimit  int64 // memory_limit of every broker (GOMEMLIMIT for mochi); 0 = none
	moat, mosqui *broker
	mochi        *broker
	before       *broker // another Moat binary (an older build), optional
}

// writePasswd writes the password file with `moat passwd -b`.
func (s *setup) writePasswd(ctx context.Context, moatBin string, stormN int) error {
	run := func(create bool, iters int, u user) error {
		args := []string{"passwd", "-b", "-I", strconv.Itoa(iters)}
		if create {
			args = append(args, "-c")
		}
		args = append(args, s.passwdPath, u.name, u.pass)
		out, err := exec.CommandContext(ctx, moatBin, args...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("moat passwd %s: %v: %s", u.name, err, out)
		}
		return nil
	}
	if err := run(true, 1, s.cheap); err != nil {
		return err
	}
	full := append([]user{s.lat, s.fan}, s.fanin...)
	if stormN > 0 {
		full = append(full, s.storm[0])
	}
	for _, u := range full {
		if err := run(false, s.iterations, u); err != nil {
			return err
		}
	}
	if stormN <= 1 {
		return nil
	}
	// Hashing a thousand entries would take minutes; the storm users share
	// one entry's hash string. Neither broker caches by hash alone (Moat's
	// cache key includes the username), so each user still costs one full
	// verification.
	data, err := os.ReadFile(s.passwdPath)
	if err != nil {
		return err
	}
	var hash string
	for _, l := range strings.Split(string(data), "\n") {
		if h, ok := strings.CutPrefix(l, s.storm[0].name+":"); ok {
			hash = h
		}
	}
	if hash == "" {
		return errors.New("storm template entry missing")
	}
	var b strings.Builder
	for _, u := range s.storm[1:] {
		fmt.Fprintf(&b, "%s:%s\n", u.name, hash)
	}
	f, err := os.OpenFile(s.passwdPath, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(b.String()); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// writeCerts makes a P-256 CA and a 127.0.0.1/localhost server certificate.
func (s *setup) writeCerts() error {
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "bench CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "localhost"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	s.caPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
	if err := os.WriteFile(s.certPath, certPEM, 0o600); err != nil {
		return err
	}
	return os.WriteFile(s.keyPath, keyPEM, 0o600)
}

// writeConfigs writes one configuration per broker: the same passwd,
// aclfile and certificate, a plain and a TLS listener each; plain mochi
// (this program with -serve-mochi) allows every client.
func (s *setup) writeConfigs(moatBin, mosqBin, beforeBin string) error {
	limit := ""
	if s.memoryLimit > 0 {
		limit = fmt.Sprintf("memory_limit %d\n", s.memoryLimit)
	}
	if err := os.WriteFile(s.aclPath, []byte("pattern readwrite %u/#\n"), 0o600); err != nil {
		return err
	}
	mk := func(name, bin string, extra string) (*broker, error) {
		addr, err := freeAddr()
		if err != nil {
			return nil, err
		}
		tlsAddr, err := freeAddr()
		if err != nil {
			return nil, err
		}
		conf := filepath.Join(s.dir, name+".conf")
		text := fmt.Sprintf(`# %s side of the benchmark
%sallow_anonymous false
password_file %s
acl_file %s
listener %s 127.0.0.1
listener %s 127.0.0.1
certfile %s
keyfile %s
`, name, extra, s.passwdPath, s.aclPath, port(addr), port(tlsAddr), s.certPath, s.keyPath)
		if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
			return nil, err
		}
		b := &broker{name: name, bin: bin, addr: addr, tlsAddr: tlsAddr, logPath: filepath.Join(s.dir, name+".log")}
		if name == "moat" {
			b.args = []string{"serve", "-c", conf}
		} else {
			b.args = []string{"-c", conf}
		}
		return b, nil
	}
	var err error
	// The admin listener is off so nothing but the MQTT ports is opened.
	if s.moat, err = mk("moat", moatBin, "admin_listener off\n"+limit); err != nil {
		return err
	}
	if beforeBin != "" {
		if s.before, err = mk("moat-before", beforeBin, "admin_listener off\n"+limit); err != nil {
			return err
		}
		s.before.args = []string{"serve", "-c", filepath.Join(s.dir, "moat-before.conf")}
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	if s.mochi, err = mk("mochi", self, ""); err != nil {
		return err
	}
	s.mochi.args = []string{"-serve-mochi", "-addr", s.mochi.addr, "-tls-addr", s.mochi.tlsAddr, "-cert", s.certPath, "-key", s.keyPath}
	if s.memoryLimit > 0 {
		s.mochi.env = []string{fmt.Sprintf("GOMEMLIMIT=%d", s.memoryLimit/10*9)} // as Moat sets it
	}
	// user root: mosquitto keeps root and can read the 0600 files.
	// set_tcp_nodelay: Go sets TCP_NODELAY on every socket, mosquitto not by
	// default, and Nagle against delayed ACKs stalls its TLS CONNACKs 40 ms.
	s.mosqui, err = mk("mosquitto", mosqBin, "user root\nset_tcp_nodelay true\n"+limit)
	return err
}
