package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// moatBin is the moat command: $MOAT_BIN (make test sets it), else a fresh build.
func moatBin(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("MOAT_BIN"); p != "" {
		return p
	}
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command to build moat; set MOAT_BIN")
	}
	out := filepath.Join(t.TempDir(), "moat")
	cmd := exec.Command(gobin, "build", "-o", out, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, b)
	}
	return out
}

// Whatever serve refuses at start, check-config refuses with the same
// message: both run the same load and checks.
func TestServeAndCheckConfigRefuseAlike(t *testing.T) {
	bin := moatBin(t)
	t.Setenv("CLOUDFLARE_DNS_API_TOKEN", "")
	t.Setenv("CF_DNS_API_TOKEN", "")
	base := "listener 0 127.0.0.1\nadmin_listener off\nlog_dest file moat.log\n"
	users := "allow_anonymous false\npassword_file passwd\n"
	cases := []struct {
		name  string
		conf  string
		files map[string]string
		env   map[string]string
		want  string
	}{
		{"missing certificate", users + "listener 0 127.0.0.1\ncertfile nope.crt\nkeyfile nope.key\n", nil, nil, "nope.crt"},
		{"garbage key", users + "listener 0 127.0.0.1\ncertfile server.crt\nkeyfile bad.key\n", map[string]string{"bad.key": "not a key\n"}, nil, "listener mqtts:127.0.0.1:0"},
		{"empty persistence key file", users + "persistence true\npersistence_location data\npersistence_cipher_dir cipher\npersistence_key_file key\n", map[string]string{"key": ""}, nil, "persistence_key_file"},
		{"empty token file", users + "listener %PORT% 127.0.0.1\ntls acme\nacme_domain mqtt.example.com\n", map[string]string{"token": ""}, map[string]string{"CLOUDFLARE_DNS_API_TOKEN_FILE": "token"}, "CLOUDFLARE_DNS_API_TOKEN_FILE"},
		{"no Cloudflare token", users + "listener %PORT% 127.0.0.1\ntls acme\nacme_domain mqtt.example.com\ncloudflare_credentials missing.ini\n", nil, nil, "no Cloudflare API token"},
		{"mount point is a file", users + "persistence true\npersistence_location data\npersistence_cipher_dir cipher\npersistence_key_file key\n", map[string]string{"key": "secret\n", "data": "a file\n"}, nil, "is not a directory"},
		{"plain store location is a file", users + "persistence true\npersistence_location data\npersistence_encryption off\n", map[string]string{"data": "a file\n"}, nil, "persistence_location"},
		{"no users, anonymous off", "allow_anonymous false\n", nil, nil, "allow_anonymous false and no password_file"},
		{"missing password_file", "allow_anonymous false\npassword_file nope\n", nil, nil, "password_file ("},
		{"bad acl line", users + "acl_file acl\n", map[string]string{"acl": "topic read a/#/b\n"}, nil, "acl:1:"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir, _, _ := cliSetup(t, "", "")
			writeTestCert(t, dir)
			for name, data := range tc.files {
				if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			conf := strings.ReplaceAll(base+tc.conf, "%PORT%", fmt.Sprint(freeTCPPort(t)))
			path := filepath.Join(dir, "moat.conf")
			if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
				t.Fatal(err)
			}
			for k, v := range tc.env {
				t.Setenv(k, filepath.Join(dir, v))
			}
			code, out, errOut := runCLI(t, "check-config", "-c", path)
			if code != 1 || strings.Contains(out, "configuration OK") {
				t.Fatalf("check-config: exit %d, want 1\n%s%s", code, out, errOut)
			}
			if !strings.Contains(errOut, tc.want) {
				t.Errorf("check-config stderr lacks %q:\n%s", tc.want, errOut)
			}

			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, bin, "serve", "-c", path)
			var serr strings.Builder
			cmd.Stderr = &serr
			err := cmd.Run()
			if ctx.Err() != nil {
				t.Fatalf("serve started with a configuration check-config refuses:\n%s", errOut)
			}
			var ee *exec.ExitError
			if !errors.As(err, &ee) {
				t.Fatalf("serve: %v", err)
			}
			for _, line := range strings.Split(strings.TrimSpace(errOut), "\n") {
				if strings.HasPrefix(line, "moat: warning: ") {
					continue // check-config adds the warnings; serve logs them
				}
				msg := strings.TrimPrefix(line, "moat: ")
				if !strings.Contains(serr.String(), msg) {
					t.Errorf("serve does not refuse with check-config's message\ncheck-config: %s\nserve:\n%s", msg, serr.String())
				}
			}
		})
	}
}
