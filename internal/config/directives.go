package config

import (
	"fmt"
	"maps"
	"math"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// handler applies one directive's value.
type handler func(p *parser, pos Pos, v string)

// directives maps every accepted directive to its handler. A directive
// missing here is unknown (an error), or listed in unsupported.
func directives() map[string]handler {
	m := baseDirectives()
	maps.Copy(m, clusterDirectives())
	return m
}

func baseDirectives() map[string]handler {
	return map[string]handler{
		// Listeners.
		"listener":     (*parser).listener,
		"port":         (*parser).port,
		"bind_address": (*parser).bindAddress,
		"socket_domain": func(p *parser, pos Pos, v string) {
			if v != "ipv4" && v != "ipv6" {
				p.errorf(pos, "socket_domain must be ipv4 or ipv6")
				return
			}
			p.scoped().SocketDomain = v
		},
		"protocol": func(p *parser, pos Pos, v string) {
			if v != "mqtt" && v != "websockets" {
				p.errorf(pos, "protocol must be mqtt or websockets")
				return
			}
			p.scoped().Protocol = v
		},
		"mount_point": func(p *parser, pos Pos, v string) {
			// Accepting it without effect would show the listener's clients
			// the whole topic tree instead of their prefix.
			p.errorf(pos, "mount_point is not supported by Moat: its clients would see every topic, not only those under the prefix; give them a topic prefix in acl_file instead (e.g. pattern readwrite tenant/%%u/#)")
		},
		"max_connections": func(p *parser, pos Pos, v string) {
			p.intRange(pos, "max_connections", v, -1, math.MaxInt32, &p.scoped().MaxConnections)
		},
		"http_dir": func(p *parser, pos Pos, v string) {
			p.errorf(pos, "http_dir is not supported: Moat serves no files over HTTP")
		},
		"websockets_log_level": func(p *parser, pos Pos, v string) {
			p.ignored(pos, "websockets_log_level", "WebSocket events are logged with log_type websockets and the other log settings")
		},
		"websockets_headers_size": func(p *parser, pos Pos, v string) {
			p.errorf(pos, "websockets_headers_size is not supported by Moat: WebSocket upgrade requests are limited to 16 KiB of headers; remove the line")
		},
		"use_username_as_clientid": func(p *parser, pos Pos, v string) { p.boolean(pos, v, &p.cfg.UseUsernameAsClientID) },

		// TLS (listener-scoped).
		"certfile": func(p *parser, pos Pos, v string) {
			l := p.scoped()
			l.TLS.CertFile, l.TLS.certPos = p.resolve(pos, v), pos
		},
		"keyfile": func(p *parser, pos Pos, v string) {
			l := p.scoped()
			l.TLS.KeyFile, l.TLS.keyPos = p.resolve(pos, v), pos
		},
		"cafile": func(p *parser, pos Pos, v string) { p.scoped().TLS.CAFile = p.resolve(pos, v) },
		"capath": func(p *parser, pos Pos, v string) { p.scoped().TLS.CAPath = p.resolve(pos, v) },
		"crlfile": func(p *parser, pos Pos, v string) {
			// Ignoring it would accept revoked client certificates.
			p.errorf(pos, "crlfile is not supported by Moat: revoke a client certificate by removing its CA from cafile/capath")
		},
		"tls_version": func(p *parser, pos Pos, v string) {
			switch v {
			case "tlsv1.2", "tlsv1.3":
				p.scoped().TLS.Version = v
			case "tlsv1", "tlsv1.1":
				p.errorf(pos, "tls_version %s: Moat accepts TLS 1.2 or newer only", v)
			default:
				p.errorf(pos, "tls_version must be tlsv1.2 or tlsv1.3")
			}
		},
		"ciphers": func(p *parser, pos Pos, v string) {
			p.errorf(pos, "ciphers is not supported by Moat: its TLS 1.2 suites are fixed to ECDHE key exchange with AES-GCM or ChaCha20-Poly1305; remove the line")
		},
		"ciphers_tls1.3": func(p *parser, pos Pos, v string) {
			p.errorf(pos, "ciphers_tls1.3 is not supported by Moat: TLS 1.3 suites are fixed (all AEAD); remove the line")
		},
		"require_certificate":      func(p *parser, pos Pos, v string) { p.boolean(pos, v, &p.scoped().TLS.RequireCertificate) },
		"use_identity_as_username": func(p *parser, pos Pos, v string) { p.boolean(pos, v, &p.scoped().TLS.UseIdentityAsUsername) },
		"use_subject_as_username":  func(p *parser, pos Pos, v string) { p.boolean(pos, v, &p.scoped().TLS.UseSubjectAsUsername) },
		"dhparamfile": func(p *parser, pos Pos, v string) {
			p.ignored(pos, "dhparamfile", "only DHE suites use it and Moat offers none")
		},
		"tls": func(p *parser, pos Pos, v string) {
			if v != "acme" {
				p.errorf(pos, "tls: the only value is acme")
				return
			}
			l := p.scoped()
			l.TLS.ACME, l.TLS.acPos = true, pos
		},

		// Moat's listener-scoped hardening.
		"connect_timeout": func(p *parser, pos Pos, v string) {
			p.seconds(pos, "connect_timeout", v, 1, 3600, &p.scoped().ConnectTimeout)
		},
		"max_connections_per_ip": func(p *parser, pos Pos, v string) {
			p.intRange(pos, "max_connections_per_ip", v, 0, math.MaxInt32, &p.scoped().MaxConnectionsPerIP)
		},
		"max_connection_rate_per_ip": func(p *parser, pos Pos, v string) {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil || f < 0 || f > 1e6 {
				p.errorf(pos, "max_connection_rate_per_ip must be a number of connections per second (0 = off)")
				return
			}
			p.scoped().ConnectRatePerIP = f
		},
		"trusted_proxy": func(p *parser, pos Pos, v string) {
			pf, err := parsePrefix(v)
			if err != nil {
				p.errorf(pos, "trusted_proxy: %v", err)
				return
			}
			l := p.scoped()
			l.TrustedProxies = append(l.TrustedProxies, pf)
		},
		"websockets_path": func(p *parser, pos Pos, v string) {
			if !strings.HasPrefix(v, "/") || strings.ContainsAny(v, " ?#") {
				p.errorf(pos, "websockets_path must be an absolute URL path such as /mqtt")
				return
			}
			p.scoped().WebSocketPath = v
		},
		"websockets_origin": func(p *parser, pos Pos, v string) {
			if !strings.HasPrefix(v, "http://") && !strings.HasPrefix(v, "https://") || strings.ContainsAny(v, " ") {
				p.errorf(pos, "websockets_origin must be scheme://host[:port], e.g. https://dash.example.com")
				return
			}
			l := p.scoped()
			l.WebSocketOrigins = append(l.WebSocketOrigins, strings.TrimRight(v, "/"))
		},

		// Authentication and authorisation.
		"per_listener_settings": (*parser).perListener,
		"allow_anonymous": func(p *parser, pos Pos, v string) {
			s := p.security()
			if p.boolean(pos, v, &s.AllowAnonymous) {
				s.allowAnonymousSet = true
			}
		},
		"password_file": func(p *parser, pos Pos, v string) {
			s := p.security()
			s.PasswordFile, s.PasswordFilePos = p.resolve(pos, p.path(pos, "password_file", v)), pos
		},
		"acl_file": func(p *parser, pos Pos, v string) {
			s := p.security()
			s.ACLFile, s.ACLFilePos = p.resolve(pos, p.path(pos, "acl_file", v)), pos
		},
		"auto_id_prefix": func(p *parser, pos Pos, v string) {
			p.errorf(pos, "auto_id_prefix is not supported by Moat: clients that send no client id get an id Moat generates; ACL %%c patterns should not rely on a prefix")
		},
		"strict_subscribe":    func(p *parser, pos Pos, v string) { p.boolean(pos, v, &p.cfg.StrictSubscribe) },
		"check_retain_source": func(p *parser, pos Pos, v string) { p.boolean(pos, v, &p.cfg.CheckRetainSource) },

		// Brute-force bans.
		"ban_threshold": func(p *parser, pos Pos, v string) {
			p.intRange(pos, "ban_threshold", v, 0, 1000, &p.cfg.Abuse.BanThreshold)
		},
		"ban_time_max": func(p *parser, pos Pos, v string) {
			p.seconds(pos, "ban_time_max", v, 1, 7*24*3600, &p.cfg.Abuse.BanMax)
		},
		"ban_ipv4_prefix": func(p *parser, pos Pos, v string) {
			p.intRange(pos, "ban_ipv4_prefix", v, 8, 32, &p.cfg.Abuse.BanIPv4Prefix)
		},
		"ban_ipv6_prefix": func(p *parser, pos Pos, v string) {
			p.intRange(pos, "ban_ipv6_prefix", v, 16, 128, &p.cfg.Abuse.BanIPv6Prefix)
		},

		// Limits.
		"max_packet_size": func(p *parser, pos Pos, v string) {
			var n int
			if p.intRange(pos, "max_packet_size", v, 20, 268435455, &n) {
				p.cfg.Limits.MaxPacketSize = uint32(n)
			}
		},
		"message_size_limit": func(p *parser, pos Pos, v string) {
			var n int
			if p.intRange(pos, "message_size_limit", v, 0, 268435455, &n) {
				p.cfg.Limits.MessageSizeLimit = uint32(n)
			}
		},
		"max_keepalive": func(p *parser, pos Pos, v string) {
			var n int
			if p.intRange(pos, "max_keepalive", v, 10, 65535, &n) {
				p.cfg.Limits.MaxKeepalive = uint16(n)
			}
		},
		"max_inflight_messages": func(p *parser, pos Pos, v string) {
			p.intRange(pos, "max_inflight_messages", v, 0, 65535, &p.cfg.Limits.MaxInflightMessages)
		},
		"max_queued_messages": func(p *parser, pos Pos, v string) {
			p.intRange(pos, "max_queued_messages", v, 0, math.MaxInt32, &p.cfg.Limits.MaxQueuedMessages)
		},
		"max_qos": func(p *parser, pos Pos, v string) {
			var n int
			if p.intRange(pos, "max_qos", v, 0, 2, &n) {
				p.cfg.Limits.MaxQoS = byte(n)
			}
		},
		"retain_available": func(p *parser, pos Pos, v string) { p.boolean(pos, v, &p.cfg.Limits.RetainAvailable) },
		"persistent_client_expiration": func(p *parser, pos Pos, v string) {
			d, err := parseExpiration(v)
			if err != nil {
				p.errorf(pos, "persistent_client_expiration: %v", err)
				return
			}
			p.cfg.PersistentClientExpiration = d
		},
		"sys_interval": func(p *parser, pos Pos, v string) {
			var n int
			if p.intRange(pos, "sys_interval", v, 0, 65535, &n) {
				p.cfg.SysInterval = time.Duration(n) * time.Second
			}
		},
		"upgrade_outgoing_qos": func(p *parser, pos Pos, v string) { p.unsupportedBool(pos, "upgrade_outgoing_qos", v) },
		"set_tcp_nodelay": func(p *parser, pos Pos, v string) {
			var b bool
			if p.boolean(pos, v, &b) {
				p.ignored(pos, "set_tcp_nodelay", "Moat's TCP connections always have TCP_NODELAY set (Go's default)")
			}
		},
		"max_inflight_bytes":  func(p *parser, pos Pos, v string) { p.zeroOnly(pos, "max_inflight_bytes", v) },
		"queue_qos0_messages": func(p *parser, pos Pos, v string) { p.unsupportedBool(pos, "queue_qos0_messages", v) },
		"allow_zero_length_clientid": func(p *parser, pos Pos, v string) {
			var b bool
			if p.boolean(pos, v, &b) && !b {
				p.errorf(pos, "allow_zero_length_clientid false is not supported: Moat assigns ids to clients that send none")
			}
		},

		// Quotas: per-client and per-user resource limits.
		"max_topic_length": func(p *parser, pos Pos, v string) {
			p.intRange(pos, "max_topic_length", v, 1, storeMaxKey-512, &p.cfg.Quotas.MaxTopicLength)
		},
		"max_topic_levels": func(p *parser, pos Pos, v string) {
			p.intRange(pos, "max_topic_levels", v, 1, 65535, &p.cfg.Quotas.MaxTopicLevels)
		},
		"max_client_id_length": func(p *parser, pos Pos, v string) {
			// MQTT requires servers to accept 1-23 characters [MQTT-3.1.3-5].
			p.intRange(pos, "max_client_id_length", v, 23, storeMaxKey-512, &p.cfg.Quotas.MaxClientIDLength)
		},
		"max_connect_size": func(p *parser, pos Pos, v string) {
			p.intRange(pos, "max_connect_size", v, 0, 268435455, &p.cfg.Quotas.MaxConnectSize)
		},
		"max_subscriptions_per_client": func(p *parser, pos Pos, v string) {
			p.intRange(pos, "max_subscriptions_per_client", v, 0, math.MaxInt32, &p.cfg.Quotas.MaxSubscriptions)
		},
		"max_sessions_per_user": func(p *parser, pos Pos, v string) {
			p.intRange(pos, "max_sessions_per_user", v, 0, math.MaxInt32, &p.cfg.Quotas.MaxSessionsPerUser)
		},
		"max_retained_per_user": func(p *parser, pos Pos, v string) {
			p.intRange(pos, "max_retained_per_user", v, 0, math.MaxInt32, &p.cfg.Quotas.MaxRetainedPerUser)
		},
		"max_retained_bytes_per_user": func(p *parser, pos Pos, v string) {
			var n int
			if p.intRange(pos, "max_retained_bytes_per_user", v, 0, math.MaxInt, &n) {
				p.cfg.Quotas.MaxRetainedBytesPerUser = int64(n)
			}
		},
		"max_queued_bytes": func(p *parser, pos Pos, v string) {
			var n int
			if p.intRange(pos, "max_queued_bytes", v, 0, math.MaxInt, &n) {
				p.cfg.Quotas.MaxQueuedBytes = int64(n)
			}
		},
		"max_queued_messages_per_user": func(p *parser, pos Pos, v string) {
			p.intRange(pos, "max_queued_messages_per_user", v, 0, math.MaxInt32, &p.cfg.Quotas.MaxQueuedPerUser)
		},
		// Memory: memory_limit (mosquitto's name; bytes, 0 = no limit of
		// its own) bounds the Go runtime and admits new connections.
		"memory_limit": func(p *parser, pos Pos, v string) {
			if i := strings.Index(v, " #"); i >= 0 {
				v = strings.TrimSpace(v[:i])
			}
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n < 0 || (n > 0 && n < MinMemoryLimit) {
				p.errorf(pos, "memory_limit must be 0 (the container's limit) or a byte count of at least %d", MinMemoryLimit)
				return
			}
			p.cfg.Memory = Memory{Limit: n, Pos: pos}
		},

		// Persistence.
		"persistence": func(p *parser, pos Pos, v string) {
			p.boolean(pos, v, &p.cfg.Persistence.Enabled)
			p.cfg.Persistence.Pos = pos
		},
		"persistence_location": func(p *parser, pos Pos, v string) {
			p.cfg.Persistence.Location = p.resolve(pos, p.path(pos, "persistence_location", v))
		},
		"persistence_file": func(p *parser, pos Pos, v string) {
			if v == "" || strings.ContainsAny(v, "/\x00") || v == "." || v == ".." {
				p.errorf(pos, "persistence_file must be a plain file name")
				return
			}
			p.cfg.Persistence.File = v
		},
		"autosave_interval": func(p *parser, pos Pos, v string) {
			if p.intRange(pos, "autosave_interval", v, 0, math.MaxInt32, &p.cfg.Persistence.AutosaveInterval) {
				p.ignored(pos, "autosave_interval", "Moat saves every retained message and session change before acknowledging it")
			}
		},
		"autosave_on_changes": func(p *parser, pos Pos, v string) {
			if p.boolean(pos, v, &p.cfg.Persistence.AutosaveOnChanges) {
				p.ignored(pos, "autosave_on_changes", "Moat saves every retained message and session change before acknowledging it")
			}
		},
		"persistence_encryption": func(p *parser, pos Pos, v string) {
			if v != "gocryptfs" && v != "off" {
				p.errorf(pos, "persistence_encryption must be gocryptfs or off")
				return
			}
			p.cfg.Persistence.Encryption = v
		},
		"persistence_cipher_dir": func(p *parser, pos Pos, v string) {
			p.cfg.Persistence.CipherDir = p.resolve(pos, p.path(pos, "persistence_cipher_dir", v))
		},
		"persistence_key_file": func(p *parser, pos Pos, v string) {
			p.cfg.Persistence.KeyFile = p.resolve(pos, p.path(pos, "persistence_key_file", v))
		},
		"gocryptfs_path": func(p *parser, pos Pos, v string) {
			p.cfg.Persistence.GocryptfsPath = p.resolve(pos, p.path(pos, "gocryptfs_path", v))
		},

		// Logging.
		"log_dest": (*parser).logDest,
		"log_type": (*parser).logType,
		"log_facility": func(p *parser, pos Pos, v string) {
			var n int
			if p.intRange(pos, "log_facility", v, 0, 7, &n) {
				p.ignored(pos, "log_facility", "Moat does not log to syslog (log_dest syslog is refused)")
			}
		},
		"log_timestamp": func(p *parser, pos Pos, v string) {
			if p.boolean(pos, v, &p.cfg.Log.Timestamp) {
				p.ignored(pos, "log_timestamp", "every Moat log line carries an RFC 3339 time")
			}
		},
		"log_timestamp_format": func(p *parser, pos Pos, v string) {
			p.ignored(pos, "log_timestamp_format", "every Moat log line carries an RFC 3339 time")
		},
		"connection_messages": func(p *parser, pos Pos, v string) { p.boolean(pos, v, &p.cfg.Log.ConnectionMessages) },
		"log_format": func(p *parser, pos Pos, v string) {
			if v != "text" && v != "json" {
				p.errorf(pos, "log_format must be text or json")
				return
			}
			p.cfg.Log.Format = v
		},

		// Process.
		"user": func(p *parser, pos Pos, v string) {
			p.cfg.User = v
			p.ignored(pos, "user", "Moat never switches users; run it as the user it should be (uid 1883 in the image)")
		},
		"pid_file": func(p *parser, pos Pos, v string) {
			p.ignored(pos, "pid_file", "Moat writes no pid file; a service manager or container runtime tracks the process")
		},

		// Admin listener.
		"admin_listener": func(p *parser, pos Pos, v string) {
			p.cfg.Admin.Pos = pos
			if v == "off" {
				p.cfg.Admin.Listener = ""
				return
			}
			if _, err := netip.ParseAddrPort(v); err != nil {
				p.errorf(pos, "admin_listener must be ADDR:PORT (e.g. 127.0.0.1:7883) or off")
				return
			}
			p.cfg.Admin.Listener = v
		},
		"admin_cert_min_days": func(p *parser, pos Pos, v string) {
			p.intRange(pos, "admin_cert_min_days", v, 0, 365, &p.cfg.Admin.CertMinDays)
		},

		// ACME.
		"acme_domain": func(p *parser, pos Pos, v string) {
			for _, d := range splitList(v) {
				if !validDomain(d) {
					p.errorf(pos, "acme_domain %q is not a DNS name", d)
					continue
				}
				p.cfg.ACME.Domains = append(p.cfg.ACME.Domains, d)
			}
		},
		"acme_email": func(p *parser, pos Pos, v string) {
			if !strings.Contains(v, "@") || strings.ContainsAny(v, " ") {
				p.errorf(pos, "acme_email must be an e-mail address")
				return
			}
			p.cfg.ACME.Email = v
		},
		"acme_staging": func(p *parser, pos Pos, v string) {
			if p.boolean(pos, v, &p.cfg.ACME.Staging) {
				p.cfg.ACME.stagingSet = true
			}
		},
		"acme_directory": func(p *parser, pos Pos, v string) {
			if !strings.HasPrefix(v, "https://") {
				p.errorf(pos, "acme_directory must be an https:// URL")
				return
			}
			p.cfg.ACME.Directory = v
		},
		"acme_profile": func(p *parser, pos Pos, v string) { p.cfg.ACME.Profile = v },
		"acme_key_type": func(p *parser, pos Pos, v string) {
			switch v {
			case "ec256", "ec384", "rsa2048":
				p.cfg.ACME.KeyType = v
			default:
				p.errorf(pos, "acme_key_type must be ec256, ec384 or rsa2048")
			}
		},
		"acme_dns_resolvers": func(p *parser, pos Pos, v string) {
			for _, r := range splitList(v) {
				if _, err := netip.ParseAddrPort(r); err != nil {
					p.errorf(pos, "acme_dns_resolvers: %q is not HOST:PORT", r)
					continue
				}
				p.cfg.ACME.DNSResolvers = append(p.cfg.ACME.DNSResolvers, r)
			}
		},
		"acme_dns_propagation_check": func(p *parser, pos Pos, v string) { p.boolean(pos, v, &p.cfg.ACME.PropagationCheck) },
		"acme_state_dir": func(p *parser, pos Pos, v string) {
			p.cfg.ACME.StateDir = p.resolve(pos, p.path(pos, "acme_state_dir", v))
		},
		"cloudflare_credentials": func(p *parser, pos Pos, v string) {
			p.cfg.ACME.CloudflareCredentials = p.resolve(pos, p.path(pos, "cloudflare_credentials", v))
		},
	}
}

// unsupported lists mosquitto directives Moat refuses, with the reason.
func unsupported(key string) (string, bool) {
	switch {
	case key == "plugin" || key == "auth_plugin" || key == "global_plugin" ||
		strings.HasPrefix(key, "auth_opt_") || strings.HasPrefix(key, "plugin_opt_") || key == "auth_plugin_deny_special_chars":
		return "mosquitto plugins cannot run in Moat; use password_file and acl_file", true
	case strings.HasPrefix(key, "psk_") || key == "use_identity_as_username_psk":
		return "TLS-PSK is not supported; use certificates", true
	case key == "connection" || key == "address" || key == "addresses" || key == "topic" ||
		strings.HasPrefix(key, "bridge_") || strings.HasPrefix(key, "remote_") || strings.HasPrefix(key, "local_") ||
		key == "cleansession" || key == "notifications" || key == "notifications_local_only" || key == "notification_topic" ||
		key == "try_private" || key == "start_type" || key == "restart_timeout" || key == "round_robin" ||
		key == "keepalive_interval" || key == "idle_timeout" || key == "threshold":
		return "bridges are not supported", true
	case key == "clientid_prefixes":
		return "clientid_prefixes is not supported; use acl_file patterns", true
	}
	return "", false
}

func (p *parser) directive(pos Pos, key, value string) {
	if reason, ok := unsupported(key); ok {
		p.errorf(pos, "%s: not supported by Moat: %s", key, reason)
		return
	}
	h, ok := p.handlers[key]
	if !ok {
		p.errorf(pos, "unknown configuration variable %q", key)
		return
	}
	if value == "" && key != "include_dir" {
		p.errorf(pos, "%s needs a value", key)
		return
	}
	p.scopedUse = false
	h(p, pos, value)
	// A listener-scoped value belongs to the listener line it follows.
	scope := ""
	if p.scopedUse && p.cur != nil {
		scope = p.curLine
	}
	switch {
	case key == "listener":
		scope, p.curLine, p.globalSince = value, value, false
	case p.cur == nil:
	case p.scopedUse && p.globalSince:
		p.cfg.Warnings = append(p.cfg.Warnings, fmt.Sprintf("%s: %s applies to listener %s (%s) only, though broker-wide settings come between; write it right under the listener it is for, or before the first listener line for all", pos, key, p.curLine, p.cur.Pos))
	case !p.scopedUse:
		p.globalSince = true
	}
	p.cfg.Settings = append(p.cfg.Settings, Setting{Name: key, Value: value, Listener: scope, Pos: pos})
}

func (p *parser) listener(pos Pos, v string) {
	fields := strings.Fields(v)
	if len(fields) == 0 || len(fields) > 2 {
		p.errorf(pos, "listener needs a port and optionally an address: listener PORT [ADDRESS]")
		return
	}
	port, err := strconv.Atoi(fields[0])
	if err != nil || port < 0 || port > 65535 {
		p.errorf(pos, "listener port must be 0-65535")
		return
	}
	l := newListener(pos, port, "", p.cfg.Security)
	inheritScoped(l, p.implicit)
	if p.cfg.PerListenerSettings {
		l.Security = &Security{}
	}
	if len(fields) == 2 {
		// Port 0 with a path is a Unix socket (mosquitto); with an IP
		// address it picks a free port, for tests and socket probing.
		if _, err := netip.ParseAddr(fields[1]); port == 0 && err != nil {
			l.UnixPath = p.resolve(pos, fields[1])
		} else {
			l.Bind = fields[1]
		}
	} else if port == 0 {
		p.errorf(pos, "listener 0 needs a Unix socket path (or an IP address for a free port)")
		return
	}
	p.cfg.Listeners = append(p.cfg.Listeners, l)
	p.cur = l
}

// inheritScoped copies listener-scoped settings given before the first
// listener line, so they act as defaults for every listener.
func inheritScoped(l, from *Listener) {
	l.MaxConnections = from.MaxConnections
	l.MaxConnectionsPerIP = from.MaxConnectionsPerIP
	l.ConnectRatePerIP = from.ConnectRatePerIP
	l.ConnectTimeout = from.ConnectTimeout
	l.TrustedProxies = append([]netip.Prefix(nil), from.TrustedProxies...)
	l.WebSocketOrigins = append([]string(nil), from.WebSocketOrigins...)
	l.WebSocketPath = from.WebSocketPath
}

func (p *parser) port(pos Pos, v string) {
	var n int
	if p.intRange(pos, "port", v, 1, 65535, &n) {
		p.implicit.Port, p.implicit.Pos = n, pos
		p.implicitUsed = true
	}
}

func (p *parser) bindAddress(pos Pos, v string) {
	p.implicit.Bind = v
	if p.implicit.Pos.File == "" {
		p.implicit.Pos = pos
	}
	p.implicitUsed = true
}

func (p *parser) perListener(pos Pos, v string) {
	var b bool
	if !p.boolean(pos, v, &b) {
		return
	}
	if b && len(p.cfg.Listeners) > 0 {
		p.errorf(pos, "per_listener_settings must come before the first listener line")
		return
	}
	p.cfg.PerListenerSettings = b
	if b {
		p.implicit.Security = &Security{}
	}
}

func (p *parser) logDest(pos Pos, v string) {
	kind, rest, _ := strings.Cut(v, " ")
	d := LogDest{Kind: kind}
	switch kind {
	case "stdout", "stderr", "none", "syslog", "topic", "dlt":
	case "file":
		rest = strings.TrimSpace(rest)
		if rest == "" {
			p.errorf(pos, "log_dest file needs a path")
			return
		}
		d.Path = p.resolve(pos, rest)
	default:
		p.errorf(pos, "log_dest must be stdout, stderr, file PATH, syslog, topic, dlt or none")
		return
	}
	p.cfg.Log.Dests = append(p.cfg.Log.Dests, d)
}

func (p *parser) logType(pos Pos, v string) {
	switch v {
	case "debug", "error", "warning", "notice", "information", "subscribe", "unsubscribe", "websockets", "none", "all":
		p.cfg.Log.Types[v] = true
	default:
		p.errorf(pos, "log_type %q is not one of debug, error, warning, notice, information, subscribe, unsubscribe, websockets, none, all", v)
	}
}

// boolean accepts exactly true or false, as mosquitto does.
func (p *parser) boolean(pos Pos, v string, dst *bool) bool {
	switch v {
	case "true":
		*dst = true
	case "false":
		*dst = false
	default:
		p.errorf(pos, "value must be true or false")
		return false
	}
	return true
}

// intRange parses an integer; like mosquitto's atoi it ignores a trailing
// comment after the number.
func (p *parser) intRange(pos Pos, name, v string, lo, hi int, dst *int) bool {
	if i := strings.Index(v, " #"); i >= 0 {
		v = strings.TrimSpace(v[:i])
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		p.errorf(pos, "%s must be an integer from %d to %d", name, lo, hi)
		return false
	}
	*dst = n
	return true
}

func (p *parser) seconds(pos Pos, name, v string, lo, hi int, dst *time.Duration) {
	var n int
	if p.intRange(pos, name, v, lo, hi, &n) {
		*dst = time.Duration(n) * time.Second
	}
}

// path warns about a trailing comment, which mosquitto keeps as part of
// the path.
func (p *parser) path(pos Pos, name, v string) string {
	if strings.Contains(v, " #") {
		p.cfg.Warnings = append(p.cfg.Warnings, fmt.Sprintf("%s: %s value contains \" #\": comments are not allowed after values, it is part of the path", pos, name))
	}
	return v
}

// ignored accepts a mosquitto directive that has no effect in Moat and says
// why that is safe, so it is never ignored silently.
func (p *parser) ignored(pos Pos, name, why string) {
	p.cfg.Warnings = append(p.cfg.Warnings, fmt.Sprintf("%s: %s is accepted and ignored: %s", pos, name, why))
}

func (p *parser) unsupportedBool(pos Pos, name, v string) {
	var b bool
	if p.boolean(pos, v, &b) && b {
		p.errorf(pos, "%s true is not supported by Moat", name)
	}
}

func (p *parser) zeroOnly(pos Pos, name, v string) {
	var n int
	if p.intRange(pos, name, v, 0, math.MaxInt32, &n) && n != 0 {
		p.errorf(pos, "%s is not supported by Moat (only 0, no limit); use max_queued_messages and max_packet_size", name)
	}
}

func parsePrefix(v string) (netip.Prefix, error) {
	if strings.Contains(v, "/") {
		pf, err := netip.ParsePrefix(v)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%q is not an address or CIDR", v)
		}
		return pf.Masked(), nil
	}
	a, err := netip.ParseAddr(v)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not an address or CIDR", v)
	}
	return netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()), nil
}

