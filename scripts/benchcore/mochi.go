package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
)

// allowAll lets every client connect and use every topic.
type allowAll struct{ mqtt.HookBase }

func (allowAll) ID() string { return "allow-all" }
func (allowAll) Provides(b byte) bool {
	return b == mqtt.OnConnectAuthenticate || b == mqtt.OnACLCheck
}
func (allowAll) OnConnectAuthenticate(*mqtt.Client, packets.Packet) bool { return true }
func (allowAll) OnACLCheck(*mqtt.Client, string, bool) bool              { return true }

// serveMochi runs a plain mochi broker, as mochi's own examples do:
// default capabilities and buffers, mochi's TCP listeners, every client
// allowed. It is the third broker of the comparison (benchcore
// -serve-mochi ...), started as a process like the others so that its RSS
// and CPU are measured the same way.
func serveMochi(args []string) error {
	fs := flag.NewFlagSet("serve-mochi", flag.ContinueOnError)
	addr := fs.String("addr", "", "plain MQTT address")
	tlsAddr := fs.String("tls-addr", "", "MQTT over TLS address")
	cert := fs.String("cert", "", "certificate file")
	key := fs.String("key", "", "key file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	kp, err := tls.LoadX509KeyPair(*cert, *key)
	if err != nil {
		return fmt.Errorf("mochi: %w", err)
	}
	srv := mqtt.New(&mqtt.Options{
		Capabilities: mqtt.NewDefaultServerCapabilities(),
		Logger:       slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err := srv.AddHook(new(allowAll), nil); err != nil {
		return err
	}
	if err := srv.AddListener(listeners.NewTCP(listeners.Config{ID: "tcp", Address: *addr})); err != nil {
		return err
	}
	tc := &tls.Config{Certificates: []tls.Certificate{kp}, MinVersion: tls.VersionTLS12}
	if err := srv.AddListener(listeners.NewTCP(listeners.Config{ID: "tls", Address: *tlsAddr, TLSConfig: tc})); err != nil {
		return err
	}
	if err := srv.Serve(); err != nil {
		return err
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	<-sigs
	return srv.Close()
}
