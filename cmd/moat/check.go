package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/moat-mqtt/moat/internal/acl"
	"github.com/moat-mqtt/moat/internal/admin"
	"github.com/moat-mqtt/moat/internal/broker"
	"github.com/moat-mqtt/moat/internal/certs"
	"github.com/moat-mqtt/moat/internal/config"
	"github.com/moat-mqtt/moat/internal/passwd"
)

// printErr prints each joined error on its own line.
func printErr(io stdio, err error) {
	for _, line := range strings.Split(err.Error(), "\n") {
		fmt.Fprintf(io.err, "moat: %s\n", line)
	}
}

func runCheckConfig(args []string, io stdio) int {
	fs := newFlags("check-config", io)
	path := fs.String("c", "", "configuration file")
	if code, ok := parseFlags(fs, args, io); !ok {
		return code
	}
	if *path == "" {
		fmt.Fprintln(io.err, "usage: moat check-config -c FILE")
		return 2
	}
	cfg, warns, err := config.LoadAll(*path, os.Getenv)
	if err != nil {
		// Warnings too: every line to change, not only the broken ones.
		for _, w := range warns {
			fmt.Fprintf(io.err, "moat: warning: %s\n", w)
		}
		printErr(io, err)
		return 1
	}
	// The very checks serve makes before it opens anything.
	sums, err := broker.Check(cfg, os.Getenv)
	if err != nil {
		for _, w := range cfg.Warnings {
			fmt.Fprintf(io.err, "moat: warning: %s\n", w)
		}
		printErr(io, err)
		return 1
	}
	w := io.out
	fmt.Fprintf(w, "configuration: %s\n", strings.Join(cfg.Files, ", "))
	fmt.Fprintln(w, "listeners:")
	for _, l := range cfg.Listeners {
		tls := "plain"
		switch {
		case l.TLS.ACME:
			tls = "TLS (ACME certificate for " + strings.Join(cfg.ACME.Domains, ", ") + ")"
		case l.TLS.CertFile != "":
			tls = "TLS (" + l.TLS.CertFile + ")"
		}
		fmt.Fprintf(w, "  %-28s %-10s %s, connect timeout %s, max connections %s, per IP %s (%s)\n",
			l.ID, l.Protocol, tls, l.ConnectTimeout, limit(l.MaxConnections), limit(l.MaxConnectionsPerIP), l.Pos)
		if len(l.TrustedProxies) > 0 {
			fmt.Fprintf(w, "  %-28s trusted proxies %v\n", "", l.TrustedProxies)
		}
	}
	fmt.Fprintln(w, "authentication:")
	for _, s := range sums {
		fmt.Fprintf(w, "  listeners %s: anonymous %v", strings.Join(s.Listeners, ", "), s.AllowAnonymous)
		if s.PasswordFile != "" {
			fmt.Fprintf(w, ", %d users from %s", s.Users, s.PasswordFile)
		}
		if s.ACLFile != "" {
			a := s.ACL
			fmt.Fprintf(w, ", ACL %s: %d anonymous rules, %d users with %d rules, %d patterns", s.ACLFile, a.AnonymousRules, a.Users, a.UserRules, a.Patterns)
		} else {
			fmt.Fprint(w, ", no acl_file (every topic allowed but $ topics; $SYS readable)")
		}
		fmt.Fprintln(w)
		cfg.Warnings = append(cfg.Warnings, s.Warnings...)
	}
	fmt.Fprintf(w, "subscriptions: strict %v\n", cfg.StrictSubscribe)
	ps := cfg.Persistence
	switch {
	case !ps.Enabled:
		fmt.Fprintln(w, "persistence: off (retained messages and sessions are lost on restart)")
	case ps.Encrypted():
		fmt.Fprintf(w, "persistence: %s/%s inside gocryptfs (cipher directory %s, key file %s)\n", ps.Location, ps.File, ps.CipherDir, ps.KeyFile)
	default:
		fmt.Fprintf(w, "persistence: %s/%s, NOT encrypted\n", ps.Location, ps.File)
	}
	fmt.Fprintf(w, "limits: max_packet_size %d, message_size_limit %s, max_keepalive %d\n", cfg.Limits.MaxPacketSize, limit(int(cfg.Limits.MessageSizeLimit)), cfg.Limits.MaxKeepalive)
	if cfg.Admin.Listener != "" {
		fmt.Fprintf(w, "admin: http://%s (/healthz, /readyz, /metrics)\n", cfg.Admin.Listener)
	} else {
		fmt.Fprintln(w, "admin: off")
	}
	fmt.Fprintln(w, "divergences from mosquitto applied:")
	for _, d := range cfg.Divergences() {
		fmt.Fprintf(w, "  - %s\n", d)
	}
	warns = append(cfg.Warnings, broker.PolicyWarnings(cfg, sums)...)
	for _, wn := range warns {
		fmt.Fprintf(w, "warning: %s\n", wn)
	}
	fmt.Fprintln(w, "configuration OK")
	return 0
}

