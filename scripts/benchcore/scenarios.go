package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// result is one scenario run on one broker: named figures.
type result map[string]float64

// meter brackets a measurement with the broker's and the generator's CPU.
type meter struct {
	b          *broker
	t0         time.Time
	bcpu, gcpu time.Duration
}

func startMeter(b *broker) (*meter, error) {
	c, err := b.cpu()
	if err != nil {
		return nil, err
	}
	return &meter{b: b, t0: time.Now(), bcpu: c, gcpu: selfCPU()}, nil
}

// stop returns wall time, broker CPU and generator CPU since start.
func (m *meter) stop() (wall, bcpu, gcpu time.Duration, err error) {
	c, err := m.b.cpu()
	return time.Since(m.t0), c - m.bcpu, selfCPU() - m.gcpu, err
}

// perCPU divides n by CPU seconds, guarding the 10 ms tick resolution.
func perCPU(n float64, cpu time.Duration) float64 {
	return n / max(cpu.Seconds(), 0.01)
}

const connectTimeout = 60 * time.Second

// connectAll opens n clients with up to par dials in flight.
func connectAll(n, par int, mk func(i int) (*client, error)) ([]*client, error) {
	out := make([]*client, n)
	errs := make([]error, n)
	sem := make(chan struct{}, par)
	var wg sync.WaitGroup
	for i := range n {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			out[i], errs[i] = mk(i)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		closeAll(out)
		return nil, err
	}
	return out, nil
}

func closeAll(cs []*client) {
	var wg sync.WaitGroup
	for _, c := range cs {
		if c != nil {
			wg.Add(1)
			go func() { defer wg.Done(); c.close() }()
		}
	}
	wg.Wait()
}

// counter subscribers count QoS 0 deliveries until their socket closes.
func countDeliveries(subs []*client, total *atomic.Int64, last *atomic.Int64) *sync.WaitGroup {
	var wg sync.WaitGroup
	for _, s := range subs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				t, err := s.skip()
				if err != nil {
					return
				}
				if t == typePublish {
					total.Add(1)
					last.Store(time.Now().UnixNano())
				}
			}
		}()
	}
	return &wg
}

// drain waits until want deliveries arrived or none came for quiet.
func drain(total *atomic.Int64, want int64, quiet, limit time.Duration) {
	end := time.Now().Add(limit)
	prev, since := total.Load(), time.Now()
	for time.Now().Before(end) {
		time.Sleep(20 * time.Millisecond)
		n := total.Load()
		if n >= want {
			return
		}
		if n != prev {
			prev, since = n, time.Now()
		} else if time.Since(since) > quiet {
			return
		}
	}
}

// publishLoop writes QoS 0 PUBLISH packets until the deadline, at rate
// messages per second (0: as fast as the socket takes them). It returns
// how many were handed to the kernel.
func publishLoop(c *client, pkt []byte, d time.Duration, rate float64) int64 {
	start := time.Now()
	end := start.Add(d)
	var sent int64
	if rate <= 0 {
		for {
			for range 64 {
				if _, err := c.w.Write(pkt); err != nil {
					return sent
				}
				sent++
			}
			if time.Now().After(end) {
				break
			}
		}
	} else {
		for {
			now := time.Now()
			if now.After(end) {
				break
			}
			due := int64(now.Sub(start).Seconds()*rate) + 1
			for sent < due {
				if _, err := c.w.Write(pkt); err != nil {
					return sent
				}
				sent++
			}
			if err := c.w.Flush(); err != nil {
				return sent
			}
			time.Sleep(time.Millisecond)
		}
	}
	if err := c.w.Flush(); err != nil {
		// Only what reached the socket counts as sent.
		return sent - int64(c.w.Buffered()/len(pkt))
	}
	return sent
}

