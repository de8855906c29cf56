package config

import (
	"fmt"
	"slices"
	"strings"
)

// Change says what a changed directive needs from a running broker.
type Change int

const (
	// Live: a reload (SIGHUP or a file change) puts the new value in force.
	Live Change = iota + 1
	// Restart: a reload that changes it is refused and nothing is applied.
	Restart
)

// reloadDecisions holds the reload decision of every directive. A directive
// missing here fails the package's tests: each new setting must say whether
// a running broker can take it.
func reloadDecisions() map[string]Change {
	return map[string]Change{
		// Policy: password and ACL files are read again on every reload.
		"allow_anonymous": Live, "password_file": Live, "acl_file": Live,
		"strict_subscribe": Live, "use_username_as_clientid": Live,
		"max_keepalive": Live, "message_size_limit": Live,
		// Certificate files are read again; a changed path takes the new file.
		"certfile": Live, "keyfile": Live,
		"connection_messages": Live,
		// Accepted without effect, or warning only: nothing to apply.
		"check_retain_source": Live, "websockets_log_level": Live, "dhparamfile": Live,
		"set_tcp_nodelay": Live, "autosave_interval": Live, "autosave_on_changes": Live,
		"log_facility": Live, "log_timestamp": Live, "log_timestamp_format": Live,
		"user": Live, "pid_file": Live,

		// Listeners and their sockets, TLS and connection limits are built once.
		"listener": Restart, "port": Restart, "bind_address": Restart, "socket_domain": Restart,
		"protocol": Restart, "connect_timeout": Restart,
		// Connection limits apply to connections accepted after the reload.
		"max_connections": Live, "max_connections_per_ip": Live, "max_connection_rate_per_ip": Live,
		"trusted_proxy": Restart, "websockets_path": Restart, "websockets_origin": Restart,
		"cafile": Restart, "capath": Restart, "tls_version": Restart, "require_certificate": Restart,
		"tls": Restart, "per_listener_settings": Restart,
		// Ban thresholds live in the running auth hook.
		"ban_threshold": Restart, "ban_time_max": Restart, "ban_ipv4_prefix": Restart, "ban_ipv6_prefix": Restart,
		// Per-client and per-user resource limits live in a hook built at start.
		"max_client_id_length": Restart, "max_connect_size": Restart, "max_retained_bytes_per_user": Restart,
		"max_retained_per_user": Restart, "max_sessions_per_user": Restart, "max_subscriptions_per_client": Restart,
		"max_topic_length": Restart, "max_topic_levels": Restart,
		"max_queued_bytes": Restart, "max_queued_messages_per_user": Restart,
		// mochi's capabilities are fixed when the server is built.
		"max_packet_size": Restart, "max_inflight_messages": Restart, "max_queued_messages": Restart,
		"max_qos": Restart, "retain_available": Restart, "persistent_client_expiration": Restart,
		"sys_interval": Restart,
		// The store and its mount.
		"persistence": Restart, "persistence_location": Restart, "persistence_file": Restart,
		"persistence_encryption": Restart, "persistence_cipher_dir": Restart,
		"persistence_key_file": Restart, "gocryptfs_path": Restart,
		// The logging is rebuilt and swapped in (serve provides it).
		"log_dest": Live, "log_type": Live, "log_format": Live,
		"admin_listener": Restart, "admin_cert_min_days": Restart,
		// The ACME manager holds its account and options.
		"acme_domain": Restart, "acme_email": Restart, "acme_staging": Restart, "acme_directory": Restart,
		"acme_profile": Restart, "acme_key_type": Restart, "acme_dns_resolvers": Restart,
		"acme_dns_propagation_check": Restart, "acme_state_dir": Restart, "cloudflare_credentials": Restart,

		// The NATS connection and the node's identity in the cluster.
		"cluster_nats": Restart, "cluster_nats_credentials": Restart, "cluster_nats_cafile": Restart,
		"cluster_nats_certfile": Restart, "cluster_nats_keyfile": Restart, "cluster_name": Restart,
		"cluster_node_name": Restart, "cluster_replicas": Restart,

		// Refused at parse time in any value Moat accepts; listed so that
		// accepting one later forces a decision.
		"mount_point": Restart, "http_dir": Restart, "websockets_headers_size": Restart,
		"crlfile": Restart, "ciphers": Restart, "ciphers_tls1.3": Restart,
		"use_identity_as_username": Restart, "use_subject_as_username": Restart,
		"auto_id_prefix": Restart, "upgrade_outgoing_qos": Restart, "max_inflight_bytes": Restart,
		"queue_qos0_messages": Restart, "memory_limit": Restart,
		"allow_zero_length_clientid": Restart,
	}
}

