// Command benchpersist compares durable retained messages in Moat (bbolt
// inside its gocryptfs mount) and mosquitto 2.0 (persistence file on a
// gocryptfs mount made by hand): QoS 1 retained saves per second, what a
// kill -9 loses, start-up time with a large retained set, and memory per
// retained message. It prints figures only; run it through
// scripts/bench-persist.sh.
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/moat-mqtt/moat/internal/mqtttest"
)

func main() {
	moat := flag.String("moat", "bin/moat", "moat binary")
	gc := flag.String("gocryptfs", "bin/gocryptfs", "gocryptfs binary")
	mosq := flag.String("mosquitto", "/usr/sbin/mosquitto", "mosquitto binary")
	reps := flag.Int("reps", 2, "repetitions of each measurement (medians are printed)")
	dur := flag.Duration("dur", 2*time.Second, "length of one rate run")
	killSet := flag.Int("kill-set", 10000, "retained messages held when the broker is killed")
	startSet := flag.Int("start-set", 100000, "retained messages loaded at start-up")
	flag.Parse()
	b := &bench{moat: abs(*moat), gc: abs(*gc), mosq: *mosq}
	if err := b.run(*reps, *dur, *killSet, *startSet); err != nil {
		fmt.Fprintln(os.Stderr, "benchpersist:", err)
		b.cleanup()
		os.Exit(1)
	}
	b.cleanup()
}

func abs(p string) string {
	a, err := filepath.Abs(p)
	if err != nil {
		return p
	}
	return a
}

type bench struct {
	moat, gc, mosq string
	dirs           []string
	mounts         []string
	procs          []*exec.Cmd
}

// broker is one installation that can be started, killed and restarted.
type broker struct {
	b         *bench
	name      string
	dir       string
	port      int
	adminPort int
	cmd       *exec.Cmd
	exited    chan struct{}
}

func (b *bench) cleanup() {
	for _, c := range b.procs {
		c.Process.Kill() // no-op error once it has exited
	}
	time.Sleep(500 * time.Millisecond) // gocryptfs unmounts after Moat dies
	for _, m := range b.mounts {
		for i := 0; i < 50; i++ {
			if exec.Command("fusermount3", "-u", m).Run() == nil || !mounted(m) {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	for _, d := range b.dirs {
		os.RemoveAll(d)
	}
}

func mounted(dir string) bool {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	return bytes.Contains(b, []byte(" "+dir+" "))
}

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func (b *bench) newBroker(name string) (*broker, error) {
	dir, err := os.MkdirTemp("", "benchpersist-"+name+"-")
	if err != nil {
		return nil, err
	}
	b.dirs = append(b.dirs, dir)
	br := &broker{b: b, name: name, dir: dir, port: freePort(), adminPort: freePort()}
	key := filepath.Join(dir, "key")
	if err := os.WriteFile(key, []byte("bench-key\n"), 0o600); err != nil {
		return nil, err
	}
	mnt := filepath.Join(dir, "plain")
	cipher := filepath.Join(dir, "cipher")
	if name == "moat" {
		conf := fmt.Sprintf("listener %d 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location %s\n"+
			"persistence_cipher_dir %s\npersistence_key_file %s\ngocryptfs_path %s\nadmin_listener 127.0.0.1:%d\nlog_type error\nmax_queued_messages 1000000\n",
			br.port, mnt, cipher, key, b.gc, br.adminPort)
		b.mounts = append(b.mounts, mnt)
		return br, os.WriteFile(filepath.Join(dir, "moat.conf"), []byte(conf), 0o600)
	}
	// mosquitto: a gocryptfs mount made by hand, as a user would.
	for _, d := range []string{mnt, cipher} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}
	if out, err := exec.Command(b.gc, "-init", "-q", "-scryptn", "10", "-passfile", key, "--", cipher).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("gocryptfs -init: %v: %s", err, out)
	}
	if out, err := exec.Command(b.gc, "-q", "-passfile", key, "--", cipher, mnt).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("gocryptfs mount: %v: %s", err, out)
	}
	b.mounts = append(b.mounts, mnt)
	return br, br.configure(false)
}

