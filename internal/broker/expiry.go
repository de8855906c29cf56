package broker

import (
	"container/heap"
	"context"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// mochi's event loop copies the whole retained map every second to look
// for expired messages (38 % of a core idle at 100k retained messages,
// stalls of seconds at 1M). Moat stops that ticker and expires retained
// messages itself from a heap holding only the messages that carry an
// MQTT 5 expiry, so the cost follows what expires, not what is retained.

// retainedExpiry is a hook that remembers retained messages with an
// expiry and deletes them when it passes.
type retainedExpiry struct {
	mqtt.HookBase
	srv       *mqtt.Server
	onExpired func(topic string) // the store's delete

	mu sync.Mutex
	h  expiryHeap
}

var _ mqtt.Hook = (*retainedExpiry)(nil)

func (e *retainedExpiry) ID() string { return "moat-retained-expiry" }

func (e *retainedExpiry) Provides(b byte) bool { return b == mqtt.OnRetainMessage }

// OnRetainMessage tracks a retained message that carries an expiry.
func (e *retainedExpiry) OnRetainMessage(_ *mqtt.Client, pk packets.Packet, r int64) {
	if r <= 0 || pk.Expiry <= 0 {
		return
	}
	e.track(pk.TopicName, pk.Expiry)
}

func (e *retainedExpiry) track(topic string, expiry int64) {
	e.mu.Lock()
	heap.Push(&e.h, expiryItem{topic: topic, at: expiry})
	e.mu.Unlock()
}

// loadRestored tracks restored retained messages that carry an expiry.
func (e *retainedExpiry) loadRestored() {
	for topic, pk := range e.srv.Topics.Retained.GetAll() {
		if pk.Expiry > 0 {
			e.track(topic, pk.Expiry)
		}
	}
}

// run deletes expired retained messages once a second.
func (e *retainedExpiry) run(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			e.expire(now.Unix())
		}
	}
}

func (e *retainedExpiry) expire(now int64) {
	for {
		e.mu.Lock()
		if len(e.h) == 0 || e.h[0].at >= now {
			e.mu.Unlock()
			return
		}
		it := heap.Pop(&e.h).(expiryItem)
		e.mu.Unlock()
		// The topic may have been replaced since: only the message that
		// carries this expiry goes.
		cur, ok := e.srv.Topics.Retained.Get(it.topic)
		if !ok || cur.Expiry != it.at {
			continue
		}
		e.srv.Topics.Retained.Delete(it.topic)
		atomic.StoreInt64(&e.srv.Info.Retained, int64(e.srv.Topics.Retained.Len()))
		if e.onExpired != nil {
			e.onExpired(it.topic)
		}
	}
}

type expiryItem struct {
	topic string
	at    int64
}

type expiryHeap []expiryItem

func (h expiryHeap) Len() int           { return len(h) }
func (h expiryHeap) Less(i, j int) bool { return h[i].at < h[j].at }
func (h expiryHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *expiryHeap) Push(x any)        { *h = append(*h, x.(expiryItem)) }
func (h *expiryHeap) Pop() any {
	old := *h
	it := old[len(old)-1]
	*h = old[:len(old)-1]
	return it
}