// Directives lists every directive Moat accepts, sorted.
func Directives() []string {
	h := directives()
	out := make([]string, 0, len(h))
	for k := range h {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// ReloadDecision is the reload decision for a directive; false when the
// directive has none.
func ReloadDecision(name string) (Change, bool) {
	c, ok := reloadDecisions()[name]
	return c, ok
}

// Setting is one directive line as read, for reload decisions. Values are
// compared, never printed (they are paths and numbers, but keep it so).
type Setting struct {
	Name, Value string
	// Listener is the value of the listener line it follows, "" before any.
	Listener string
	Pos      Pos
}

// RestartRequired lists, as "DIRECTIVE (file:line)", every directive whose
// change from old to next a running broker cannot apply. Directives with no
// decision count as restart-only: never apply what was not decided.
func RestartRequired(old, next *Config) []string {
	decisions := reloadDecisions()
	byName := func(c *Config) map[string][]Setting {
		m := map[string][]Setting{}
		for _, s := range c.Settings {
			if decisions[s.Name] != Live {
				m[s.Name] = append(m[s.Name], s)
			}
		}
		return m
	}
	o, n := byName(old), byName(next)
	names := map[string]bool{}
	for k := range o {
		names[k] = true
	}
	for k := range n {
		names[k] = true
	}
	var out []string
	for _, name := range slices.Sorted(func(yield func(string) bool) {
		for k := range names {
			if !yield(k) {
				return
			}
		}
	}) {
		if pos, changed := firstChange(o[name], n[name]); changed {
			out = append(out, fmt.Sprintf("%s (%s)", name, pos))
		}
	}
	if old.LocalOnly != next.LocalOnly {
		out = append(out, "listener (local-only mode)")
	}
	// A listener that gains or loses TLS (certfile is otherwise live) is a
	// new listener.
	if slices.ContainsFunc(out, func(s string) bool { return strings.HasPrefix(s, "listener ") }) {
		return out
	}
	for i, l := range next.Listeners {
		if i >= len(old.Listeners) || old.Listeners[i].ID != l.ID {
			out = append(out, fmt.Sprintf("listener %s (%s)", l.ID, l.Pos))
		}
	}
	if len(out) == 0 {
		out = append(out, dropped(old, next)...)
	}
	return out
}

// dropped lists acl_file and password_file lines a reload would remove: a
// file cut short while it is written must not turn the ACL off, so running
// without them takes a restart (changing their paths stays live).
func dropped(old, next *Config) []string {
	var out []string
	seen := map[*Security]bool{}
	for i, l := range next.Listeners {
		o := old.Listeners[i].Security
		if seen[o] {
			continue
		}
		seen[o] = true
		if o.ACLFile != "" && l.Security.ACLFile == "" {
			out = append(out, fmt.Sprintf("acl_file removed (%s)", o.ACLFilePos))
		}
		if o.PasswordFile != "" && l.Security.PasswordFile == "" {
			out = append(out, fmt.Sprintf("password_file removed (%s)", o.PasswordFilePos))
		}
	}
	return out
}

// firstChange returns where two lists of one directive's lines first differ.
func firstChange(old, next []Setting) (Pos, bool) {
	for i := range max(len(old), len(next)) {
		switch {
		case i >= len(next):
			return old[i].Pos, true // removed: name where it was
		case i >= len(old):
			return next[i].Pos, true
		case old[i].Value != next[i].Value || old[i].Listener != next[i].Listener:
			return next[i].Pos, true
		}
	}
	return Pos{}, false
}
