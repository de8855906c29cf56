// Command mqttws is an MQTT client over WebSocket for container tests: it
// connects as cloudflared forwards a browser or device (the headers given
// with -H), publishes a retained QoS 1 message or reads one back, and exits
// 0 only if that worked. It prints what it did on stdout.
package main

import (
	"flag"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"github.com/moat-mqtt/moat/internal/mqtttest"
)

type headers []string

func (h *headers) String() string     { return strings.Join(*h, "; ") }
func (h *headers) Set(v string) error { *h = append(*h, v); return nil }

func main() {
	var hdrs headers
	url := flag.String("url", "ws://moat:9001/mqtt", "WebSocket URL")
	flag.Var(&hdrs, "H", "request header \"Name: value\" (repeatable)")
	user := flag.String("user", "", "MQTT username")
	pass := flag.String("pass", "", "MQTT password")
	id := flag.String("id", "mqttws", "client id")
	topic := flag.String("topic", "", "topic")
	payload := flag.String("payload", "", "with -publish: the payload; else the payload expected")
	publish := flag.Bool("publish", false, "publish a retained QoS 1 message (else expect it)")
	hold := flag.Int("hold", 0, "open this many connections at once, print how many were accepted, keep them for -linger")
	linger := flag.Duration("linger", 2*time.Second, "with -hold: how long to keep the connections")
	probe := flag.String("probe", "", "with -hold: while holding, connect once more as this visitor (CF-Connecting-IP)")
	flag.Parse()
	if *hold > 0 {
		holdMany(*url, hdrs, *user, *pass, *id, *hold, *linger, *probe)
		return
	}
	if err := run(*url, hdrs, *user, *pass, *id, *topic, *payload, *publish); err != nil {
		fmt.Fprintln(os.Stderr, "mqttws:", err)
		os.Exit(1)
	}
}

// fail turns mqtttest's failing helpers into an error.
type fail struct{ err error }

func (f *fail) Helper() {}
func (f *fail) Fatalf(format string, args ...any) {
	f.err = fmt.Errorf(format, args...)
	panic(f)
}

// dial opens one MQTT connection over WebSocket.
func dial(url string, hdrs headers, user, pass, id string) (*mqtttest.Client, error) {
	h := http.Header{}
	for _, l := range hdrs {
		k, v, ok := strings.Cut(l, ":")
		if !ok {
			return nil, fmt.Errorf("header %q: want \"Name: value\"", l)
		}
		h.Add(strings.TrimSpace(k), strings.TrimSpace(v))
	}
	d := websocket.Dialer{Subprotocols: []string{"mqtt"}, HandshakeTimeout: 10 * time.Second}
	ws, resp, err := d.Dial(url, h)
	if err != nil {
		return nil, fmt.Errorf("websocket %s: %w", url, err)
	}
	resp.Body.Close()
	c, ack, err := mqtttest.Connect(&mqtttest.WSConn{Conn: ws}, mqtttest.Options{ClientID: id, Username: user, Password: pass, AutoAck: true})
	if err != nil {
		return nil, err
	}
	if ack.ReasonCode != 0 {
		c.Close()
		return nil, fmt.Errorf("CONNACK 0x%02x", ack.ReasonCode)
	}
	return c, nil
}

// holdMany opens n connections at once and reports how many the broker
// accepted and kept (a refused one may be closed right after CONNACK).
func holdMany(url string, hdrs headers, user, pass, id string, n int, linger time.Duration, probe string) {
	var mu sync.Mutex
	var open []*mqtttest.Client
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := dial(url, hdrs, user, pass, fmt.Sprintf("%s-%d", id, i))
			if err != nil {
				return
			}
			mu.Lock()
			open = append(open, c)
			mu.Unlock()
		}()
	}
	wg.Wait()
	time.Sleep(time.Second) // let the broker close what it refuses
	alive := 0
	for _, c := range open {
		if c.Err() == nil {
			alive++
		}
	}
	fmt.Printf("accepted %d of %d\n", alive, n)
	if probe != "" {
		c, err := dial(url, headers{"CF-Connecting-IP: " + probe, "X-Forwarded-For: " + probe}, user, pass, id+"-probe")
		if err != nil {
			fmt.Printf("probe refused: %v\n", err)
		} else {
			fmt.Println("probe accepted")
			c.Close()
		}
	}
	time.Sleep(linger)
	for _, c := range open {
		c.Close()
	}
}

func run(url string, hdrs headers, user, pass, id, topic, payload string, publish bool) (err error) {
	c, err := dial(url, hdrs, user, pass, id)
	if err != nil {
		return err
	}
	defer c.Close()
	f := &fail{}
	defer func() {
		if r := recover(); r != nil {
			if r != f {
				panic(r)
			}
			err = f.err
		}
	}()
	if publish {
		if a := c.Publish(f, topic, []byte(payload), 1, true); a.Code != 0 {
			return fmt.Errorf("PUBACK 0x%02x", a.Code)
		}
		fmt.Printf("published %s\n", topic)
		return c.Disconnect()
	}
	c.MustSubscribe(f, 1, topic)
	if !c.WaitTopic(topic) {
		return fmt.Errorf("no retained message on %s", topic)
	}
	pk, _ := c.Message(topic)
	if string(pk.Payload) != payload || !pk.FixedHeader.Retain {
		return fmt.Errorf("got %q retain=%v, want %q retained", pk.Payload, pk.FixedHeader.Retain, payload)
	}
	fmt.Printf("received %s\n", topic)
	return c.Disconnect()
}
