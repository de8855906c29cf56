package listen

import (
	"errors"
	"sync"
)

// A client's acknowledgements may have to wait for the disk (a QoS 1/2
// retained message is acknowledged only once it is fsync'd), while mochi
// writes them on the goroutine that reads the client's next packet. Held
// there, one client could get no more than one message per fsync. So
// frameConn can hold its writes instead: WriteAfter puts a barrier in the
// connection's outbound stream, writes issued after it are queued, in
// order, and a flusher sends them once the barrier's result is known.
// The reading goroutine goes on, and one client's pipeline shares the
// store's group commits.

// maxHeldBytes bounds what one connection queues behind barriers; past it
// mochi's writer waits, as it would on a full socket.
const maxHeldBytes = 1 << 20

type heldWrite struct {
	data   []byte
	done   <-chan struct{} // a barrier when non-nil
	result func() error
	onFail []byte
}

type ordered struct {
	mu      sync.Mutex
	drained *sync.Cond
	q       []heldWrite
	bytes   int
	active  bool // a flusher owns the outbound stream
	failed  bool
}

// WriteAfter makes the writes issued from now on wait until done is
// closed. If result then reports an error, onFail (if any) is written in
// their place and the connection is closed: nothing queued behind a
// failed barrier reaches the client.
func (c *frameConn) WriteAfter(done <-chan struct{}, result func() error, onFail []byte) {
	o := &c.ord
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.failed {
		return
	}
	o.q = append(o.q, heldWrite{done: done, result: result, onFail: onFail})
	if !o.active {
		o.active = true
		go c.flush()
	}
}

// holdWrite queues p when a flusher owns the stream; it reports false when p
// may be written directly.
func (c *frameConn) holdWrite(p []byte) (bool, error) {
	o := &c.ord
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.failed {
		return true, errBarrierFailed
	}
	if !o.active {
		return false, nil
	}
	if o.drained == nil {
		o.drained = sync.NewCond(&o.mu)
	}
	for o.active && o.bytes > maxHeldBytes && !o.failed {
		o.drained.Wait()
	}
	if !o.active {
		return false, nil
	}
	o.q = append(o.q, heldWrite{data: append([]byte(nil), p...)})
	o.bytes += len(p)
	return true, nil
}

// flush sends the queue in order, waiting at each barrier, until the
// queue is empty; then writes go direct again.
func (c *frameConn) flush() {
	o := &c.ord
	for {
		o.mu.Lock()
		if len(o.q) == 0 {
			o.active = false
			if o.drained != nil {
				o.drained.Broadcast()
			}
			o.mu.Unlock()
			return
		}
		w := o.q[0]
		o.q[0] = heldWrite{}
		o.q = o.q[1:]
		o.mu.Unlock()

		if w.done != nil {
			<-w.done
			if err := w.result(); err != nil {
				if len(w.onFail) > 0 {
					_, _ = c.writeNow(w.onFail)
				}
				c.fail()
				return
			}
			continue
		}
		_, err := c.writeNow(w.data)
		o.mu.Lock()
		o.bytes -= len(w.data)
		if o.drained != nil {
			o.drained.Broadcast()
		}
		o.mu.Unlock()
		if err != nil {
			c.fail()
			return
		}
	}
}

// fail drops what is queued and closes the connection.
func (c *frameConn) fail() {
	o := &c.ord
	o.mu.Lock()
	o.failed, o.active = true, false
	o.q, o.bytes = nil, 0
	if o.drained != nil {
		o.drained.Broadcast()
	}
	o.mu.Unlock()
	_ = c.Conn.Close()
}

var errBarrierFailed = errors.New("connection closed: an acknowledged write could not be made durable")
