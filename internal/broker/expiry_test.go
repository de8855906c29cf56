package broker

import (
	"fmt"
	"log/slog"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/moat-mqtt/moat/internal/mochi"
)

func retained(topic string, expiry int64) packets.Packet {
	return packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Publish, Retain: true},
		TopicName:       topic,
		Payload:         []byte("v"),
		Created:         time.Now().Unix(),
		Expiry:          expiry,
		ProtocolVersion: 5,
	}
}

func TestRetainedExpiryDeletesOnlyExpired(t *testing.T) {
	srv := mqtt.New(&mqtt.Options{})
	var deleted []string
	e := &retainedExpiry{srv: srv, onExpired: func(topic string) { deleted = append(deleted, topic) }}
	now := time.Now().Unix()
	for _, pk := range []packets.Packet{retained("a/expired", now-1), retained("a/later", now+100), retained("a/never", 0), retained("a/replaced", now-1)} {
		srv.Topics.RetainMessage(pk)
		e.OnRetainMessage(nil, pk, 1)
	}
	// a/replaced got a new value without expiry: its old expiry must not delete it.
	srv.Topics.RetainMessage(retained("a/replaced", 0))
	e.expire(now)
	if len(deleted) != 1 || deleted[0] != "a/expired" {
		t.Fatalf("deleted %v, want [a/expired]", deleted)
	}
	for _, topic := range []string{"a/later", "a/never", "a/replaced"} {
		if _, ok := srv.Topics.Retained.Get(topic); !ok {
			t.Errorf("%s was removed", topic)
		}
	}
	if e.h.Len() != 1 {
		t.Fatalf("heap holds %d items, want only a/later", e.h.Len())
	}
}

// BenchmarkIdleRetained prints the CPU an idle broker spends per second
// with 100k retained messages, with mochi's sweep and with Moat's.
func BenchmarkIdleRetained(b *testing.B) {
	for _, moat := range []bool{false, true} {
		b.Run(fmt.Sprintf("moat=%v", moat), func(b *testing.B) {
			srv := mqtt.New(&mqtt.Options{Logger: slog.New(slog.DiscardHandler)})
			for i := range 100000 {
				srv.Topics.RetainMessage(retained(fmt.Sprintf("user%d/dev/%d", i%1000, i), 0))
			}
			if moat {
				if err := mochi.StopRetainedSweep(srv); err != nil {
					b.Fatal(err)
				}
			}
			if err := srv.Serve(); err != nil {
				b.Fatal(err)
			}
			defer srv.Close()
			var before, after syscall.Rusage
			syscall.Getrusage(syscall.RUSAGE_SELF, &before)
			time.Sleep(3 * time.Second)
			syscall.Getrusage(syscall.RUSAGE_SELF, &after)
			cpu := time.Duration(after.Utime.Nano()+after.Stime.Nano()-before.Utime.Nano()-before.Stime.Nano()) / 3
			b.ReportMetric(float64(cpu)/float64(time.Second)*100, "%core-idle")
		})
	}
}
