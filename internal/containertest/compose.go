package containertest

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"
)

// Overrides are what a test passes on top of a compose file, all of the kind
// a user would pass too: environment for interpolation, replaced bind-mount
// sources (copies of config files), device nodes, and the image a build:
// service runs. Ports are always published on 127.0.0.1 only, on a free
// host port.
type Overrides struct {
	Env   map[string]string // interpolation environment
	Image string            // image for services with build:
	// Binds maps a bind mount's container path to the host file used instead.
	Binds map[string]string
	// Devices maps a device's container path to the host node used instead.
	Devices map[string]string
	// ExtraPorts are container ports published on 127.0.0.1 in addition to
	// the compose file's, per service.
	ExtraPorts map[string][]string
	// ExtraEnv and ExtraVolumes are added to a service's environment and
	// volumes (podman --env and --volume syntax), per service.
	ExtraEnv     map[string]map[string]string
	ExtraVolumes map[string][]string
	// ExtraArgs are added to a service's podman run arguments: what a user
	// would add on the command line (a security option, a device).
	ExtraArgs map[string][]string
	// StandIns replace a service's image and command (an image not
	// available here), keeping everything else the compose file says.
	StandIns map[string][]string
}

// Stack is one compose project run with podman under a name unique to the
// test run.
type Stack struct {
	p       *Podman
	Project *types.Project
	o       Overrides
	created map[string]bool // networks and volumes already made
}

// LoadStack reads dir/compose.yaml with compose-go, under the project name
// NAME-RUNID, so parallel or leftover runs never collide.
func LoadStack(p *Podman, dir string, o Overrides) *Stack {
	p.t.Helper()
	abs, err := filepath.Abs(dir)
	if err != nil {
		p.t.Fatal(err)
	}
	file := filepath.Join(abs, "compose.yaml")
	base := filepath.Base(abs)
	proj, err := loader.LoadWithContext(context.Background(), types.ConfigDetails{
		WorkingDir:  abs,
		ConfigFiles: []types.ConfigFile{{Filename: file}},
		Environment: o.Env,
	}, func(lo *loader.Options) {
		lo.SetProjectName("moat-"+base+"-"+p.RunID, true)
	})
	if err != nil {
		p.t.Fatalf("%s: %v", file, err)
	}
	return &Stack{p: p, Project: proj, o: o, created: map[string]bool{}}
}

// Container is the podman name of a service's container.
func (s *Stack) Container(service string) string { return s.Project.Name + "-" + service }

// Volume is the podman name of a compose volume.
func (s *Stack) Volume(name string) string {
	if v, ok := s.Project.Volumes[name]; ok && v.Name != "" {
		return v.Name
	}
	return s.Project.Name + "_" + name
}

// Network is the podman name of a compose network.
func (s *Stack) Network(name string) string {
	if n, ok := s.Project.Networks[name]; ok && n.Name != "" {
		return n.Name
	}
	return s.Project.Name + "_" + name
}

// Up creates what the services need (networks, volumes) and starts them in
// the order given; each is removed when the test ends.
func (s *Stack) Up(services ...string) {
	s.p.t.Helper()
	for _, name := range services {
		s.Start(name)
	}
}

// Start runs one service's container (removing an old one of the same name
// first, as compose does when re-creating).
func (s *Stack) Start(service string) {
	s.p.t.Helper()
	args := s.RunArgs(service)
	s.Prepare(service)
	name := s.Container(service)
	s.p.Cleanup("container", name)
	s.p.Try(time.Minute, "rm", "-f", "-v", "-t", "0", name)
	s.p.Must(2*time.Minute, append([]string{"run", "-d"}, args...)...)
}

