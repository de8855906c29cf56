package config

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

const (
	maxLineLen   = 64 << 10
	maxFileSize  = 4 << 20
	maxIncludes  = 256
	defaultPort  = 1883
	defaultLocal = "127.0.0.1"
)

// ErrInvalid wraps every configuration error.
var ErrInvalid = errors.New("invalid configuration")

// LineError is one problem at file:line.
type LineError struct {
	Pos    Pos
	Reason string
}

func (e *LineError) Error() string { return e.Pos.String() + ": " + e.Reason }
func (e *LineError) Unwrap() error { return ErrInvalid }

// Load reads the configuration file at path and every file it includes.
// env supplies DOMAIN, EMAIL and DRYRUN (os.Getenv in production; nil for none).
func Load(path string, env func(string) string) (*Config, error) {
	p := newParser(env)
	p.readFile(path, Pos{}, 0)
	return p.finish()
}

// LoadAll is Load that also returns the warnings when the file has errors,
// so that check-config can name every line to change at once.
func LoadAll(path string, env func(string) string) (*Config, []string, error) {
	p := newParser(env)
	p.readFile(path, Pos{}, 0)
	c, err := p.finish()
	return c, p.cfg.Warnings, err
}

// Parse reads configuration text; name is used in errors and to resolve
// relative paths.
func Parse(name string, data []byte, env func(string) string) (*Config, error) {
	p := newParser(env)
	p.cfg.Files = append(p.cfg.Files, name)
	p.parse(name, data, 0)
	return p.finish()
}

// Default is the embedded configuration of `moat serve` without -c:
// MQTT on 127.0.0.1:1883, anonymous clients allowed there and nowhere else.
func Default() *Config {
	c, err := Parse("(default)", nil, nil)
	if err != nil {
		// The empty configuration is valid by construction.
		panic("config: default configuration invalid: " + err.Error())
	}
	return c
}

type parser struct {
	cfg  *Config
	errs []error
	// cur is the listener that listener-scoped directives apply to; nil
	// before the first listener line.
	cur *Listener
	// curLine is the value of the listener line cur came from; scopedUse
	// records that the directive being read is listener-scoped.
	curLine   string
	scopedUse bool
	// globalSince: a broker-wide directive came after the last listener line.
	globalSince bool
	// implicit holds settings given before any listener line (or by port /
	// bind_address): the default listener's, inherited by later listeners.
	implicit     *Listener
	implicitUsed bool
	handlers     map[string]handler
	env          func(string) string
}

func newParser(env func(string) string) *parser {
	c := &Config{
		Security:        &Security{},
		StrictSubscribe: true,
		SysInterval:     10e9,
		Limits: Limits{
			MaxPacketSize:       1 << 20,
			MaxKeepalive:        65535,
			MaxInflightMessages: 20,
			MaxQueuedMessages:   1000,
			MaxQoS:              2,
			RetainAvailable:     true,
		},
		Persistence: Persistence{File: "moat.db", AutosaveInterval: 1800, Encryption: "gocryptfs"},
		Log:         Log{Format: "text", Types: map[string]bool{}, ConnectionMessages: true},
		ACME:        ACME{KeyType: "ec256", PropagationCheck: true, StateDir: "/var/lib/moat/acme", CloudflareCredentials: "/secrets/cloudflare.ini"},
		Admin:       Admin{Listener: "127.0.0.1:7883", CertMinDays: 7},
		Abuse:       Abuse{BanThreshold: 5, BanBase: 2e9, BanMax: 15 * 60e9, BanIPv4Prefix: 32, BanIPv6Prefix: 64},
		Quotas:      defaultQuotas(),
		// Sessions that are never resumed must not live for ever.
		PersistentClientExpiration: 30 * 24 * 3600e9,
	}
	p := &parser{cfg: c, handlers: directives(), env: env}
	if p.env == nil {
		p.env = func(string) string { return "" }
	}
	p.implicit = newListener(Pos{}, defaultPort, "", c.Security)
	p.implicit.Implicit = true
	return p
}

