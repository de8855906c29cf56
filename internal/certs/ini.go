package certs

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
)

// cfCredentials are the Cloudflare secrets; they never reach logs or errors.
type cfCredentials struct {
	Token     string // DNS:Edit (and Zone:Read unless ZoneToken is set)
	ZoneToken string
	Email     string // legacy global key pair
	APIKey    string
}

func (c cfCredentials) empty() bool { return c.Token == "" && (c.Email == "" || c.APIKey == "") }

// secrets lists the values to scrub from any text that leaves the package.
func (c cfCredentials) secrets() []string {
	var s []string
	for _, v := range []string{c.Token, c.ZoneToken, c.APIKey} {
		if len(v) >= 4 {
			s = append(s, v)
		}
	}
	return s
}

// parseCloudflareINI reads a certbot-style credentials file:
//
//	dns_cloudflare_api_token = 0123...
//	# or the legacy pair
//	dns_cloudflare_email = a@b.c
//	dns_cloudflare_api_key = 0123...
//
// Errors name the line number, never its content.
func parseCloudflareINI(data string) (cfCredentials, error) {
	var c cfCredentials
	sc := bufio.NewScanner(strings.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	line := 0
	for sc.Scan() {
		line++
		s := strings.TrimSpace(sc.Text())
		if line == 1 {
			s = strings.TrimPrefix(s, "\ufeff")
		}
		if s == "" || s[0] == '#' || s[0] == ';' || (s[0] == '[' && strings.HasSuffix(s, "]")) {
			continue
		}
		k, v, ok := strings.Cut(s, "=")
		if !ok {
			if k2, v2, ok2 := strings.Cut(s, ":"); ok2 {
				k, v, ok = k2, v2, true
			}
		}
		if !ok {
			return cfCredentials{}, fmt.Errorf("line %d: expected key = value", line)
		}
		k = strings.ToLower(strings.TrimSpace(k))
		v = unquote(strings.TrimSpace(v))
		switch k {
		case "dns_cloudflare_api_token", "certbot_dns_cloudflare:dns_cloudflare_api_token":
			c.Token = v
		case "dns_cloudflare_zone_api_token":
			c.ZoneToken = v
		case "dns_cloudflare_email", "certbot_dns_cloudflare:dns_cloudflare_email":
			c.Email = v
		case "dns_cloudflare_api_key", "certbot_dns_cloudflare:dns_cloudflare_api_key":
			c.APIKey = v
		}
	}
	if err := sc.Err(); err != nil {
		return cfCredentials{}, fmt.Errorf("line %d: %w", line+1, err)
	}
	return c, nil
}

func unquote(v string) string {
	if len(v) >= 2 && (v[0] == '"' || v[0] == '\'') && v[len(v)-1] == v[0] {
		return v[1 : len(v)-1]
	}
	return v
}

// DefaultCloudflareCredentials is where a certbot-style credentials file is
// looked for when no token is given in the environment.
const DefaultCloudflareCredentials = "/secrets/cloudflare.ini"

// envSecret reads NAME, or the file named by NAME_FILE (one trailing newline
// stripped, as lego does).
func envSecret(env func(string) string, name string) (string, error) {
	if v := env(name); v != "" {
		return strings.TrimSpace(v), nil
	}
	p := env(name + "_FILE")
	if p == "" {
		return "", nil
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return "", fmt.Errorf("%s_FILE: %w", name, pathOnly(err))
	}
	v := strings.TrimSpace(string(b))
	if v == "" {
		// A secret that failed to render must not fall through to another source.
		return "", fmt.Errorf("%s_FILE %s is empty", name, p)
	}
	return v, nil
}

// pathOnly keeps an fs error's path and cause without anything read.
func pathOnly(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return fmt.Errorf("%s %s: %w", pe.Op, pe.Path, pe.Err)
	}
	return err
}

// loadCloudflareCredentials resolves credentials: CLOUDFLARE_DNS_API_TOKEN,
// CF_DNS_API_TOKEN (each also as _FILE), CLOUDFLARE_ZONE_API_TOKEN /
// CF_ZONE_API_TOKEN, then the certbot-style ini file.
func loadCloudflareCredentials(env func(string) string, iniPath string) (cfCredentials, string, error) {
	var c cfCredentials
	var err error
	for _, n := range []string{"CLOUDFLARE_DNS_API_TOKEN", "CF_DNS_API_TOKEN"} {
		if c.Token, err = envSecret(env, n); err != nil {
			return c, "", err
		}
		if c.Token != "" {
			break
		}
	}
	for _, n := range []string{"CLOUDFLARE_ZONE_API_TOKEN", "CF_ZONE_API_TOKEN"} {
		if c.ZoneToken, err = envSecret(env, n); err != nil {
			return c, "", err
		}
		if c.ZoneToken != "" {
			break
		}
	}
	if c.Token != "" {
		return c, "environment", nil
	}
	if iniPath == "" {
		iniPath = DefaultCloudflareCredentials
	}
	b, err := os.ReadFile(iniPath)
	if err != nil {
		return c, "", fmt.Errorf("no Cloudflare API token: set CLOUDFLARE_DNS_API_TOKEN (or CF_DNS_API_TOKEN, or their _FILE forms) or provide %s: %w", iniPath, pathOnly(err))
	}
	fc, err := parseCloudflareINI(string(b))
	if err != nil {
		return c, "", fmt.Errorf("cloudflare credentials %s: %w", iniPath, err)
	}
	if fc.ZoneToken == "" {
		fc.ZoneToken = c.ZoneToken
	}
	if fc.empty() {
		return c, "", fmt.Errorf("cloudflare credentials %s: no dns_cloudflare_api_token (or dns_cloudflare_email + dns_cloudflare_api_key)", iniPath)
	}
	return fc, iniPath, nil
}