// fanIn: P publishers each publish QoS 0 on their own topic, one subscriber
// per publisher; totalRate 0 means as fast as possible.
func fanIn(s *setup, b *broker, d time.Duration, totalRate float64, tag string) (result, error) {
	p := len(s.fanin)
	subs, err := connectAll(p, p, func(i int) (*client, error) {
		u := s.fanin[i]
		c, err := dial(b.addr, nil, u.name+"-s"+tag, u.name, u.pass, 60, connectTimeout)
		if err != nil {
			return nil, err
		}
		if err := c.subscribe(u.name+"/x", 0); err != nil {
			c.close()
			return nil, err
		}
		return c, nil
	})
	if err != nil {
		return nil, err
	}
	defer closeAll(subs)
	pubs, err := connectAll(p, p, func(i int) (*client, error) {
		u := s.fanin[i]
		return dial(b.addr, nil, u.name+"-p"+tag, u.name, u.pass, 60, connectTimeout)
	})
	if err != nil {
		return nil, err
	}
	defer closeAll(pubs)
	var total, last atomic.Int64
	wg := countDeliveries(subs, &total, &last)
	defer wg.Wait()
	defer closeAll(subs)

	m, err := startMeter(b)
	if err != nil {
		return nil, err
	}
	sent := make([]int64, p)
	var pw sync.WaitGroup
	for i, c := range pubs {
		pw.Add(1)
		go func() {
			defer pw.Done()
			pkt := encodePublish(s.fanin[i].name+"/x", 0, 0, make([]byte, 64))
			sent[i] = publishLoop(c, pkt, d, totalRate/float64(p))
		}()
	}
	pw.Wait()
	var all int64
	for _, n := range sent {
		all += n
	}
	drain(&total, all, 500*time.Millisecond, 15*time.Second)
	wall, bcpu, gcpu, err := m.stop()
	if err != nil {
		return nil, err
	}
	got := total.Load()
	active := time.Duration(last.Load() - m.t0.UnixNano())
	if active <= 0 {
		active = wall
	}
	return result{
		"sent":      float64(all),
		"delivered": float64(got),
		"rate":      float64(got) / active.Seconds(),
		"per_cpu":   perCPU(float64(got), bcpu),
		"loss":      100 * float64(all-got) / float64(max(all, 1)),
		"bcores":    bcpu.Seconds() / wall.Seconds(),
		"gcores":    gcpu.Seconds() / wall.Seconds(),
	}, nil
}

// fanOut: one publisher, k subscribers on the same topic, QoS 0.
func fanOut(s *setup, b *broker, k int, d time.Duration) (result, error) {
	u := s.fan
	subs, err := connectAll(k, 32, func(i int) (*client, error) {
		c, err := dial(b.addr, nil, fmt.Sprintf("%s-s%d", u.name, i), u.name, u.pass, 60, connectTimeout)
		if err != nil {
			return nil, err
		}
		if err := c.subscribe(u.name+"/t", 0); err != nil {
			c.close()
			return nil, err
		}
		return c, nil
	})
	if err != nil {
		return nil, err
	}
	defer closeAll(subs)
	pub, err := dial(b.addr, nil, u.name+"-p", u.name, u.pass, 60, connectTimeout)
	if err != nil {
		return nil, err
	}
	defer pub.close()
	var total, last atomic.Int64
	wg := countDeliveries(subs, &total, &last)
	defer wg.Wait()
	defer closeAll(subs)
	m, err := startMeter(b)
	if err != nil {
		return nil, err
	}
	sent := publishLoop(pub, encodePublish(u.name+"/t", 0, 0, make([]byte, 64)), d, 0)
	pubTime := time.Since(m.t0)
	want := sent * int64(k)
	drain(&total, want, 500*time.Millisecond, 15*time.Second)
	wall, bcpu, gcpu, err := m.stop()
	if err != nil {
		return nil, err
	}
	got := total.Load()
	return result{
		"sent":      float64(sent),
		"delivered": float64(got),
		"per_cpu":   perCPU(float64(got), bcpu),
		"loss":      100 * float64(want-got) / float64(max(want, 1)),
		"gcores":    gcpu.Seconds() / wall.Seconds(),
		"pub_s":     pubTime.Seconds(),
		"wall_s":    wall.Seconds(),
		"rate":      float64(got) / wall.Seconds(),
	}, nil
}