func limit(n int) string {
	if n <= 0 {
		return "unlimited"
	}
	return fmt.Sprint(n)
}

const aclUsage = `usage: moat acl explain -c FILE [-i CLIENTID] [-l LISTENER] USER read|write|subscribe TOPIC_OR_FILTER  (USER "" = anonymous)`

func isHelp(a string) bool { return a == "-h" || a == "-help" || a == "--help" || a == "help" }

func runACL(args []string, io stdio) int {
	if len(args) > 0 && isHelp(args[0]) {
		fmt.Fprintln(io.out, aclUsage)
		return 0
	}
	if len(args) == 0 || args[0] != "explain" {
		fmt.Fprintln(io.err, aclUsage)
		return 2
	}
	fs := newFlags("acl explain", io)
	path := fs.String("c", "", "configuration file")
	clientID := fs.String("i", "", "client id (for %c patterns)")
	listener := fs.String("l", "", "listener id (with per_listener_settings)")
	if code, ok := parseFlags(fs, args[1:], io); !ok {
		return code
	}
	rest := fs.Args()
	if *path == "" || len(rest) != 3 {
		fmt.Fprintln(io.err, aclUsage)
		return 2
	}
	var op acl.Op
	switch rest[1] {
	case "read":
		op = acl.OpRead
	case "write":
		op = acl.OpWrite
	case "subscribe":
		op = acl.OpSubscribe
	default:
		fmt.Fprintln(io.err, "moat: the operation must be read, write or subscribe")
		return 2
	}
	cfg, err := config.Load(*path, os.Getenv)
	if err != nil {
		printErr(io, err)
		return 1
	}
	l := cfg.Listeners[0]
	if *listener != "" {
		l = nil
		var ids []string
		for _, x := range cfg.Listeners {
			ids = append(ids, x.ID)
			if x.ID == *listener {
				l = x
			}
		}
		if l == nil {
			fmt.Fprintf(io.err, "moat: no listener %q in %s; listeners: %s\n", *listener, *path, strings.Join(ids, ", "))
			return 2
		}
	}
	c := &acl.Client{Username: rest[0], HasUsername: rest[0] != "", ClientID: *clientID}
	var rules *acl.Rules
	if l.Security.ACLFile != "" {
		if rules, _, err = acl.Load(l.Security.ACLFile); err != nil {
			printErr(io, err)
			return 1
		}
	}
	// An identity the broker refuses at CONNECT gets no ACL answer.
	if reason, err := connectRefusal(l, rules, c); err != nil {
		printErr(io, err)
		return 1
	} else if reason != "" {
		fmt.Fprintf(io.out, "deny: CONNECT refused on listener %s: %s\n", l.ID, reason)
		return 0
	}
	if rules == nil {
		fmt.Fprintln(io.out, noACLExplain(op, rest[2]))
		return 0
	}
	d := rules.Explain(c, op, rest[2], cfg.StrictSubscribe)
	fmt.Fprintln(io.out, d.String())
	return 0
}

// connectRefusal says why the broker would refuse this client at CONNECT,
// "" when it would accept it (given the right password).
func connectRefusal(l *config.Listener, rules *acl.Rules, c *acl.Client) (string, error) {
	s := l.Security
	switch {
	case !c.HasUsername && !s.AllowAnonymous:
		return "anonymous clients are not allowed (allow_anonymous false)", nil
	case c.HasUsername && s.PasswordFile == "":
		return "no password_file to verify a username", nil
	case c.HasUsername:
		f, err := passwd.Load(s.PasswordFile)
		if err != nil {
			return "", fmt.Errorf("password_file (%s): %w", s.PasswordFilePos, err)
		}
		if _, ok := f.Fingerprint(c.Username); !ok {
			return fmt.Sprintf("user %q is not in %s", c.Username, s.PasswordFile), nil
		}
	}
	probe := *c
	if probe.ClientID == "" {
		probe.ClientID = "explain" // -i not given: the client id is not in question
	}
	if err := rules.CheckClient(&probe); err != nil {
		return err.Error(), nil
	}
	return "", nil
}

