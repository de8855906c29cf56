package deploy

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// stage is one FROM block of a Dockerfile, continuation lines joined.
type stage struct {
	image, name string
	lines       []string
}

func parseDockerfile(t *testing.T, path string) []stage {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var stages []stage
	var cur string
	for _, raw := range strings.Split(string(b), "\n") {
		line := strings.TrimSpace(raw)
		if cur == "" && (line == "" || strings.HasPrefix(line, "#")) {
			continue
		}
		if strings.HasSuffix(line, "\\") {
			cur += strings.TrimSuffix(line, "\\") + " "
			continue
		}
		line, cur = strings.Join(strings.Fields(cur+line), " "), ""
		f := strings.Fields(line)
		if strings.EqualFold(f[0], "FROM") {
			s := stage{image: f[1]}
			if len(f) == 4 && strings.EqualFold(f[2], "AS") {
				s.name = f[3]
			}
			stages = append(stages, s)
			continue
		}
		if len(stages) == 0 {
			continue // ARG before FROM
		}
		stages[len(stages)-1].lines = append(stages[len(stages)-1].lines, line)
	}
	return stages
}

func TestDockerfile(t *testing.T) {
	stages := parseDockerfile(t, "../Dockerfile")
	if len(stages) != 2 {
		t.Fatalf("%d stages, want build and runtime", len(stages))
	}
	build, run := stages[0], stages[1]
	release := regexp.MustCompile(`^[a-z0-9./-]+:[0-9]+\.[0-9]+[a-z0-9.-]*$`)
	for _, s := range stages {
		if !release.MatchString(s.image) || strings.Contains(s.image, "latest") {
			t.Errorf("FROM %s is not pinned to a version", s.image)
		}
	}
	if !strings.HasPrefix(build.image, "golang:") {
		t.Errorf("build stage FROM %s, want a golang image", build.image)
	}
	if !slices.Contains(build.lines, "RUN make build") {
		t.Errorf("build stage does not run exactly `make build`: %q", build.lines)
	}
	copied := ""
	for _, l := range run.lines {
		if strings.HasPrefix(l, "COPY --from="+build.name+" ") {
			copied += l + "\n"
		}
	}
	for _, bin := range []string{"bin/moat", "bin/gocryptfs"} {
		if !regexp.MustCompile(`\s\S*` + regexp.QuoteMeta(bin) + `\s.*/usr/local/bin/`).MatchString(copied) {
			t.Errorf("runtime stage does not copy %s into /usr/local/bin: %q", bin, copied)
		}
	}
	want := []string{
		`ENTRYPOINT ["moat"]`,
		`CMD ["serve", "-c", "/mosquitto/config/mosquitto.conf"]`,
		`EXPOSE 1883 8883 8083 9001`,
	}
	for _, w := range want {
		if !slices.Contains(run.lines, w) {
			t.Errorf("runtime stage lacks %s", w)
		}
	}
	var health, user, volume, apt string
	for _, l := range run.lines {
		switch f := strings.Fields(l); f[0] {
		case "HEALTHCHECK":
			health = l
		case "USER":
			user = l
		case "VOLUME":
			volume = l
		case "RUN":
			if strings.Contains(l, "apt-get install") {
				apt = l
			}
		}
	}
	if !strings.Contains(health, `"moat", "health", "-c", "/mosquitto/config/mosquitto.conf"`) {
		t.Errorf("HEALTHCHECK %q does not run moat health on the config", health)
	}
	if user == "" || strings.Contains(user, "root") || strings.HasPrefix(user, "USER 0") {
		t.Errorf("runtime user %q: want an unprivileged user", user)
	}
	for _, v := range []string{"/mosquitto/config", "/var/lib/moat", "/mosquitto/encrypted", "/mosquitto/log"} {
		if !strings.Contains(volume, `"`+v+`"`) {
			t.Errorf("VOLUME lacks %s: %q", v, volume)
		}
	}
	// The gocryptfs mount point: an anonymous volume there makes Moat
	// refuse to mount (it never mounts over a foreign file system).
	if strings.Contains(volume, `"/mosquitto/data"`) {
		t.Errorf("VOLUME covers the gocryptfs mount point /mosquitto/data: %q", volume)
	}
	for _, pkg := range []string{"fuse3", "ca-certificates"} {
		if !strings.Contains(apt, pkg) {
			t.Errorf("runtime stage does not install %s", pkg)
		}
	}
}
