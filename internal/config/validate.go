package config

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// finish completes defaults and checks the configuration as a whole.
func (p *parser) finish() (*Config, error) {
	c := p.cfg
	p.applyEnv()
	switch {
	case len(c.Listeners) == 0 && !p.implicitUsed:
		// mosquitto's local-only mode: loopback only, anonymous allowed
		// unless the file says otherwise.
		c.LocalOnly = true
		l := p.implicit
		l.Bind = defaultLocal
		c.Listeners = append(c.Listeners, l)
		if !l.Security.allowAnonymousSet {
			l.Security.AllowAnonymous = true
		}
	case p.implicitUsed:
		c.Listeners = append([]*Listener{p.implicit}, c.Listeners...)
	}
	seen := map[string]Pos{}
	for _, l := range c.Listeners {
		l.ID = listenerID(l)
		if prev, dup := seen[l.ID]; dup {
			p.errorf(l.Pos, "listener %s is already defined at %s", l.ID, prev)
		}
		seen[l.ID] = l.Pos
		p.checkListener(l)
	}
	p.checkPersistence()
	p.checkQuotas()
	p.checkACME()
	p.checkCluster()
	p.warnings()
	if len(p.errs) > 0 {
		return nil, errors.Join(p.errs...)
	}
	return c, nil
}

// applyEnv merges the variables of the certbot image users migrate from;
// settings in the file win.
func (p *parser) applyEnv() {
	a := &p.cfg.ACME
	if len(a.Domains) == 0 {
		for _, d := range splitList(p.env("DOMAIN")) {
			if !validDomain(d) {
				p.errs = append(p.errs, fmt.Errorf("environment DOMAIN: %q is not a DNS name: %w", d, ErrInvalid))
				continue
			}
			a.Domains = append(a.Domains, d)
		}
	}
	if a.Email == "" {
		a.Email = strings.TrimSpace(p.env("EMAIL"))
	}
	if !a.stagingSet && p.env("DRYRUN") != "" {
		a.Staging = true
	}
}

func listenerID(l *Listener) string {
	proto := "mqtt"
	if l.Protocol == "websockets" {
		proto = "ws"
	}
	if l.TLS.Enabled() {
		proto += "s"
	}
	if l.UnixPath != "" {
		return proto + ":" + l.UnixPath
	}
	host := l.Bind
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	return proto + ":" + host + ":" + strconv.Itoa(l.Port)
}

func (p *parser) checkListener(l *Listener) {
	t := &l.TLS
	switch {
	case t.CertFile != "" && t.KeyFile == "":
		p.errorf(t.certPos, "certfile needs a keyfile on the same listener")
	case t.KeyFile != "" && t.CertFile == "":
		p.errorf(t.keyPos, "keyfile needs a certfile on the same listener")
	}
	if t.ACME && t.CertFile != "" {
		p.errorf(t.acPos, "tls acme and certfile on one listener: choose one")
	}
	if t.RequireCertificate && t.CAFile == "" && t.CAPath == "" {
		p.errorf(l.Pos, "require_certificate needs cafile or capath on listener %s", l.ID)
	}
	if t.UseIdentityAsUsername || t.UseSubjectAsUsername {
		p.errorf(l.Pos, "use_identity_as_username/use_subject_as_username are not supported by Moat (listener %s): clients authenticate with password_file; require_certificate still checks their certificates", l.ID)
	}
	if !t.Enabled() && (t.CAFile != "" || t.CAPath != "" || t.RequireCertificate || t.Version != "") {
		p.errorf(l.Pos, "listener %s has TLS settings but no certfile/keyfile or tls acme", l.ID)
	}
	if l.UnixPath != "" && l.Protocol == "websockets" {
		p.errorf(l.Pos, "websockets on a Unix socket is not supported")
	}
	if l.Protocol != "websockets" && (l.WebSocketPath != "" || len(l.WebSocketOrigins) > 0) {
		p.errorf(l.Pos, "websockets_path/websockets_origin need protocol websockets on listener %s", l.ID)
	}
	if len(l.TrustedProxies) > 0 && l.Protocol != "websockets" {
		p.errorf(l.Pos, "trusted_proxy applies to websockets listeners only (the client address comes from the upgrade request), listener %s", l.ID)
	}
	if l.Bind != "" && l.UnixPath == "" {
		if _, err := netip.ParseAddr(l.Bind); err != nil && !validHost(l.Bind) {
			p.errorf(l.Pos, "listener address %q is not an IP address or host name", l.Bind)
		}
	}
}

func validHost(h string) bool {
	return h == "localhost" || validDomain(h)
}

func (p *parser) checkPersistence() {
	ps := &p.cfg.Persistence
	if !ps.Enabled {
		return
	}
	if ps.Location == "" {
		p.errorf(ps.Pos, "persistence true needs persistence_location")
	}
	if ps.Encrypted() {
		if ps.CipherDir == "" {
			p.errorf(ps.Pos, "encrypted persistence needs persistence_cipher_dir (or persistence_encryption off)")
		}
		if ps.KeyFile == "" {
			p.errorf(ps.Pos, "encrypted persistence needs persistence_key_file (or persistence_encryption off)")
		}
		if ps.CipherDir != "" && ps.CipherDir == ps.Location {
			p.errorf(ps.Pos, "persistence_cipher_dir and persistence_location must differ")
		}
	}
}