// latency: QoS 1 publish to delivery on one user, paced, timestamp in the
// payload; the subscriber acknowledges each delivery at once.
func latency(s *setup, b *broker, rate float64, d time.Duration) (result, error) {
	u := s.lat
	sub, err := dial(b.addr, nil, u.name+"-s", u.name, u.pass, 60, connectTimeout)
	if err != nil {
		return nil, err
	}
	defer sub.close()
	if err := sub.subscribe(u.name+"/t", 1); err != nil {
		return nil, err
	}
	pub, err := dial(b.addr, nil, u.name+"-p", u.name, u.pass, 60, connectTimeout)
	if err != nil {
		return nil, err
	}
	defer pub.close()
	base := time.Now()
	n := int(rate * d.Seconds())
	lats := make([]time.Duration, 0, n)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for len(lats) < n {
			first, body, err := sub.read()
			if err != nil {
				return
			}
			if first>>4 != typePublish {
				continue
			}
			id, payload, ok := publishPayload(first, body)
			if !ok || len(payload) < 8 {
				continue
			}
			lats = append(lats, time.Since(base)-time.Duration(binary.BigEndian.Uint64(payload)))
			if err := sub.send(encodePuback(id)); err != nil {
				return
			}
		}
	}()
	go func() { // PUBACKs to the publisher
		for {
			if _, err := pub.skip(); err != nil {
				return
			}
		}
	}()
	payload := make([]byte, 64)
	topic := u.name + "/t"
	start := time.Now()
	for i := range n {
		if wait := time.Until(start.Add(time.Duration(float64(i) / rate * float64(time.Second)))); wait > 0 {
			time.Sleep(wait)
		}
		binary.BigEndian.PutUint64(payload, uint64(time.Since(base)))
		if err := pub.send(encodePublish(topic, 1, uint16(i%65535+1), payload)); err != nil {
			return nil, fmt.Errorf("latency publish: %w", err)
		}
	}
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		sub.conn.Close()
		<-done
	}
	if len(lats) == 0 {
		return nil, errors.New("latency: nothing delivered")
	}
	slices.Sort(lats)
	q := func(p float64) float64 {
		return float64(lats[min(int(p*float64(len(lats))), len(lats)-1)]) / float64(time.Millisecond)
	}
	return result{"p50": q(0.50), "p99": q(0.99), "n": float64(len(lats))}, nil
}

// idleRSS: n idle authenticated clients on a freshly started broker.
func idleRSS(s *setup, b *broker, n int) (result, error) {
	if err := b.restart(); err != nil {
		return nil, err
	}
	time.Sleep(time.Second) // let start-up allocations settle
	before, err := b.rss()
	if err != nil {
		return nil, err
	}
	t0 := time.Now()
	cs, err := connectAll(n, 16, func(i int) (*client, error) {
		return dial(b.addr, nil, fmt.Sprintf("%s-%d", s.cheap.name, i), s.cheap.name, s.cheap.pass, 600, connectTimeout)
	})
	if err != nil {
		return nil, err
	}
	took := time.Since(t0)
	time.Sleep(time.Second)
	after, err := b.rss()
	closeAll(cs)
	if err != nil {
		return nil, err
	}
	return result{
		"mib_per_1k": float64(after-before) / (1 << 20) * 1000 / float64(n),
		"base_mib":   float64(before) / (1 << 20),
		"connect_s":  took.Seconds(),
	}, nil
}

// connects: connect + CONNACK + DISCONNECT in a loop from workers clients,
// optionally over TLS with full handshakes.
func connects(s *setup, b *broker, workers int, d time.Duration, useTLS bool) (result, error) {
	addr := b.addr
	var tc *tls.Config
	if useTLS {
		addr = b.tlsAddr
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(s.caPEM)
		// No ClientSessionCache: every handshake is a full one. X25519
		// only, so both brokers do the same key exchange (mosquitto's
		// OpenSSL 3.0 has no ML-KEM hybrid).
		tc = &tls.Config{RootCAs: pool, ServerName: "localhost", MinVersion: tls.VersionTLS12,
			CurvePreferences: []tls.CurveID{tls.X25519}}
	}
	m, err := startMeter(b)
	if err != nil {
		return nil, err
	}
	end := time.Now().Add(d)
	var ok, failed atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; time.Now().Before(end); i++ {
				c, err := dial(addr, tc, fmt.Sprintf("%s-c%d-%d", s.cheap.name, w, i), s.cheap.name, s.cheap.pass, 60, 10*time.Second)
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
					continue
				}
				c.close()
				ok.Add(1)
			}
		}()
	}
	wg.Wait()
	wall, bcpu, gcpu, err := m.stop()
	if err != nil {
		return nil, err
	}
	if e, _ := firstErr.Load().(error); e != nil && ok.Load() == 0 {
		return nil, e
	}
	return result{
		"per_s":   float64(ok.Load()) / wall.Seconds(),
		"per_cpu": perCPU(float64(ok.Load()), bcpu),
		"failed":  float64(failed.Load()),
		"gcores":  gcpu.Seconds() / wall.Seconds(),
	}, nil
}