// noACLExplain is the decision without an acl_file: everything, except
// writing $ topics and reading $ topics other than $SYS.
func noACLExplain(op acl.Op, topic string) string {
	sys := topic == "$SYS" || strings.HasPrefix(topic, "$SYS/")
	switch {
	case !strings.HasPrefix(topic, "$"):
		return "allow: no acl_file: every topic not starting with $ is allowed"
	case op != acl.OpWrite && sys:
		return "allow: no acl_file: $SYS topics are readable"
	default:
		return "deny: no acl_file: $ topics are not writable, and only $SYS is readable"
	}
}

func runHealth(args []string, io stdio) int {
	fs := newFlags("health", io)
	path := fs.String("c", "", "configuration file (for admin_listener)")
	if code, ok := parseFlags(fs, args, io); !ok {
		return code
	}
	cfg, err := loadConfig(*path)
	if err != nil {
		printErr(io, err)
		return 1
	}
	if cfg.Admin.Listener == "" {
		fmt.Fprintln(io.err, "moat: admin_listener is off: nothing to ask")
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := admin.Check(ctx, cfg.Admin.Listener); err != nil {
		fmt.Fprintf(io.err, "moat: not ready: %v\n", err)
		return 1
	}
	fmt.Fprintln(io.out, "ready")
	return 0
}

func runCert(args []string, io stdio) int {
	if len(args) > 0 && isHelp(args[0]) {
		fmt.Fprintln(io.out, "usage: moat cert status|renew -c FILE")
		return 0
	}
	if len(args) == 0 || (args[0] != "status" && args[0] != "renew") {
		fmt.Fprintln(io.err, "usage: moat cert status|renew -c FILE")
		return 2
	}
	fs := newFlags("cert "+args[0], io)
	path := fs.String("c", "", "configuration file")
	if code, ok := parseFlags(fs, args[1:], io); !ok {
		return code
	}
	cfg, err := loadConfig(*path)
	if err != nil {
		printErr(io, err)
		return 1
	}
	if len(cfg.ACME.Domains) == 0 {
		fmt.Fprintln(io.err, "moat: no acme_domain (or DOMAIN) configured")
		return 1
	}
	if args[0] == "status" {
		st, err := certs.ReadStatus(cfg.ACME.StateDir, cfg.ACME.Staging, cfg.ACME.Directory)
		if err != nil {
			printErr(io, err)
			return 1
		}
		if len(st.Domains) == 0 {
			st.Domains = cfg.ACME.Domains
		}
		printStatus(io, st)
		return 0
	}
	o := broker.ACMEOptions(cfg, os.Getenv)
	m, err := certs.NewManager(o)
	if err != nil {
		printErr(io, err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if err := m.Renew(ctx); err != nil {
		printErr(io, err)
		return 1
	}
	printStatus(io, m.Status())
	fmt.Fprintf(io.out, "renewed and stored in %s; a running Moat keeps serving its current certificate until it gets SIGHUP (kill -HUP PID, or docker kill -s HUP CONTAINER)\n", cfg.ACME.StateDir)
	return 0
}

func printStatus(io stdio, st certs.Status) {
	w := io.out
	fmt.Fprintf(w, "domains:      %s\n", strings.Join(st.Domains, ", "))
	fmt.Fprintf(w, "directory:    %s (staging %v)\n", st.DirectoryURL, st.Staging)
	if st.Serial == "" {
		fmt.Fprintln(w, "certificate:  none stored")
		if st.LastError == "" {
			fmt.Fprintln(w, "attempts:     none recorded yet (Moat requests one when it starts with a tls acme listener)")
		}
	} else {
		fmt.Fprintf(w, "names:        %s\n", strings.Join(st.Names, ", "))
		fmt.Fprintf(w, "issuer:       %s\n", st.Issuer)
		fmt.Fprintf(w, "serial:       %s\n", st.Serial)
		fmt.Fprintf(w, "valid:        %s to %s\n", st.NotBefore.Format(time.RFC3339), st.NotAfter.Format(time.RFC3339))
	}
	if !st.NextRenewal.IsZero() {
		fmt.Fprintf(w, "next renewal: %s\n", st.NextRenewal.Format(time.RFC3339))
	}
	if st.LastError != "" {
		fmt.Fprintf(w, "last error:   %s (%s, %d failed attempts in a row)\n", st.LastError, st.LastErrorAt.Format(time.RFC3339), st.Failures)
	}
	switch {
	case st.NextAttempt.IsZero():
	case st.NextAttempt.Before(time.Now()):
		fmt.Fprintf(w, "next attempt: due since %s (a running Moat retries at its next check)\n", st.NextAttempt.Format(time.RFC3339))
	default:
		fmt.Fprintf(w, "next attempt: %s\n", st.NextAttempt.Format(time.RFC3339))
	}
}
