package broker_test

import (
	"context"
	"net"
	"slices"
	"testing"

	"github.com/eclipse/paho.golang/paho"
)

// mochi sends retained messages on SUBSCRIBE without the subscription's
// identifier; Moat adds it (Home Assistant on MQTT 5 routes by it).
func TestRetainedMessagesCarrySubscriptionIdentifiers(t *testing.T) {
	tb := startBroker(t, setup{acl: tableBACL})
	seed := connect(t, tb.addr, as(4, "alice", "seed"))
	seed.publish("alice/r", "retained", 1, true)
	seed.disconnect()

	ctx, cancel := context.WithTimeout(context.Background(), 2*waitLong)
	defer cancel()
	conn, err := net.DialTimeout("tcp", tb.addr, waitLong)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan *paho.Publish, 8)
	c := paho.NewClient(paho.ClientConfig{Conn: conn,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			got <- pr.Packet
			return true, nil
		}},
	})
	if ca, err := c.Connect(ctx, &paho.Connect{ClientID: "ids", KeepAlive: 30, CleanStart: true,
		Username: "alice", UsernameFlag: true, Password: []byte(passwords["alice"]), PasswordFlag: true}); err != nil || ca.ReasonCode != 0 {
		t.Fatalf("connect: %v %+v", err, ca)
	}
	defer c.Disconnect(&paho.Disconnect{})
	sub := func(filter string, id int) {
		if _, err := c.Subscribe(ctx, &paho.Subscribe{
			Properties:    &paho.SubscribeProperties{SubscriptionIdentifier: &id},
			Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: 1}},
		}); err != nil {
			t.Fatalf("subscribe %s: %v", filter, err)
		}
	}
	// paho keeps one identifier per message.
	id := func(want ...int) {
		t.Helper()
		select {
		case p := <-got:
			if p.Properties == nil || p.Properties.SubscriptionIdentifier == nil || !slices.Contains(want, *p.Properties.SubscriptionIdentifier) {
				t.Fatalf("%s (retain %v): subscription identifier %+v, want one of %v", p.Topic, p.Retain, p.Properties, want)
			}
		case <-ctx.Done():
			t.Fatal("no message")
		}
	}
	sub("alice/#", 7)
	id(7) // the retained message
	sub("alice/+", 9)
	id(7, 9) // sent again for the new subscription
	seed = connect(t, tb.addr, as(4, "alice", "seed2"))
	seed.publish("alice/live", "x", 0, false)
	id(7, 9) // a live message: mochi's own identifiers
}
