package broker

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
)

// group runs the broker's background goroutines: each is started through
// go with a name, and wait reports by name those still running when its
// context ends, so a stop that hangs (a certificate order waiting on the
// CA, say) is bounded and says what it left behind.
type group struct {
	mu      sync.Mutex
	running map[string]int
	wg      sync.WaitGroup
}

// goNamed runs fn in a goroutine of its own under name.
func (g *group) goNamed(name string, fn func()) {
	g.mu.Lock()
	if g.running == nil {
		g.running = map[string]int{}
	}
	g.running[name]++
	g.mu.Unlock()
	g.wg.Add(1)
	go func() {
		defer func() {
			g.mu.Lock()
			if g.running[name]--; g.running[name] == 0 {
				delete(g.running, name)
			}
			g.mu.Unlock()
			g.wg.Done()
		}()
		fn()
	}()
}

// wait returns once every goroutine has ended, or when ctx ends with an
// error naming those still running.
func (g *group) wait(ctx context.Context) error {
	done := make(chan struct{})
	go func() {
		g.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	g.mu.Lock()
	names := make([]string, 0, len(g.running))
	for n := range g.running {
		names = append(names, n)
	}
	g.mu.Unlock()
	slices.Sort(names)
	return fmt.Errorf("stop: still running after the grace period: %s", strings.Join(names, ", "))
}