// parseExpiration reads mosquitto's persistent_client_expiration: a number
// followed by h, d, w, m (months) or y.
func parseExpiration(v string) (time.Duration, error) {
	if len(v) < 2 {
		return 0, fmt.Errorf("want a number and a unit h, d, w, m or y, e.g. 2w")
	}
	n, err := strconv.Atoi(v[:len(v)-1])
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("want a positive number and a unit h, d, w, m or y")
	}
	unit := map[byte]time.Duration{'h': time.Hour, 'd': 24 * time.Hour, 'w': 7 * 24 * time.Hour, 'm': 30 * 24 * time.Hour, 'y': 365 * 24 * time.Hour}[v[len(v)-1]]
	if unit == 0 {
		return 0, fmt.Errorf("unit must be h, d, w, m or y")
	}
	if int64(n) > math.MaxInt64/int64(unit) {
		return 0, fmt.Errorf("too long")
	}
	return time.Duration(n) * unit, nil
}

func splitList(v string) []string {
	return strings.FieldsFunc(v, func(r rune) bool { return r == ',' || r == ' ' })
}

func validDomain(d string) bool {
	d = strings.TrimPrefix(d, "*.")
	if len(d) == 0 || len(d) > 253 || !strings.Contains(d, ".") {
		return false
	}
	for _, label := range strings.Split(d, ".") {
		if len(label) == 0 || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
				return false
			}
		}
	}
	return true
}
