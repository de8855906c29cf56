package listen

import (
	"net"
	"syscall"
	"testing"
)

func sockopt(t *testing.T, c net.Conn, level, opt int) int {
	t.Helper()
	sc, err := c.(interface {
		SyscallConn() (syscall.RawConn, error)
	}).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var v int
	var serr error
	if err := sc.Control(func(fd uintptr) { v, serr = syscall.GetsockoptInt(int(fd), level, opt) }); err != nil {
		t.Fatal(err)
	}
	if serr != nil {
		t.Fatal(serr)
	}
	return v
}

// Accepted connections carry TCP keepalive (30 s idle, 15 s interval, 4
// probes), whether Moat opened the listener or was handed one.
func TestAcceptedKeepAlive(t *testing.T) {
	handed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		o    Options
	}{
		{"opened", Options{ID: "k1", Address: "127.0.0.1:0"}},
		{"handed", Options{ID: "k2", Listener: handed}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := New(tc.o)
			if err != nil {
				t.Fatal(err)
			}
			if err := l.Init(nil); err != nil {
				t.Fatal(err)
			}
			defer l.Close(nil)
			c, err := net.Dial("tcp", l.Address())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			sc, err := l.guard.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer sc.Close()
			raw := sc.(*guardedConn).Conn
			for _, o := range []struct {
				name       string
				level, opt int
				want       int
			}{
				{"SO_KEEPALIVE", syscall.SOL_SOCKET, syscall.SO_KEEPALIVE, 1},
				{"TCP_KEEPIDLE", syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE, 30},
				{"TCP_KEEPINTVL", syscall.IPPROTO_TCP, syscall.TCP_KEEPINTVL, 15},
				{"TCP_KEEPCNT", syscall.IPPROTO_TCP, syscall.TCP_KEEPCNT, 4},
			} {
				if got := sockopt(t, raw, o.level, o.opt); got != o.want {
					t.Errorf("%s = %d, want %d", o.name, got, o.want)
				}
			}
		})
	}
}