// configure writes mosquitto's configuration: bulk loads a large set with
// a single save at shutdown (saving after every change rewrites the
// whole file, which makes loading 100k messages quadratic); otherwise it
// saves after every change, mosquitto's most durable setting.
func (br *broker) configure(bulk bool) error {
	if br.name == "moat" {
		return nil
	}
	save := "autosave_interval 1\nautosave_on_changes true\n"
	if bulk {
		save = "autosave_interval 3600\n"
	}
	conf := fmt.Sprintf("listener %d 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location %s/\n%s"+
		"user root\nlog_type error\nmax_queued_messages 1000000\n", br.port, filepath.Join(br.dir, "plain"), save)
	return os.WriteFile(filepath.Join(br.dir, "moat.conf"), []byte(conf), 0o600)
}

func (br *broker) addr() string { return fmt.Sprintf("127.0.0.1:%d", br.port) }

// start runs the broker and returns the time until its listener accepts.
func (br *broker) start() (time.Duration, error) {
	conf := filepath.Join(br.dir, "moat.conf")
	if br.name == "moat" {
		br.cmd = exec.Command(br.b.moat, "serve", "-c", conf)
		br.cmd.Env = append(os.Environ(), "MOAT_TEST_SCRYPTN=10")
	} else {
		br.cmd = exec.Command(br.b.mosq, "-c", conf)
	}
	var out bytes.Buffer
	br.cmd.Stdout, br.cmd.Stderr = &out, &out
	br.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	t0 := time.Now()
	if err := br.cmd.Start(); err != nil {
		return 0, err
	}
	br.b.procs = append(br.b.procs, br.cmd)
	exited := make(chan struct{})
	br.exited = exited
	go func() { br.cmd.Wait(); close(exited) }()
	for time.Since(t0) < 5*time.Minute {
		if c, err := net.DialTimeout("tcp", br.addr(), time.Second); err == nil {
			c.Close()
			return time.Since(t0), nil
		}
		select {
		case <-exited:
			return 0, fmt.Errorf("%s exited: %s", br.name, out.String())
		case <-time.After(5 * time.Millisecond):
		}
	}
	return 0, fmt.Errorf("%s: listener not up", br.name)
}

func (br *broker) stop(sig syscall.Signal) {
	br.cmd.Process.Signal(sig)
	<-br.exited
	if br.name == "moat" {
		// gocryptfs leaves with Moat; wait until the mount is gone.
		for i := 0; i < 1200 && mounted(filepath.Join(br.dir, "plain")); i++ {
			time.Sleep(25 * time.Millisecond)
		}
	}
}

// dial connects an MQTT 3.1.1 client that requires its CONNACK to accept it.
func dial(addr, id string) (*mqtttest.Client, error) {
	c, ack, err := mqtttest.Dial(addr, mqtttest.Options{ClientID: id, KeepAlive: 120, Timeout: 30 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("connect %s: %w", id, err)
	}
	if ack.ReasonCode != 0 {
		c.Close()
		return nil, fmt.Errorf("connect %s: CONNACK 0x%02x", id, ack.ReasonCode)
	}
	return c, nil
}

// publish runs n publishers of QoS 1 retained messages (window in flight
// each; window 1 = wait for every PUBACK) until stop closes or each has
// sent limit messages (0 = no limit). acked[topic] gets the highest
// acknowledged value. It returns the number of acknowledgements.
func publish(addr, prefix string, base, n, window, topics, limit int, payload int, stop <-chan struct{}, acked map[string]int, amu *sync.Mutex) int64 {
	var total atomic.Int64
	var wg sync.WaitGroup
	for p := range n {
		c, err := dial(addr, fmt.Sprintf("%s-%d-%d", prefix, p, time.Now().UnixNano()))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			continue
		}
		pad := strings.Repeat("x", max(payload-12, 0))
		seq := 0
		next := func() (mqtttest.Msg, bool) {
			seq++
			if limit > 0 && seq > limit {
				return mqtttest.Msg{}, false
			}
			return mqtttest.Msg{Topic: fmt.Sprintf("%s/%d/%d", prefix, p, seq%topics), Seq: base + seq,
				Payload: []byte(strconv.Itoa(base+seq) + " " + pad), Retain: true}, true
		}
		wg.Go(func() {
			_ = c.PublishWindow(window, stop, next, func(m mqtttest.Msg, _ byte) {
				total.Add(1)
				if acked != nil {
					amu.Lock()
					acked[m.Topic] = max(acked[m.Topic], m.Seq)
					amu.Unlock()
				}
			})
		})
	}
	wg.Wait()
	return total.Load()
}

