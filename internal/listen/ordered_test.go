package listen

import (
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

func readExactly(t *testing.T, c net.Conn, n int) string {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b := make([]byte, n)
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatalf("read %d bytes: %v", n, err)
	}
	return string(b)
}

// nothingFor reports whether c stays silent for d.
func nothingFor(c net.Conn, d time.Duration) bool {
	_ = c.SetReadDeadline(time.Now().Add(d))
	var b [1]byte
	_, err := c.Read(b[:])
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// Writes after a barrier wait for it, in order; the reader is never held.
func TestWriteAfterHoldsInOrder(t *testing.T) {
	server, peer := net.Pipe()
	defer peer.Close()
	c := newFrameConn(server, 0, time.Second)
	go func() { _, _ = c.Write([]byte("a")) }()
	if got := readExactly(t, peer, 1); got != "a" {
		t.Fatalf("direct write: %q", got)
	}

	first, second := make(chan struct{}), make(chan struct{})
	c.WriteAfter(first, func() error { return nil }, nil)
	if n, err := c.Write([]byte("b")); n != 1 || err != nil {
		t.Fatalf("held write: %d %v", n, err)
	}
	c.WriteAfter(second, func() error { return nil }, nil)
	if _, err := c.Write([]byte("c")); err != nil {
		t.Fatal(err)
	}
	if !nothingFor(peer, 100*time.Millisecond) {
		t.Fatal("a write went out before its barrier")
	}
	close(first)
	if got := readExactly(t, peer, 1); got != "b" {
		t.Fatalf("after the first barrier: %q", got)
	}
	if !nothingFor(peer, 100*time.Millisecond) {
		t.Fatal("a write overtook the second barrier")
	}
	close(second)
	if got := readExactly(t, peer, 1); got != "c" {
		t.Fatalf("after the second barrier: %q", got)
	}
	// Queue drained: writes go direct again.
	go func() { _, _ = c.Write([]byte("d")) }()
	if got := readExactly(t, peer, 1); got != "d" {
		t.Fatalf("after draining: %q", got)
	}
}

// A failed barrier writes its replacement, drops what was queued behind
// it, and closes the connection.
func TestWriteAfterFailure(t *testing.T) {
	server, peer := net.Pipe()
	defer peer.Close()
	c := newFrameConn(server, 0, time.Second)
	done := make(chan struct{})
	c.WriteAfter(done, func() error { return errors.New("disk full") }, []byte("NACK"))
	_, _ = c.Write([]byte("ack-that-must-not-go-out"))
	close(done)
	if got := readExactly(t, peer, 4); got != "NACK" {
		t.Fatalf("got %q, want the replacement", got)
	}
	_ = peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := peer.Read(make([]byte, 64)); err == nil {
		t.Fatalf("read %d more bytes after a failed barrier; want the connection closed", n)
	}
	if _, err := c.Write([]byte("x")); err == nil {
		t.Fatal("write after a failed barrier succeeded")
	}
}
