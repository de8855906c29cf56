package config

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// ---- Cluster: several Moat nodes sharing one MQTT namespace through a
// NATS JetStream cluster. Off unless cluster_nats is set; every other
// cluster_* setting needs it. Changing any of them needs a restart.

// Cluster configures the NATS backplane.
type Cluster struct {
	// NATS lists the NATS servers (cluster_nats); empty means off.
	NATS []string
	Pos  Pos
	// Credentials is a NATS credentials file (cluster_nats_credentials).
	Credentials string
	// CAFile verifies the NATS servers; CertFile/KeyFile is Moat's client
	// certificate for them.
	CAFile, CertFile, KeyFile string
	// Name is the cluster's name (cluster_name, default "moat"): nodes
	// with the same name share one namespace.
	Name string
	// NodeName names this node (cluster_node_name; default: the host
	// name). Unique in the cluster.
	NodeName string
	// Replicas is the JetStream replication of Moat's stream and retained
	// bucket (cluster_replicas, default 3).
	Replicas int
	set      []Pos // positions of cluster_* settings other than cluster_nats
}

// Enabled reports whether the node joins a cluster.
func (c Cluster) Enabled() bool { return len(c.NATS) > 0 }

func clusterDirectives() map[string]handler {
	other := func(set func(p *parser, pos Pos, v string)) handler {
		return func(p *parser, pos Pos, v string) {
			p.cfg.Cluster.set = append(p.cfg.Cluster.set, pos)
			set(p, pos, v)
		}
	}
	return map[string]handler{
		"cluster_nats": func(p *parser, pos Pos, v string) {
			c := &p.cfg.Cluster
			c.Pos = pos
			c.NATS = nil
			for _, u := range splitList(v) {
				if err := checkNATSURL(u); err != nil {
					p.errorf(pos, "cluster_nats: %v", err)
					continue
				}
				c.NATS = append(c.NATS, u)
			}
			if len(c.NATS) == 0 {
				p.errorf(pos, "cluster_nats needs at least one nats:// or tls:// URL")
			}
		},
		"cluster_nats_credentials": other(func(p *parser, pos Pos, v string) {
			p.cfg.Cluster.Credentials = p.resolve(pos, p.path(pos, "cluster_nats_credentials", v))
		}),
		"cluster_nats_cafile": other(func(p *parser, pos Pos, v string) {
			p.cfg.Cluster.CAFile = p.resolve(pos, p.path(pos, "cluster_nats_cafile", v))
		}),
		"cluster_nats_certfile": other(func(p *parser, pos Pos, v string) {
			p.cfg.Cluster.CertFile = p.resolve(pos, p.path(pos, "cluster_nats_certfile", v))
		}),
		"cluster_nats_keyfile": other(func(p *parser, pos Pos, v string) {
			p.cfg.Cluster.KeyFile = p.resolve(pos, p.path(pos, "cluster_nats_keyfile", v))
		}),
		"cluster_name": other(func(p *parser, pos Pos, v string) {
			if !validClusterName(v, false) {
				p.errorf(pos, "cluster_name must be 1 to 64 letters, digits, '-' or '_'")
				return
			}
			p.cfg.Cluster.Name = v
		}),
		"cluster_node_name": other(func(p *parser, pos Pos, v string) {
			if !validClusterName(v, true) {
				p.errorf(pos, "cluster_node_name must be 1 to 64 letters, digits, '.', '-' or '_'")
				return
			}
			p.cfg.Cluster.NodeName = v
		}),
		"cluster_replicas": other(func(p *parser, pos Pos, v string) {
			p.intRange(pos, "cluster_replicas", v, 1, 5, &p.cfg.Cluster.Replicas)
		}),
	}
}

// checkNATSURL accepts nats:// and tls:// URLs with a host and a port and
// no credentials (those belong in cluster_nats_credentials, not in a
// line that is logged).
func checkNATSURL(s string) error {
	u, err := url.Parse(s)
	if err != nil { // not wrapped: the URL may hold a secret
		return errors.New("not a URL")
	}
	if u.Scheme != "nats" && u.Scheme != "tls" {
		return errors.New("URL scheme must be nats or tls")
	}
	if u.User != nil {
		return errors.New("credentials in the URL are refused; use cluster_nats_credentials")
	}
	if u.Hostname() == "" || u.Port() == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" {
		return errors.New("URL must be nats://HOST:PORT or tls://HOST:PORT")
	}
	return nil
}

func validClusterName(s string, dots bool) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, c := range s {
		ok := 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || dots && c == '.'
		if !ok {
			return false
		}
	}
	return true
}

// checkCluster completes the defaults and refuses settings that would do
// nothing.
func (p *parser) checkCluster() {
	c := &p.cfg.Cluster
	if !c.Enabled() {
		for _, pos := range c.set {
			p.errorf(pos, "cluster settings need cluster_nats")
		}
		return
	}
	if c.Name == "" {
		c.Name = "moat"
	}
	if c.Replicas == 0 {
		c.Replicas = 3
	}
	if (c.CertFile == "") != (c.KeyFile == "") {
		p.errorf(c.Pos, "cluster_nats_certfile and cluster_nats_keyfile go together")
	}
	for _, u := range c.NATS {
		if strings.HasPrefix(u, "tls://") && c.CAFile == "" {
			p.cfg.Warnings = append(p.cfg.Warnings, fmt.Sprintf("%s: cluster_nats tls:// without cluster_nats_cafile verifies the NATS servers with the system's CAs", c.Pos))
			break
		}
	}
}
