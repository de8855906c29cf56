// Package memlimit finds the memory a process may use: the limit of its
// cgroup (v2 memory.max, v1 memory.limit_in_bytes), and tells what the Go
// runtime has in use against such a limit, cheaply enough to ask at every
// CONNECT.
package memlimit

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"path"
	"runtime/metrics"
	"strconv"
	"strings"
)

// v1Unlimited: cgroup v1 reports "no limit" as a huge page-rounded number
// (9223372036854771712 on 4 KiB pages); anything from 2^62 up is treated so.
const v1Unlimited = 1 << 62

// Cgroup returns the memory limit in bytes of the cgroup the process is
// in, as seen through fsys rooted at "/" (os.DirFS("/") in production,
// fixture trees in tests), and the file that set it. The smallest limit on
// the path from the process's cgroup up to the root counts: a parent's
// limit binds its children. 0 and no error when no limit is set or no
// memory controller is mounted.
func Cgroup(fsys fs.FS) (limit int64, file string, err error) {
	f, err := fsys.Open("proc/self/cgroup")
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return 0, "", nil
		}
		return 0, "", fmt.Errorf("memlimit: %w", err)
	}
	defer f.Close()
	var v2, v1 string
	haveV2, haveV1 := false, false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// hierarchy-ID:controller-list:cgroup-path
		id, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		ctrls, p, ok := strings.Cut(rest, ":")
		if !ok {
			continue
		}
		if id == "0" && ctrls == "" {
			v2, haveV2 = p, true
			continue
		}
		for _, c := range strings.Split(ctrls, ",") {
			if c == "memory" {
				v1, haveV1 = p, true
			}
		}
	}
	if err := sc.Err(); err != nil {
		return 0, "", fmt.Errorf("memlimit: proc/self/cgroup: %w", err)
	}
	// A hybrid host lists both; the v1 memory controller is then the one
	// that enforces.
	if haveV1 {
		if limit, file, err = walk(fsys, "sys/fs/cgroup/memory", v1, "memory.limit_in_bytes"); limit > 0 || err != nil {
			return limit, file, err
		}
	}
	if haveV2 {
		return walk(fsys, "sys/fs/cgroup", v2, "memory.max")
	}
	return 0, "", nil
}

// walk reads name in mount/cg and each parent up to mount, returning the
// smallest limit. A container usually sees its own cgroup as the mount's
// root (cgroup namespace, or v1 bind mounts), where cg names a path that
// does not exist below mount: the mount root is read then too.
func walk(fsys fs.FS, mount, cg, name string) (int64, string, error) {
	var best int64
	var bestFile string
	dir := path.Clean("/" + cg)
	for {
		file := path.Join(mount, dir, name)
		n, ok, err := readLimit(fsys, file)
		if err != nil {
			return 0, "", err
		}
		if ok && n > 0 && (best == 0 || n < best) {
			best, bestFile = n, file
		}
		if dir == "/" {
			break
		}
		dir = path.Dir(dir)
	}
	return best, "/" + bestFile, nil
}

// readLimit parses one limit file: a byte count, or "max" (v2) or a
// v1 "unlimited" huge value, both meaning none. A missing file is no limit.
func readLimit(fsys fs.FS, file string) (int64, bool, error) {
	b, err := fs.ReadFile(fsys, file)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return 0, false, nil
		}
		return 0, false, fmt.Errorf("memlimit: %w", err)
	}
	s := strings.TrimSpace(string(b))
	if s == "max" || s == "" {
		return 0, false, nil
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, false, fmt.Errorf("memlimit: /%s: %q is not a byte count", file, s)
	}
	if n >= v1Unlimited || n > math.MaxInt64 {
		return 0, false, nil
	}
	return int64(n), true, nil
}

// Plan is what a process does with a memory limit.
type Plan struct {
	// Limit is the memory the process may use, 0 = none known.
	Limit int64
	// Source says where Limit came from: "memory_limit", a cgroup file,
	// "GOMEMLIMIT", or "" for none.
	Source string
	// Runtime is the Go runtime's soft limit to set (debug.SetMemoryLimit),
	// 90% of Limit: the rest covers what the runtime does not manage (cgo,
	// socket buffers the kernel charges to the cgroup). 0 = leave the
	// runtime's limit as it is (none known, or GOMEMLIMIT set).
	Runtime int64
	// Admit is the live memory (see Usage) from which new connections are
	// refused, 80% of Limit: the connected clients keep headroom before
	// the collector runs flat out and the kernel kills the process.
	// 0 = never.
	Admit int64
}

// Decide makes the Plan. configured is memory_limit (0 = unset); cgroup
// the container's limit (0 = none); env is GOMEMLIMIT if set, with
// runtimeLimit the runtime's soft limit (debug.SetMemoryLimit(-1)), which
// the runtime already took from it. memory_limit wins over the cgroup;
// GOMEMLIMIT keeps the runtime's limit but only sets the admission
// threshold when nothing else does.
func Decide(configured, cgroup int64, cgroupFile, env string, runtimeLimit int64) Plan {
	var p Plan
	switch {
	case configured > 0:
		p.Limit, p.Source = configured, "memory_limit"
	case cgroup > 0:
		p.Limit, p.Source = cgroup, cgroupFile
	case env != "" && runtimeLimit > 0 && runtimeLimit < math.MaxInt64:
		// The runtime's limit already is 90% of the budget by our rule.
		return Plan{Limit: runtimeLimit, Source: "GOMEMLIMIT", Admit: runtimeLimit / 9 * 8}
	default:
		return p
	}
	p.Admit = p.Limit / 10 * 8
	if env == "" {
		p.Runtime = p.Limit / 10 * 9
	}
	return p
}

// Usage samples the runtime's memory in use cheaply (no stop-the-world):
// the heap that survived the last collection plus what the runtime holds
// outside the heap (stacks, metadata), without free and released pages
// and without garbage not yet collected. It is the figure a new
// connection's admission is judged on: garbage is reclaimed by the next
// collection, live data is not.
type Usage struct {
	samples []metrics.Sample
}

// NewUsage prepares the samples.
func NewUsage() *Usage {
	names := []string{
		"/memory/classes/total:bytes",
		"/memory/classes/heap/released:bytes",
		"/memory/classes/heap/free:bytes",
		"/memory/classes/heap/objects:bytes",
		"/gc/heap/live:bytes",
	}
	u := &Usage{samples: make([]metrics.Sample, len(names))}
	for i, n := range names {
		u.samples[i].Name = n
	}
	return u
}

// Bytes reads the samples. Not safe for concurrent use: each caller keeps
// its own Usage, or guards it.
func (u *Usage) Bytes() int64 {
	metrics.Read(u.samples)
	v := func(i int) int64 {
		if u.samples[i].Value.Kind() != metrics.KindUint64 {
			return 0
		}
		return int64(u.samples[i].Value.Uint64())
	}
	total, released, free, objects, live := v(0), v(1), v(2), v(3), v(4)
	used := total - released - free - objects + live
	return max(used, 0)
}