func newListener(pos Pos, port int, bind string, sec *Security) *Listener {
	return &Listener{
		Pos: pos, Port: port, Bind: bind, Protocol: "mqtt",
		MaxConnections: -1, ConnectTimeout: 10e9, Security: sec,
	}
}

func (p *parser) errorf(pos Pos, format string, args ...any) {
	p.errs = append(p.errs, &LineError{Pos: pos, Reason: fmt.Sprintf(format, args...)})
}

func (p *parser) readFile(path string, from Pos, depth int) {
	if depth > 8 {
		p.errorf(from, "include_dir nested too deeply")
		return
	}
	data, err := readLimited(path)
	if err != nil {
		if from.File == "" {
			p.errs = append(p.errs, fmt.Errorf("config %s: %w", path, err))
		} else {
			p.errorf(from, "%v", err)
		}
		return
	}
	p.cfg.Files = append(p.cfg.Files, path)
	p.parse(path, data, depth)
}

func readLimited(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if st.IsDir() {
		return nil, fmt.Errorf("%s is a directory", path)
	}
	if st.Size() > maxFileSize {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, maxFileSize)
	}
	return os.ReadFile(path)
}

func (p *parser) parse(name string, data []byte, depth int) {
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), maxLineLen)
	line := 0
	for sc.Scan() {
		line++
		pos := Pos{File: name, Line: line}
		text := strings.TrimRight(sc.Text(), " \t\r\n")
		trimmed := strings.TrimLeft(text, " \t")
		if trimmed == "" || trimmed[0] == '#' {
			continue
		}
		key, value, _ := strings.Cut(trimmed, " ")
		if k, v, ok := strings.Cut(trimmed, "\t"); ok && len(k) < len(key) {
			key, value = k, v
		}
		value = strings.TrimLeft(value, " \t")
		if key == "include_dir" {
			p.includeDir(pos, name, value, depth)
			continue
		}
		p.directive(pos, key, value)
	}
	if err := sc.Err(); err != nil {
		p.errorf(Pos{File: name, Line: line + 1}, "line longer than %d bytes", maxLineLen)
	}
}

func (p *parser) includeDir(pos Pos, from, dir string, depth int) {
	if dir == "" {
		p.errorf(pos, "include_dir needs a directory")
		return
	}
	dir = p.resolve(pos, dir)
	entries, err := os.ReadDir(dir)
	if err != nil {
		p.errorf(pos, "include_dir: %v", err)
		return
	}
	var names []string
	for _, e := range entries {
		if !e.IsDir() && strings.HasSuffix(e.Name(), ".conf") {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	if len(names) > maxIncludes {
		p.errorf(pos, "include_dir: more than %d files", maxIncludes)
		return
	}
	for _, n := range names {
		p.readFile(filepath.Join(dir, n), pos, depth+1)
	}
}

// resolve makes a relative path relative to the directory of the file it
// was read from, so a configuration can be run from any working directory.
func (p *parser) resolve(pos Pos, path string) string {
	if path == "" || filepath.IsAbs(path) || pos.File == "" || strings.HasPrefix(pos.File, "(") {
		return path
	}
	return filepath.Join(filepath.Dir(pos.File), path)
}

// scoped returns the listener that listener-scoped settings apply to.
func (p *parser) scoped() *Listener {
	p.scopedUse = true
	if p.cur != nil {
		return p.cur
	}
	return p.implicit
}

// security returns the Security that auth directives apply to.
func (p *parser) security() *Security {
	if p.cfg.PerListenerSettings && p.cur != nil {
		p.scopedUse = true
		return p.cur.Security
	}
	if p.cfg.PerListenerSettings {
		return p.implicit.Security
	}
	return p.cfg.Security
}
