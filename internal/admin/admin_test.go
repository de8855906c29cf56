package admin

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// syncBuffer is a log sink safe for concurrent handlers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func start(t *testing.T, opts Options) *Server {
	t.Helper()
	opts.Addr = "127.0.0.1:0"
	s := New(opts)
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = s.Shutdown(ctx)
	})
	return s
}

func get(t *testing.T, method, url string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := &http.Client{Timeout: 15 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestEndpoints(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "moat_test_total", Help: "test"})
	reg.MustRegister(c)
	c.Add(3)
	s := start(t, Options{Gatherer: reg})
	base := "http://" + s.Addr()

	tests := []struct {
		method, path string
		code         int
		body         string
	}{
		{"GET", "/healthz", 200, "ok\n"},
		{"HEAD", "/healthz", 200, ""},
		{"POST", "/healthz", 405, ""},
		{"GET", "/readyz", 200, "ok\n"},
		{"GET", "/metrics", 200, "moat_test_total 3"},
		{"GET", "/nope", 404, ""},
	}
	for _, tt := range tests {
		code, body := get(t, tt.method, base+tt.path)
		if code != tt.code || !strings.Contains(body, tt.body) {
			t.Errorf("%s %s = %d %q, want %d containing %q", tt.method, tt.path, code, body, tt.code, tt.body)
		}
	}
}

func TestMetricsOffWithoutGatherer(t *testing.T) {
	s := start(t, Options{})
	if code, _ := get(t, "GET", "http://"+s.Addr()+"/metrics"); code != 404 {
		t.Fatalf("/metrics without a gatherer = %d, want 404", code)
	}
}

func TestReadiness(t *testing.T) {
	logs := &syncBuffer{}
	s := start(t, Options{
		Logger:       slog.New(slog.NewTextHandler(logs, nil)),
		CheckTimeout: 300 * time.Millisecond,
	})
	ctx := context.Background()
	if err := Check(ctx, s.Addr()); err != nil {
		t.Fatalf("no checks: %v", err)
	}

	storeErr := errors.New("bbolt open: secret-path-xyz")
	var storeDown sync.Mutex
	down := true
	s.Register("listeners", func(context.Context) error { return nil })
	s.Register("store", func(context.Context) error {
		storeDown.Lock()
		defer storeDown.Unlock()
		if down {
			return storeErr
		}
		return nil
	})
	s.Register("certificate", func(context.Context) error { panic("boom") })
	s.Register("slow", func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() })
	s.Register("stuck", func(context.Context) error { select {} })

	for range 3 {
		code, body := get(t, "GET", "http://"+s.Addr()+"/readyz")
		if code != 503 || body != "not ready: certificate, slow, store, stuck\n" {
			t.Fatalf("/readyz = %d %q", code, body)
		}
	}
	err := Check(ctx, s.Addr())
	if !errors.Is(err, ErrNotReady) || !strings.Contains(err.Error(), "failing checks: certificate, slow, store, stuck") {
		t.Fatalf("Check = %v", err)
	}
	if strings.Contains(err.Error(), "secret-path-xyz") {
		t.Fatalf("Check leaks a check's error: %v", err)
	}
	if n := strings.Count(logs.String(), "secret-path-xyz"); n != 1 {
		t.Fatalf("store failure logged %d times over 4 probes, want once:\n%s", n, logs)
	}

	storeDown.Lock()
	down = false
	storeDown.Unlock()
	s.Register("certificate", func(context.Context) error { return nil })
	s.Register("slow", func(context.Context) error { return nil })
	s.Register("stuck", func(context.Context) error { return nil })
	if err := Check(ctx, s.Addr()); err != nil {
		t.Fatalf("after recovery: %v", err)
	}
	if !strings.Contains(logs.String(), "readiness check passing again") {
		t.Fatalf("recovery not logged:\n%s", logs)
	}
}

func TestShutdown(t *testing.T) {
	s := New(Options{Addr: "127.0.0.1:0"})
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	addr := s.Addr()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := Check(ctx, addr); err == nil {
		t.Fatal("Check succeeded after Shutdown")
	}
	// Shutdown of a server never started is harmless.
	if err := New(Options{}).Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestStartBusyPort(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	err = New(Options{Addr: ln.Addr().String()}).Start()
	if err == nil || !strings.Contains(err.Error(), "admin listener") {
		t.Fatalf("Start on a busy port = %v", err)
	}
}

func TestCheckUnexpectedAnswer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte("\x1b[31mgarbage\n"))
		}),
		ReadHeaderTimeout: 5 * time.Second,
	}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	err = Check(context.Background(), ln.Addr().String())
	if err == nil || !strings.Contains(err.Error(), "unexpected answer 503") {
		t.Fatalf("Check = %v", err)
	}
}

func TestProbeAddr(t *testing.T) {
	tests := []struct {
		in, want string
		wantErr  bool
	}{
		{"127.0.0.1:9090", "127.0.0.1:9090", false},
		{"0.0.0.0:9090", "127.0.0.1:9090", false},
		{":9090", "127.0.0.1:9090", false},
		{"[::]:9090", "[::1]:9090", false},
		{"[::1]:9091", "[::1]:9091", false},
		{"moat:9090", "moat:9090", false},
		{"off", "", true},
		{"", "", true},
		{"9090", "", true},
	}
	for _, tt := range tests {
		got, err := probeAddr(tt.in)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("probeAddr(%q) = %q, %v; want %q, err=%v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

func FuzzProbeAddr(f *testing.F) {
	for _, s := range []string{"127.0.0.1:9090", ":0", "[::]:1", "off", "a:b:c", "[", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		out, err := probeAddr(in)
		if err != nil {
			if out != "" {
				t.Fatalf("error with a result %q", out)
			}
			return
		}
		if _, _, err := net.SplitHostPort(out); err != nil {
			t.Fatalf("probeAddr(%q) = %q, not host:port: %v", in, out, err)
		}
	})
}
