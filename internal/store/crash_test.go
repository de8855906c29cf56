package store

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const crashDirEnv = "MOAT_STORE_CRASH_CHILD_DIR"

// TestCrashChild is the broker the crash test kills; it does nothing unless
// started by TestCrashKill9.
func TestCrashChild(t *testing.T) {
	dir := os.Getenv(crashDirEnv)
	if dir == "" {
		t.Skip("only runs as the child of TestCrashKill9")
	}
	b := startBroker(t, openStore(t, dir, Options{}))
	fmt.Printf("ADDR %s\n", b.addr)
	time.Sleep(2 * testDeadline) // killed long before; stops by itself otherwise
}

// A publisher storm of QoS 1 retained messages against a broker that is
// killed with SIGKILL mid-storm: every acknowledged value (or a later one)
// must be on disk.
func TestCrashKill9(t *testing.T) {
	if os.Getenv(crashDirEnv) != "" {
		t.Skip("child")
	}
	dir := t.TempDir()
	child := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.v")
	child.Env = append(os.Environ(), crashDirEnv+"="+dir)
	child.Stderr = os.Stderr
	out, err := child.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	defer child.Process.Kill()
	addrc := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if a, ok := strings.CutPrefix(sc.Text(), "ADDR "); ok {
				addrc <- a
			}
		}
	}()
	var addr string
	select {
	case addr = <-addrc:
	case <-time.After(testDeadline):
		t.Fatal("child broker did not start")
	}

	const publishers, topicsEach = 8, 25
	acked := make([][]int, publishers) // acked[p][topic] = last acknowledged value
	var total atomic.Int64
	var wg sync.WaitGroup
	for p := range publishers {
		acked[p] = make([]int, topicsEach)
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := dialRaw(addr, fmt.Sprintf("storm%d", p), true)
			if err != nil {
				t.Errorf("publisher %d: %v", p, err)
				return
			}
			defer c.Close()
			for v := 1; ; v++ {
				i := v % topicsEach
				if err := publishQoS1(c, fmt.Sprintf("storm/%d/%d", p, i), []byte(strconv.Itoa(v)), true); err != nil {
					return // the broker died
				}
				acked[p][i] = v
				total.Add(1)
			}
		}()
	}
	waitFor(t, "acknowledged publishes", func() bool { return total.Load() >= 1500 })
	if err := child.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	child.Wait()

	st := openStore(t, dir, Options{})
	defer st.Close()
	srv := newServer()
	if _, err := st.Restore(srv); err != nil {
		t.Fatal(err)
	}
	lost := 0
	for p := range publishers {
		for i, want := range acked[p] {
			if want == 0 {
				continue
			}
			topic := fmt.Sprintf("storm/%d/%d", p, i)
			pk, ok := srv.Topics.Retained.Get(topic)
			got, _ := strconv.Atoi(string(pk.Payload))
			if !ok || got < want {
				lost++
				t.Errorf("%s: acknowledged %d, on disk %q", topic, want, pk.Payload)
			}
		}
	}
	t.Logf("%d acknowledged publishes before SIGKILL, lost = %d", total.Load(), lost)
}