// defaultQuotas are safe for an internet-facing broker and far above what
// home automation clients use.
func defaultQuotas() Quotas {
	return Quotas{
		MaxTopicLength:          4096,
		MaxTopicLevels:          200, // mosquitto's fixed topic hierarchy limit
		MaxClientIDLength:       256,
		MaxConnectSize:          64 << 10,
		MaxSubscriptions:        1000,
		MaxSessionsPerUser:      256,
		MaxRetainedPerUser:      10000,
		MaxRetainedBytesPerUser: 64 << 20,
		MaxQueuedBytes:          64 << 20,
		MaxQueuedPerUser:        100000,
	}
}

// checkQuotas keeps every store key (client id, length prefix, filter)
// within the store's key limit, so no client can make a write fail.
func (p *parser) checkQuotas() {
	q := p.cfg.Quotas
	if q.MaxClientIDLength+3+q.MaxTopicLength > storeMaxKey {
		p.errs = append(p.errs, fmt.Errorf("max_client_id_length (%d) plus max_topic_length (%d) must stay below %d bytes, the store's key limit: %w",
			q.MaxClientIDLength, q.MaxTopicLength, storeMaxKey-3, ErrInvalid))
	}
}

func (p *parser) checkACME() {
	var acmeListeners []*Listener
	for _, l := range p.cfg.Listeners {
		if l.TLS.ACME {
			acmeListeners = append(acmeListeners, l)
		}
	}
	if len(acmeListeners) > 0 && len(p.cfg.ACME.Domains) == 0 {
		p.errorf(acmeListeners[0].TLS.acPos, "tls acme needs acme_domain (or the DOMAIN environment variable)")
	}
}

// UsesACME reports whether any listener serves the ACME certificate.
func (c *Config) UsesACME() bool {
	for _, l := range c.Listeners {
		if l.TLS.ACME {
			return true
		}
	}
	return false
}

// IsLoopback reports whether the listener is reachable from this host only.
func (l *Listener) IsLoopback() bool {
	if l.UnixPath != "" || l.Bind == "localhost" {
		return true
	}
	a, err := netip.ParseAddr(l.Bind)
	return err == nil && a.IsLoopback()
}

func (p *parser) warnings() {
	c := p.cfg
	for _, l := range c.Listeners {
		if l.IsLoopback() {
			continue
		}
		if l.Security.PasswordFile != "" && !l.TLS.Enabled() && len(l.TrustedProxies) == 0 {
			c.Warnings = append(c.Warnings, fmt.Sprintf("%s: listener %s sends passwords in clear text on a non-loopback address; use TLS or bind it to 127.0.0.1", l.Pos, l.ID))
		}
		if l.Security.AllowAnonymous {
			c.Warnings = append(c.Warnings, fmt.Sprintf("%s: listener %s allows anonymous clients on a non-loopback address", l.Pos, l.ID))
		}
	}
	if c.CheckRetainSource {
		c.Warnings = append(c.Warnings, "check_retain_source true is accepted but not enforced: retained messages are delivered by the reader's ACL alone")
	}
	if c.Persistence.Enabled && !c.Persistence.Encrypted() {
		c.Warnings = append(c.Warnings, fmt.Sprintf("%s: persistence_encryption off: retained messages and sessions are stored in plain text", c.Persistence.Pos))
	}
}

// Divergences lists where Moat knowingly behaves differently from
// mosquitto 2.0 under this configuration.
func (c *Config) Divergences() []string {
	d := []string{
		"password_file: a malformed, plaintext or duplicate entry is an error (mosquitto drops the user silently)",
		"reload: a broken password_file or acl_file keeps the previous one in force (mosquitto 2.0 runs without any ACL)",
		"CONNECT: a Will whose topic the client may not write is refused; a client id in use by another username is refused",
		"CONNECT: repeated authentication failures are answered with a temporary ban (3.1.1 code 3, MQTT 5 0x9F)",
		"relative paths in the configuration are relative to the file that names them",
		fmt.Sprintf("max_packet_size defaults to %d bytes (mosquitto: unlimited); keepalive 0 is capped at max_keepalive", c.Limits.MaxPacketSize),
		"MQTT 3.1.1 publish denied by the ACL: acknowledged and dropped (as mosquitto), never a disconnect",
		fmt.Sprintf("limits: topics and filters up to %d bytes and %d levels, client ids up to %d bytes, CONNECTs up to %d bytes, %d sessions per user, persistent sessions expire after %s unused (mosquitto: never)",
			c.Quotas.MaxTopicLength, c.Quotas.MaxTopicLevels, c.Quotas.MaxClientIDLength, c.Quotas.MaxConnectSize, c.Quotas.MaxSessionsPerUser, c.PersistentClientExpiration),
	}
	if c.StrictSubscribe {
		d = append(d, "strict_subscribe true: a subscription filter not covered by a read rule is refused (3.1.1 0x80, MQTT 5 0x87); mosquitto grants it and filters each message")
	}
	for _, l := range c.Listeners {
		if l.TLS.Enabled() {
			d = append(d, "TLS: 1.2 minimum, TLS 1.2 suites ECDHE with AEAD only (mosquitto also offers CBC suites)")
			break
		}
	}
	if c.Persistence.Enabled {
		d = append(d, "persistence: every retained message is saved before its acknowledgement; autosave_interval and autosave_on_changes are accepted and ignored")
	}
	return d
}
