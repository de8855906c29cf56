// Package admin serves Moat's operations endpoints on a separate, by default
// loopback-only, HTTP listener:
//
//	/healthz  the process is alive: 200 "ok"
//	/readyz   every registered readiness check passes: 200, else 503 naming
//	          the failing checks (names only; reasons go to the log)
//	/metrics  Prometheus exposition of the registry handed in
//
// Check is the client side, used by `moat health` and the container
// HEALTHCHECK.
package admin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// DefaultAddr is where the admin listener binds unless configured otherwise.
const DefaultAddr = "127.0.0.1:7883"

// CheckFunc reports whether one part of Moat is ready. It must return
// promptly when ctx is done and must not put secrets in its error.
type CheckFunc func(ctx context.Context) error

// Options configure a Server.
type Options struct {
	// Addr is host:port to listen on; "" means DefaultAddr. Port 0 picks one.
	Addr string
	// Gatherer feeds /metrics; nil serves 404 there.
	Gatherer prometheus.Gatherer
	// Logger receives check-state changes and serve errors; nil discards.
	Logger *slog.Logger
	// CheckTimeout bounds one /readyz evaluation; 0 means 5 s.
	CheckTimeout time.Duration
}

// Server is the admin HTTP server.
type Server struct {
	opts Options
	log  *slog.Logger
	http *http.Server

	mu     sync.Mutex
	checks map[string]CheckFunc
	failed map[string]bool // last known state, to log changes only
	ln     net.Listener
	done   chan struct{}
}

// New returns a Server; call Register for each readiness check, then Start.
func New(opts Options) *Server {
	if opts.Addr == "" {
		opts.Addr = DefaultAddr
	}
	if opts.CheckTimeout <= 0 {
		opts.CheckTimeout = 5 * time.Second
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		opts:   opts,
		log:    log,
		checks: map[string]CheckFunc{},
		failed: map[string]bool{},
	}
	s.http = &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    8 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	return s
}

// Register adds (or replaces) the readiness check called name. Names appear
// in /readyz answers, so keep them short words: "listeners", "store",
// "certificate". Safe to call while serving.
func (s *Server) Register(name string, check CheckFunc) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.checks[name] = check
}

// Handler returns the admin routes, for tests and for embedding.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeText(w, http.StatusOK, "ok\n")
	})
	mux.HandleFunc("GET /readyz", s.readyz)
	if s.opts.Gatherer != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(s.opts.Gatherer, promhttp.HandlerOpts{
			ErrorLog:            slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
			MaxRequestsInFlight: 4,
			Timeout:             20 * time.Second,
		}))
	}
	return mux
}

// Start binds the listener and serves in the background. It returns once the
// port is open, so a readiness probe right after Start reaches it.
func (s *Server) Start() error {
	ln, err := net.Listen("tcp", s.opts.Addr)
	if err != nil {
		return fmt.Errorf("admin listener %s: %w", s.opts.Addr, err)
	}
	s.mu.Lock()
	s.ln = ln
	s.done = make(chan struct{})
	s.mu.Unlock()
	go func() {
		defer close(s.done)
		if err := s.http.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("admin listener stopped", "addr", ln.Addr().String(), "error", err)
		}
	}()
	s.log.Info("admin listener started", "addr", ln.Addr().String())
	return nil
}

// Addr is the bound address after Start (useful with port 0), else the
// configured one.
func (s *Server) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln != nil {
		return s.ln.Addr().String()
	}
	return s.opts.Addr
}

// Shutdown stops accepting, lets running requests finish until ctx is done,
// and returns when the server has stopped.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	done := s.done
	s.mu.Unlock()
	err := s.http.Shutdown(ctx)
	if done != nil {
		select {
		case <-done:
		case <-ctx.Done():
			if err == nil {
				err = ctx.Err()
			}
		}
	}
	if err != nil {
		return fmt.Errorf("admin shutdown: %w", err)
	}
	return nil
}

func writeText(w http.ResponseWriter, code int, body string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	_, _ = w.Write([]byte(body))
}

// readyz runs every check concurrently under one deadline. The answer names
// failing checks only; their errors are logged when a check changes state.
func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	failing := s.runChecks(r.Context())
	if len(failing) == 0 {
		writeText(w, http.StatusOK, "ok\n")
		return
	}
	writeText(w, http.StatusServiceUnavailable, notReadyPrefix+strings.Join(failing, ", ")+"\n")
}

const notReadyPrefix = "not ready: "

// runChecks returns the sorted names of the failing checks.
func (s *Server) runChecks(ctx context.Context) []string {
	ctx, cancel := context.WithTimeout(ctx, s.opts.CheckTimeout)
	defer cancel()
	s.mu.Lock()
	checks := make(map[string]CheckFunc, len(s.checks))
	for name, c := range s.checks {
		checks[name] = c
	}
	s.mu.Unlock()

	errs := make(map[string]error, len(checks))
	var mu sync.Mutex
	var wg sync.WaitGroup
	for name, check := range checks {
		wg.Go(func() {
			err := runOne(ctx, check)
			mu.Lock()
			errs[name] = err
			mu.Unlock()
		})
	}
	wg.Wait()

	var failing []string
	for name, err := range errs {
		if err != nil {
			failing = append(failing, name)
		}
		s.noteState(name, err)
	}
	slices.Sort(failing)
	return failing
}

// runOne runs a check, turning a panic or an overrun into a failure so that
// one bad check cannot take down or hang the admin listener.
func runOne(ctx context.Context, check CheckFunc) (err error) {
	res := make(chan error, 1)
	go func() {
		defer func() {
			if p := recover(); p != nil {
				res <- fmt.Errorf("check panicked: %v", p)
			}
		}()
		res <- check(ctx)
	}()
	select {
	case err = <-res:
		return err
	case <-ctx.Done():
		return fmt.Errorf("check did not finish: %w", ctx.Err())
	}
}

// noteState logs a check only when it starts or stops failing, so a probe
// every few seconds does not flood the log.
func (s *Server) noteState(name string, err error) {
	s.mu.Lock()
	was, known := s.failed[name]
	s.failed[name] = err != nil
	s.mu.Unlock()
	switch {
	case err != nil && (!known || !was):
		s.log.Warn("readiness check failing", "check", name, "error", err)
	case err == nil && known && was:
		s.log.Info("readiness check passing again", "check", name)
	}
}