// queuedRate measures QoS 1 publishes per second from 16 publishers
// (one PUBACK awaited at a time) to a topic that sessions persistent
// subscribers hold offline; sessions 0 measures the same without them.
func queuedRate(addr string, sessions int, dur time.Duration) (float64, error) {
	tag := fmt.Sprintf("q%d-%d", sessions, time.Now().UnixNano())
	for i := range sessions {
		c, ack, err := mqtttest.Dial(addr, mqtttest.Options{ClientID: fmt.Sprintf("%s-sub-%d", tag, i), Persistent: true, KeepAlive: 120, Timeout: 30 * time.Second})
		if err != nil || ack.ReasonCode != 0 {
			return 0, fmt.Errorf("subscriber: %v (0x%02x)", err, ack.ReasonCode)
		}
		if err := c.SendSubscribe(1, 1, tag+"/#"); err != nil {
			return 0, err
		}
		if _, ok := c.WaitPacket(packets.Suback, 1, 30*time.Second); !ok {
			return 0, errors.New("no SUBACK")
		}
		_ = c.Disconnect()
		c.Close()
	}
	stop := make(chan struct{})
	time.AfterFunc(dur, func() { close(stop) })
	var total atomic.Int64
	var wg sync.WaitGroup
	t0 := time.Now()
	for p := range 16 {
		c, err := dial(addr, fmt.Sprintf("%s-pub-%d", tag, p))
		if err != nil {
			return 0, err
		}
		seq := 0
		wg.Go(func() {
			_ = c.PublishWindow(1, stop, func() (mqtttest.Msg, bool) {
				seq++
				return mqtttest.Msg{Topic: fmt.Sprintf("%s/%d", tag, p), Payload: []byte(strconv.Itoa(seq))}, true
			}, func(mqtttest.Msg, byte) { total.Add(1) })
		})
	}
	wg.Wait()
	return float64(total.Load()) / time.Since(t0).Seconds(), nil
}

// retainedAll collects filters one after the other: Moat (mochi) drops
// retained messages beyond a subscriber's write queue (1024).
func retainedAll(addr string, filters []string, quiet time.Duration) (map[string]int, error) {
	all := map[string]int{}
	for _, f := range filters {
		got, err := retained(addr, f, quiet)
		if err != nil {
			return nil, err
		}
		for k, v := range got {
			all[k] = v
		}
	}
	return all, nil
}

