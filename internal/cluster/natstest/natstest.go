// Package natstest runs a real NATS cluster with JetStream for tests: three
// nats-server nodes embedded in the test process (the server module at the
// version go.mod pins), clustered over routes on 127.0.0.1 with random
// ports, each with its own JetStream store in a temporary directory.
package natstest

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// Generous: the machine running the tests is shared and noisy.
const startTimeout = 30 * time.Second

// Cluster is a running NATS cluster.
type Cluster struct {
	t     testing.TB
	Name  string
	Nodes []*server.Server
	opts  []*server.Options
}

// Start starts an n-node JetStream cluster (n ≥ 1) and stops it when the
// test ends. It fails the test, under CI and elsewhere, when the cluster
// does not form: the server is part of the module, so nothing is missing.
func Start(t testing.TB, n int) *Cluster {
	t.Helper()
	c := &Cluster{t: t, Name: "moat-test"}
	dirs := make([]string, n)
	for i := range dirs {
		dirs[i] = t.TempDir()
	}
	// Registered after the directories: cleanups run last-first, so the
	// servers stop before their stores are removed.
	t.Cleanup(c.Stop)
	var routes []string
	for i := range n {
		o := &server.Options{
			ServerName: "n" + strconv.Itoa(i+1),
			Host:       "127.0.0.1",
			Port:       server.RANDOM_PORT,
			HTTPPort:   0,
			NoLog:      true,
			NoSigs:     true,
			JetStream:  true,
			StoreDir:   dirs[i],
			// A test cluster is small: keep JetStream from reserving the
			// machine's memory and disk.
			JetStreamMaxMemory: 256 << 20,
			JetStreamMaxStore:  4 << 30,
		}
		if n > 1 {
			o.Cluster = server.ClusterOpts{Name: c.Name, Host: "127.0.0.1", Port: server.RANDOM_PORT}
			o.Routes = server.RoutesFromStr(strings.Join(routes, ","))
		}
		s, err := server.NewServer(o)
		if err != nil {
			t.Fatalf("nats-server %s: %v", o.ServerName, err)
		}
		go s.Start()
		if !s.ReadyForConnections(startTimeout) {
			t.Fatalf("nats-server %s not ready after %v", o.ServerName, startTimeout)
		}
		if n > 1 {
			// Later nodes route to every earlier one; the cluster gossips
			// the rest.
			routes = append(routes, "nats://"+s.ClusterAddr().String())
		}
		// A copy with the bound ports, for a restart (the running server
		// reads its own options).
		ro := o.Clone()
		ro.Port = s.Addr().(*net.TCPAddr).Port
		if n > 1 {
			ro.Cluster.Port = s.ClusterAddr().Port
		}
		c.Nodes = append(c.Nodes, s)
		c.opts = append(c.opts, ro)
	}
	c.waitFormed()
	return c
}

// waitFormed waits until every node sees the others and JetStream has a
// meta leader, so a replicated stream can be created at once.
func (c *Cluster) waitFormed() {
	c.t.Helper()
	deadline := time.Now().Add(startTimeout)
	for {
		ok := true
		for _, s := range c.Nodes {
			if s.Running() && (s.NumRoutes() < len(c.Nodes)-1 || !s.JetStreamEnabled()) {
				ok = false
			}
		}
		if ok && len(c.Nodes) > 1 {
			ok = c.metaCurrent()
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("NATS cluster did not form within %v", startTimeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// metaCurrent reports whether the JetStream meta leader sees every other
// running node as a current peer: only then can a stream be placed on
// all of them.
func (c *Cluster) metaCurrent() bool {
	running := 0
	for _, s := range c.Nodes {
		if s.Running() {
			running++
		}
	}
	for _, s := range c.Nodes {
		if !s.Running() || !s.JetStreamIsLeader() {
			continue
		}
		info, err := s.Jsz(nil)
		if err != nil || info.Meta == nil {
			return false
		}
		current := 0
		for _, p := range info.Meta.Replicas {
			if p.Current && !p.Offline {
				current++
			}
		}
		return current >= running-1
	}
	return false
}

// URLs is the comma-separated list of the nodes' client URLs, in the form
// cluster_nats takes.
func (c *Cluster) URLs() string {
	u := make([]string, len(c.Nodes))
	for i, s := range c.Nodes {
		u[i] = "nats://" + s.Addr().String()
	}
	return strings.Join(u, ",")
}

// URL is one node's client URL.
func (c *Cluster) URL(i int) string { return "nats://" + c.Nodes[i].Addr().String() }

// Connect opens a plain client connection to the cluster, closed when the
// test ends.
func (c *Cluster) Connect() *nats.Conn {
	c.t.Helper()
	nc, err := nats.Connect(c.URLs(), nats.Timeout(startTimeout))
	if err != nil {
		c.t.Fatalf("connect to the NATS cluster: %v", err)
	}
	c.t.Cleanup(nc.Close)
	return nc
}

// Shutdown stops node i (its JetStream data stays for Restart).
func (c *Cluster) Shutdown(i int) {
	c.Nodes[i].Shutdown()
	c.Nodes[i].WaitForShutdown()
}

// Restart starts node i again on its ports with its store.
func (c *Cluster) Restart(i int) {
	c.t.Helper()
	o := c.opts[i].Clone()
	var routes []string
	for j, s := range c.opts {
		if j != i && len(c.opts) > 1 {
			routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", s.Cluster.Port))
		}
	}
	if len(routes) > 0 {
		o.Routes = server.RoutesFromStr(strings.Join(routes, ","))
	}
	s, err := server.NewServer(o)
	if err != nil {
		c.t.Fatalf("restart nats-server %s: %v", o.ServerName, err)
	}
	go s.Start()
	if !s.ReadyForConnections(startTimeout) {
		c.t.Fatalf("nats-server %s not ready after restart", o.ServerName)
	}
	c.Nodes[i] = s
	c.waitFormed()
}

// Stop shuts every node down.
func (c *Cluster) Stop() {
	for _, s := range c.Nodes {
		if s.Running() {
			s.Shutdown()
		}
		s.WaitForShutdown()
	}
}