// storm: every storm user connects at once; returns the time until the
// last CONNACK. warm first connects and disconnects everyone.
func storm(s *setup, b *broker, warm bool, limit time.Duration) (result, error) {
	n := len(s.storm)
	once := func() (time.Duration, int, error) {
		t0 := time.Now()
		var okN atomic.Int64
		cs := make([]*client, n)
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i, u := range s.storm {
			wg.Add(1)
			go func() {
				defer wg.Done()
				cs[i], errs[i] = dial(b.addr, nil, u.name+"-storm", u.name, u.pass, 60, limit)
				if errs[i] == nil {
					okN.Add(1)
				}
			}()
		}
		wg.Wait()
		took := time.Since(t0)
		closeAll(cs)
		return took, int(okN.Load()), errors.Join(errs...)
	}
	res := result{}
	if warm {
		took, _, err := once()
		if err != nil {
			return nil, fmt.Errorf("storm warm-up: %w", err)
		}
		res["warm_s"] = took.Seconds()
		time.Sleep(500 * time.Millisecond)
	}
	m, err := startMeter(b)
	if err != nil {
		return nil, err
	}
	took, okN, err := once()
	_, bcpu, _, _ := m.stop()
	res["seconds"] = took.Seconds()
	res["connected"] = float64(okN)
	res["cpu_s"] = bcpu.Seconds()
	if okN == 0 {
		return nil, err
	}
	if err != nil { // partial: say why the others failed
		fmt.Printf("  storm on %s: %d of %d failed, first: %v\n", b.name, n-okN, n, firstLine(err))
	}
	return res, nil
}

func firstLine(err error) string {
	s, _, _ := strings.Cut(err.Error(), "\n")
	return s
}

// churn: on a fresh broker, rounds of n connects then close-all; the RSS
// with all n connected is taken each round (so growth from round to round
// shows), and once more after the last close.
func churn(s *setup, b *broker, rounds, n int) (result, error) {
	if err := b.restart(); err != nil {
		return nil, err
	}
	time.Sleep(time.Second)
	base, err := b.rss()
	if err != nil {
		return nil, err
	}
	r := result{"base_mib": float64(base) / (1 << 20)}
	perRound := make([]float64, 0, rounds)
	for round := range rounds {
		cs, err := connectAll(n, 16, func(i int) (*client, error) {
			return dial(b.addr, nil, fmt.Sprintf("%s-%d", s.cheap.name, i), s.cheap.name, s.cheap.pass, 600, connectTimeout)
		})
		if err != nil {
			return nil, fmt.Errorf("round %d: %w", round+1, err)
		}
		time.Sleep(500 * time.Millisecond)
		rss, err := b.rss()
		closeAll(cs)
		if err != nil {
			return nil, err
		}
		v := float64(rss-base) / (1 << 20) * 1000 / float64(n)
		perRound = append(perRound, v)
		r[fmt.Sprintf("r%d", round+1)] = v
		time.Sleep(500 * time.Millisecond) // the broker notices the closes
	}
	time.Sleep(time.Second)
	closed, err := b.rss()
	if err != nil {
		return nil, err
	}
	first, last := perRound[0], perRound[len(perRound)-1]
	r["first_mib_per_1k"] = first
	r["last_mib_per_1k"] = last
	r["last_over_first"] = last / first
	if len(perRound) > 1 {
		r["last_over_prev"] = last / perRound[len(perRound)-2]
	}
	r["closed_mib"] = float64(closed) / (1 << 20)
	return r, nil
}

// subsRSS: n connections on a fresh broker, each with k subscriptions of
// its own; RSS per 1000 connections.
func subsRSS(s *setup, b *broker, n, k int) (result, error) {
	if err := b.restart(); err != nil {
		return nil, err
	}
	time.Sleep(time.Second)
	before, err := b.rss()
	if err != nil {
		return nil, err
	}
	cs, err := connectAll(n, 16, func(i int) (*client, error) {
		c, err := dial(b.addr, nil, fmt.Sprintf("%s-s%d", s.cheap.name, i), s.cheap.name, s.cheap.pass, 600, connectTimeout)
		if err != nil {
			return nil, err
		}
		for f := range k {
			if err := c.subscribe(fmt.Sprintf("%s/dev%d/f%d/+", s.cheap.name, i, f), 1); err != nil {
				c.close()
				return nil, err
			}
		}
		return c, nil
	})
	if err != nil {
		return nil, err
	}
	time.Sleep(time.Second)
	after, err := b.rss()
	closeAll(cs)
	if err != nil {
		return nil, err
	}
	return result{"mib_per_1k": float64(after-before) / (1 << 20) * 1000 / float64(n)}, nil
}