// Prepare creates the networks and volumes a service uses (once per
// stack), each removed when the test ends.
func (s *Stack) Prepare(service string) {
	s.p.t.Helper()
	svc := s.Project.Services[service]
	for net := range svc.Networks {
		name := s.Network(net)
		if s.created["n:"+name] {
			continue
		}
		args := []string{"network", "create"}
		if n := s.Project.Networks[net]; n.Ipam.Config != nil {
			for _, c := range n.Ipam.Config {
				if c.Subnet != "" {
					args = append(args, "--subnet", c.Subnet)
				}
			}
		}
		s.p.Cleanup("network", name)
		s.p.Must(time.Minute, append(args, name)...)
		s.created["n:"+name] = true
	}
	for _, v := range svc.Volumes {
		if v.Type != types.VolumeTypeVolume {
			continue
		}
		name := s.Volume(v.Source)
		if s.created["v:"+name] {
			continue
		}
		s.p.Cleanup("volume", name)
		s.p.Must(time.Minute, "volume", "create", name)
		s.created["v:"+name] = true
	}
}

// RunArgs are the `podman run` arguments (after "run") that start service
// as the compose file describes it, with the overrides applied. Compose
// keys it cannot translate fail the test rather than be dropped.
func (s *Stack) RunArgs(service string) []string {
	t := s.p.t
	t.Helper()
	svc, ok := s.Project.Services[service]
	if !ok {
		t.Fatalf("compose project %s has no service %s", s.Project.Name, service)
	}
	if svc.HealthCheck != nil || len(svc.Entrypoint) > 0 || svc.Privileged || svc.Pid != "" || svc.Ipc != "" ||
		len(svc.Sysctls) > 0 || len(svc.ExtraHosts) > 0 || len(svc.DNS) > 0 || len(svc.EnvFiles) > 0 {
		t.Fatalf("service %s uses compose keys this helper does not translate yet", service)
	}
	args := []string{"--name", s.Container(service)}
	image := svc.Image
	if svc.Build != nil {
		if s.o.Image == "" {
			t.Fatalf("service %s is built; Overrides.Image names the built image", service)
		}
		image = s.o.Image
	}
	if svc.User != "" {
		args = append(args, "--user", svc.User)
	}
	if _, standIn := s.o.StandIns[service]; svc.Restart != "" && !standIn { // a stand-in runs once
		args = append(args, "--restart", svc.Restart)
	}
	if svc.StopGracePeriod != nil {
		args = append(args, "--stop-timeout", strconv.Itoa(int(time.Duration(*svc.StopGracePeriod).Seconds())))
	}
	for _, k := range sortedKeys(svc.Environment) {
		if v := svc.Environment[k]; v != nil {
			args = append(args, "--env", k+"="+*v)
		}
	}
	for _, k := range sortedKeys(s.o.ExtraEnv[service]) {
		args = append(args, "--env", k+"="+s.o.ExtraEnv[service][k])
	}
	for _, v := range s.o.ExtraVolumes[service] {
		args = append(args, "--volume", v)
	}
	for _, pc := range svc.Ports {
		proto := pc.Protocol
		if proto == "" {
			proto = "tcp"
		}
		args = append(args, "--publish", fmt.Sprintf("127.0.0.1::%d/%s", pc.Target, proto))
	}
	for _, port := range s.o.ExtraPorts[service] {
		args = append(args, "--publish", "127.0.0.1::"+port)
	}
	for _, v := range svc.Volumes {
		switch v.Type {
		case types.VolumeTypeBind:
			src := v.Source
			if o, ok := s.o.Binds[v.Target]; ok {
				src = o
			}
			args = append(args, "--volume", src+":"+v.Target+roSuffix(v.ReadOnly))
		case types.VolumeTypeVolume:
			args = append(args, "--volume", s.Volume(v.Source)+":"+v.Target+roSuffix(v.ReadOnly))
		case types.VolumeTypeTmpfs:
			args = append(args, "--tmpfs", v.Target)
		default:
			t.Fatalf("service %s: volume type %s not translated", service, v.Type)
		}
	}
	for _, tm := range svc.Tmpfs {
		args = append(args, "--tmpfs", podmanTmpfs(tm))
	}
	for _, sec := range svc.Secrets {
		def, ok := s.Project.Secrets[sec.Source]
		if !ok || def.File == "" {
			t.Fatalf("service %s: secret %s is not a file secret", service, sec.Source)
		}
		target := sec.Target
		if target == "" {
			target = sec.Source
		}
		if !strings.HasPrefix(target, "/") {
			target = "/run/secrets/" + target
		}
		args = append(args, "--volume", def.File+":"+target+":ro")
	}
	for _, d := range svc.Devices {
		src := d.Source
		if o, ok := s.o.Devices[d.Target]; ok {
			src = o
		}
		spec := src + ":" + d.Target
		if d.Permissions != "" {
			spec += ":" + d.Permissions
		}
		args = append(args, "--device", spec)
	}
	for _, c := range svc.CapDrop {
		args = append(args, "--cap-drop", c)
	}
	for _, c := range svc.CapAdd {
		args = append(args, "--cap-add", c)
	}
	for _, o := range svc.SecurityOpt {
		// Compose writes key:value; podman's own form is key=value.
		args = append(args, "--security-opt", strings.Replace(o, ":", "=", 1))
	}
	if svc.ReadOnly {
		// Docker mounts nothing writable on a read-only root by itself;
		// podman would add tmpfs on /run, /tmp and /var/tmp.
		args = append(args, "--read-only", "--read-only-tmpfs=false")
	}
	for _, name := range sortedKeys(svc.Ulimits) {
		u := svc.Ulimits[name]
		soft, hard := u.Soft, u.Hard
		if u.Single != 0 {
			soft, hard = u.Single, u.Single
		}
		args = append(args, "--ulimit", fmt.Sprintf("%s=%d:%d", name, soft, hard))
	}
	switch {
	case svc.NetworkMode != "":
		args = append(args, "--network", svc.NetworkMode)
	default:
		nets := sortedKeys(svc.Networks)
		for _, net := range nets {
			n := svc.Networks[net]
			spec := s.Network(net) + ":alias=" + service
			if n != nil {
				for _, a := range n.Aliases {
					spec += ",alias=" + a
				}
				if n.Ipv4Address != "" {
					spec += ",ip=" + n.Ipv4Address
				}
			}
			args = append(args, "--network", spec)
		}
	}
	args = append(args, s.o.ExtraArgs[service]...)
	if st, ok := s.o.StandIns[service]; ok && len(st) > 0 {
		return append(args, st...)
	}
	args = append(args, image)
	return append(args, svc.Command...)
}

func roSuffix(ro bool) string {
	if ro {
		return ":ro"
	}
	return ""
}

func sortedKeys[M ~map[string]V, V any](m M) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return slices.Clip(keys)
}

// podmanTmpfs maps a Docker --tmpfs spec to podman's: podman 4 refuses
// the kernel's uid= and gid= options and has U (owned by the container's
// user) instead. Tests check the resulting owner in mountinfo.
func podmanTmpfs(spec string) string {
	path, opts, ok := strings.Cut(spec, ":")
	if !ok {
		return spec
	}
	var out []string
	owner := false
	for _, o := range strings.Split(opts, ",") {
		if strings.HasPrefix(o, "uid=") || strings.HasPrefix(o, "gid=") {
			owner = true
			continue
		}
		out = append(out, o)
	}
	if owner {
		out = append(out, "U")
	}
	return path + ":" + strings.Join(out, ",")
}

// With is the same stack (project name, networks and volumes already
// made) with other overrides.
func (s *Stack) With(o Overrides) *Stack {
	c := *s
	c.o = o
	return &c
}

// For is the same stack reporting to t's Podman (a subtest's).
func (s *Stack) For(p *Podman) *Stack {
	c := *s
	c.p = p
	return &c
}