// retained subscribes to filter and returns topic → value until nothing
// arrives for quiet.
func retained(addr, filter string, quiet time.Duration) (map[string]int, error) {
	c, err := dial(addr, fmt.Sprintf("collect-%d", time.Now().UnixNano()))
	if err != nil {
		return nil, err
	}
	defer c.Close()
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe}, PacketID: 1,
		Filters: packets.Subscriptions{{Filter: filter}}}
	if err := c.Write(pk); err != nil {
		return nil, err
	}
	got := map[string]int{}
	for {
		pk, err := c.Next(quiet)
		if errors.Is(err, mqtttest.ErrTimeout) {
			return got, nil
		}
		if err != nil {
			return got, err
		}
		if pk.FixedHeader.Type == packets.Publish {
			v, _ := strconv.Atoi(strings.Fields(string(pk.Payload) + " ")[0])
			got[pk.TopicName] = v
		}
	}
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 0 {
		return (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return s[len(s)/2]
}

func (b *bench) run(reps int, dur time.Duration, killSet, startSet int) error {
	names := []string{"moat", "mosquitto"}
	rate := map[string][]float64{}
	lost := map[string][]float64{}
	ackedAtKill := map[string][]float64{}
	startup := map[string][]float64{}
	mem := map[string]float64{}

	fmt.Printf("benchpersist: %d repetitions, rate runs of %v, kill test with %d retained, start-up with %d retained\n", reps, dur, killSet, startSet)
	for r := range reps {
		for _, name := range names {
			// Rates with 1 and 16 publishers (window 1: each waits for its PUBACK).
			br, err := b.newBroker(name)
			if err != nil {
				return err
			}
			if _, err := br.start(); err != nil {
				return err
			}
			for _, n := range []int{1, 16} {
				stop := make(chan struct{})
				time.AfterFunc(dur, func() { close(stop) })
				t0 := time.Now()
				acks := publish(br.addr(), fmt.Sprintf("rate%d", n), 0, n, 1, 1000, 0, 64, stop, nil, nil)
				k := fmt.Sprintf("%s %d", name, n)
				rate[k] = append(rate[k], float64(acks)/time.Since(t0).Seconds())
			}
			{
				// One client with 500 in flight: a gateway publishing its
				// fleet's state.
				stop := make(chan struct{})
				time.AfterFunc(dur, func() { close(stop) })
				t0 := time.Now()
				acks := publish(br.addr(), "pipe", 0, 1, 500, 100000, 0, 64, stop, nil, nil)
				k := name + " pipe"
				rate[k] = append(rate[k], float64(acks)/time.Since(t0).Seconds())
			}
			for _, n := range []int{0, 4} {
				q, err := queuedRate(br.addr(), n, dur)
				if err != nil {
					return err
				}
				k := fmt.Sprintf("%s q%d", name, n)
				rate[k] = append(rate[k], q)
			}

			br.stop(syscall.SIGTERM)

			// kill -9 while holding killSet retained messages.
			if br, err = b.newBroker(name); err != nil {
				return err
			}
			br.configure(true)
			if _, err := br.start(); err != nil {
				return err
			}
			publish(br.addr(), "kill", 0, 20, 16, killSet/20, killSet/20, 64, nil, nil, nil)
			br.stop(syscall.SIGTERM)
			br.configure(false)
			if _, err := br.start(); err != nil {
				return err
			}
			acked := map[string]int{}
			var amu sync.Mutex
			stop := make(chan struct{})
			time.AfterFunc(1500*time.Millisecond, func() { br.stop(syscall.SIGKILL); close(stop) })
			publish(br.addr(), "kill", 1000000, 20, 1, killSet/20, 0, 64, stop, acked, &amu)
			<-stop // the publishers see the kill first; wait until gocryptfs has left too
			if _, err := br.start(); err != nil {
				return err
			}
			var filters []string
			for p := range 20 {
				filters = append(filters, fmt.Sprintf("kill/%d/#", p))
			}
			got, err := retainedAll(br.addr(), filters, time.Second)
			if err != nil {
				return err
			}
			n := 0
			for topic, v := range acked {
				if got[topic] < v {
					n++
				}
			}
			lost[name] = append(lost[name], float64(n))
			ackedAtKill[name] = append(ackedAtKill[name], float64(len(acked)))
			br.stop(syscall.SIGTERM)
			fmt.Printf("  rep %d %-9s rate1 %.0f/s rate16 %.0f/s; kill -9: %d of %d topics acknowledged in the last 1.5 s lost\n",
				r+1, name, rate[name+" 1"][r], rate[name+" 16"][r], n, len(acked))
		}
	}

	// Start-up with startSet retained messages, and memory per message.
	for _, name := range names {
		br, err := b.newBroker(name)
		if err != nil {
			return err
		}
		br.configure(true)
		if _, err := br.start(); err != nil {
			return err
		}
		base := br.memory()
		t0 := time.Now()
		publish(br.addr(), "big", 0, 16, 16, startSet/16, startSet/16, 64, nil, nil, nil)
		fmt.Printf("  %s: loaded %d retained messages in %v\n", name, startSet, time.Since(t0).Round(time.Millisecond))
		br.stop(syscall.SIGTERM)
		for r := range reps {
			d, err := br.start()
			if err != nil {
				return err
			}
			startup[name] = append(startup[name], d.Seconds())
			if r == reps-1 {
				time.Sleep(2 * time.Second) // let the restore's garbage be collected
				mem[name] = (br.memory() - base) / float64(startSet)
			}
			br.stop(syscall.SIGTERM)
		}
	}

	fmt.Println()
	fmt.Printf("%-52s %12s %12s\n", "median of "+strconv.Itoa(reps), "moat", "mosquitto")
	row := func(label, f string, v func(string) float64) {
		fmt.Printf("%-52s %12s %12s\n", label, fmt.Sprintf(f, v("moat")), fmt.Sprintf(f, v("mosquitto")))
	}
	row("durable retained saves/s, 1 QoS 1 publisher", "%.0f", func(n string) float64 { return median(rate[n+" 1"]) })
	row("durable retained saves/s, 16 QoS 1 publishers", "%.0f", func(n string) float64 { return median(rate[n+" 16"]) })
	row("durable retained saves/s, 1 publisher, 500 in flight", "%.0f", func(n string) float64 { return median(rate[n+" pipe"]) })
	row("QoS 1 publishes/s, 16 publishers, no subscribers", "%.0f", func(n string) float64 { return median(rate[n+" q0"]) })
	row("  the same to 4 offline persistent sessions", "%.0f", func(n string) float64 { return median(rate[n+" q4"]) })
	row(fmt.Sprintf("kill -9 at %dk retained: acknowledged topics lost", killSet/1000), "%.0f", func(n string) float64 { return median(lost[n]) })
	row("  (topics acknowledged during the killed run)", "%.0f", func(n string) float64 { return median(ackedAtKill[n]) })
	row(fmt.Sprintf("start to listener up, %dk retained (s)", startSet/1000), "%.2f", func(n string) float64 { return median(startup[n]) })
	row("memory per retained message (bytes)", "%.0f", func(n string) float64 { return mem[n] })
	fmt.Println("kill -9: 20 QoS 1 publishers (one PUBACK awaited at a time) over the set for 1.5 s, then SIGKILL and restart;")
	fmt.Println("  lost = topics whose value after restart is older than the last acknowledged one")
	fmt.Println("offline sessions: Moat writes each such publish to disk before its PUBACK; mosquitto keeps it in memory until its next autosave")
	fmt.Println("mosquitto saves with autosave_interval 1 + autosave_on_changes true (loading for start-up: one save at shutdown)")
	fmt.Println("memory: Moat = Go heap in use (admin /metrics), mosquitto = RSS; both after a restart")
	return nil
}

var heapRE = regexp.MustCompile(`(?m)^go_memstats_heap_inuse_bytes ([0-9.e+]+)`)

// memory is Moat's Go heap in use, or mosquitto's resident set, in bytes.
func (br *broker) memory() float64 {
	if br.name == "moat" {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", br.adminPort))
		if err != nil {
			return 0
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if m := heapRE.FindSubmatch(b); m != nil {
			v, _ := strconv.ParseFloat(string(m[1]), 64)
			return v
		}
		return 0
	}
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", br.cmd.Process.Pid))
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb * 1024
		}
	}
	return 0
}
