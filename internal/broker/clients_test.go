package broker_test

import (
	"context"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	pahov3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/moat-mqtt/moat/internal/testenv"
)

// TestMosquittoClients drives table B with the real mosquitto_pub and
// mosquitto_sub, under 3.1.1 and 5.
func TestMosquittoClients(t *testing.T) {
	pub := testenv.LookPath(t, "mosquitto_pub", "apt-get install mosquitto-clients")
	sub := testenv.LookPath(t, "mosquitto_sub", "apt-get install mosquitto-clients")
	tb := startBroker(t, setup{acl: tableBACL})
	seedTableB(t, tb.addr)
	host, port, _ := net.SplitHostPort(tb.addr)
	run := func(bin string, args ...string) (string, int) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 2*waitLong)
		defer cancel()
		cmd := exec.CommandContext(ctx, bin, append([]string{"-h", host, "-p", port}, args...)...)
		out, err := cmd.CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatalf("%s: %v", bin, err)
		}
		return string(out), code
	}
	for _, v := range []string{"mqttv311", "mqttv5"} {
		t.Run(v, func(t *testing.T) {
			alice := []string{"-V", v, "-u", "alice", "-P", passwords["alice"]}
			if out, code := run(sub, append(alice, "-t", "alice/#", "-C", "1", "-W", "10", "-v")...); code != 0 || strings.TrimSpace(out) != "alice/r retained" {
				t.Errorf("sub alice/#: exit %d, %q", code, out)
			}
			for _, f := range []string{"#", "+/r", "bob/#"} {
				if out, _ := run(sub, append(alice, "-t", f, "-C", "1", "-W", "5", "-v")...); !strings.Contains(out, "All subscription requests were denied") {
					t.Errorf("sub %s: %q, want the subscription denied", f, out)
				}
			}
			out, code := run(pub, append(alice, "-t", "bob/x", "-m", "x", "-q", "1")...)
			if v == "mqttv5" && !strings.Contains(out, "Not authorized") {
				t.Errorf("v5 pub bob/x: exit %d, %q, want Not authorized", code, out)
			}
			if v == "mqttv311" && (code != 0 || out != "") {
				t.Errorf("3.1.1 pub bob/x: exit %d, %q, want acked as if OK", code, out)
			}
			if out, code := run(pub, append(alice, "-t", "alice/ok", "-m", "x", "-q", "2")...); code != 0 || out != "" {
				t.Errorf("pub alice/ok: exit %d, %q", code, out)
			}
			out, code = run(pub, "-V", v, "-u", "alice", "-P", "wrong", "-t", "alice/x", "-m", "x", "-q", "1")
			if code == 0 || !strings.Contains(strings.ToLower(out), "not authori") {
				t.Errorf("wrong password: exit %d, %q", code, out)
			}
		})
	}
}

// TestPahoSmoke: the Eclipse Paho Go clients (MQTT 5 and 3.1.1) connect,
// subscribe, publish and receive through Moat, and see refusals as such.
func TestPahoSmoke(t *testing.T) {
	tb := startBroker(t, setup{acl: tableBACL})
	ctx, cancel := context.WithTimeout(context.Background(), 2*waitLong)
	defer cancel()

	t.Run("v5", func(t *testing.T) {
		conn, err := net.DialTimeout("tcp", tb.addr, waitLong)
		if err != nil {
			t.Fatal(err)
		}
		got := make(chan *paho.Publish, 4)
		c := paho.NewClient(paho.ClientConfig{
			Conn: conn,
			OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
				got <- pr.Packet
				return true, nil
			}},
		})
		ca, err := c.Connect(ctx, &paho.Connect{ClientID: "paho5", KeepAlive: 30, CleanStart: true,
			Username: "alice", UsernameFlag: true, Password: []byte(passwords["alice"]), PasswordFlag: true})
		if err != nil || ca.ReasonCode != 0 {
			t.Fatalf("connect: %v %+v", err, ca)
		}
		defer c.Disconnect(&paho.Disconnect{})
		if sa, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "#", QoS: 1}}}); err == nil || sa == nil || sa.Reasons[0] != 0x87 {
			t.Errorf("subscribe #: %v %+v, want refused with 0x87", err, sa)
		}
		if _, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "alice/#", QoS: 1}}}); err != nil {
			t.Fatalf("subscribe alice/#: %v", err)
		}
		if pr, err := c.Publish(ctx, &paho.Publish{Topic: "bob/x", QoS: 1, Payload: []byte("x")}); pr == nil || pr.ReasonCode != 0x87 {
			t.Errorf("publish bob/x: %v %+v, want 0x87", err, pr)
		}
		if _, err := c.Publish(ctx, &paho.Publish{Topic: "alice/paho", QoS: 1, Payload: []byte("hello")}); err != nil {
			t.Fatalf("publish alice/paho: %v", err)
		}
		select {
		case p := <-got:
			if p.Topic != "alice/paho" || string(p.Payload) != "hello" {
				t.Errorf("received %s %q", p.Topic, p.Payload)
			}
		case <-ctx.Done():
			t.Fatal("message not received")
		}
	})

	t.Run("v311", func(t *testing.T) {
		got := make(chan pahov3.Message, 4)
		o := pahov3.NewClientOptions().AddBroker("tcp://" + tb.addr).SetClientID("paho3").
			SetUsername("bob").SetPassword(passwords["bob"]).SetAutoReconnect(false).
			SetConnectRetry(false).SetProtocolVersion(4).SetConnectTimeout(waitLong)
		c := pahov3.NewClient(o)
		if tok := c.Connect(); !tok.WaitTimeout(waitLong) || tok.Error() != nil {
			t.Fatalf("connect: %v", tok.Error())
		}
		defer c.Disconnect(250)
		tok := c.Subscribe("bob/#", 1, func(_ pahov3.Client, m pahov3.Message) { got <- m })
		if !tok.WaitTimeout(waitLong) || tok.Error() != nil {
			t.Fatalf("subscribe: %v", tok.Error())
		}
		if st := tok.(*pahov3.SubscribeToken).Result()["bob/#"]; st != 1 {
			t.Errorf("SUBACK %d, want 1", st)
		}
		ref := c.Subscribe("alice/#", 1, nil)
		ref.WaitTimeout(waitLong)
		if st := ref.(*pahov3.SubscribeToken).Result()["alice/#"]; st != 0x80 {
			t.Errorf("SUBACK alice/# %d, want 0x80", st)
		}
		// 3.1.1 has no way to say "not authorised": acked, dropped, still connected.
		if tok := c.Publish("alice/x", 1, false, "x"); !tok.WaitTimeout(waitLong) || tok.Error() != nil {
			t.Errorf("publish alice/x: %v", tok.Error())
		}
		if tok := c.Publish("bob/paho", 1, false, "hello"); !tok.WaitTimeout(waitLong) || tok.Error() != nil {
			t.Fatalf("publish: %v", tok.Error())
		}
		select {
		case m := <-got:
			if m.Topic() != "bob/paho" || string(m.Payload()) != "hello" {
				t.Errorf("received %s %q", m.Topic(), m.Payload())
			}
		case <-time.After(waitLong):
			t.Fatal("message not received")
		}
		if !c.IsConnected() {
			t.Error("disconnected")
		}
	})
}
