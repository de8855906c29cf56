//go:build tools

// Package deps pins modules until the packages that use them land.
package deps

import (
	_ "github.com/cockroachdb/pebble"
	_ "github.com/compose-spec/compose-go/v2/loader"
	_ "github.com/eclipse/paho.golang/autopaho"
	_ "github.com/eclipse/paho.golang/paho"
	_ "github.com/eclipse/paho.mqtt.golang"
	_ "github.com/go-acme/lego/v4/certificate"
	_ "github.com/go-acme/lego/v4/challenge/dns01"
	_ "github.com/go-acme/lego/v4/lego"
	_ "github.com/go-acme/lego/v4/providers/dns/cloudflare"
	_ "github.com/go-acme/lego/v4/registration"
	_ "github.com/gorilla/websocket"
	_ "github.com/hanwen/go-fuse/v2/fs"
	_ "github.com/hanwen/go-fuse/v2/posixtest"
	_ "github.com/letsencrypt/pebble/v2/ca"
	_ "github.com/letsencrypt/pebble/v2/db"
	_ "github.com/letsencrypt/pebble/v2/va"
	_ "github.com/letsencrypt/pebble/v2/wfe"
	_ "github.com/miekg/dns"
	_ "github.com/mochi-mqtt/server/v2"
	_ "github.com/prometheus/client_golang/prometheus"
	_ "github.com/prometheus/client_golang/prometheus/promhttp"
	_ "go.etcd.io/bbolt"
	_ "golang.org/x/crypto/argon2"
	_ "golang.org/x/sys/unix"
	_ "golang.org/x/time/rate"
)
