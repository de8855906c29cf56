package memlimit

import (
	"math"
	"runtime"
	"strings"
	"testing"
	"testing/fstest"
)

func tree(files ...string) fstest.MapFS {
	m := fstest.MapFS{}
	for i := 0; i+1 < len(files); i += 2 {
		m[files[i]] = &fstest.MapFile{Data: []byte(files[i+1])}
	}
	return m
}

func TestCgroup(t *testing.T) {
	const self = "proc/self/cgroup"
	for _, tc := range []struct {
		name    string
		fs      fstest.MapFS
		limit   int64
		file    string
		wantErr string
	}{
		{name: "no proc", fs: tree()},
		{name: "v2 container, namespaced root", fs: tree(self, "0::/\n", "sys/fs/cgroup/memory.max", "536870912\n"),
			limit: 512 << 20, file: "/sys/fs/cgroup/memory.max"},
		{name: "v2 max", fs: tree(self, "0::/\n", "sys/fs/cgroup/memory.max", "max\n")},
		{name: "v2 nested, parent binds", fs: tree(self, "0::/system.slice/moat.service\n",
			"sys/fs/cgroup/system.slice/moat.service/memory.max", "max\n",
			"sys/fs/cgroup/system.slice/memory.max", "1073741824\n"),
			limit: 1 << 30, file: "/sys/fs/cgroup/system.slice/memory.max"},
		{name: "v2 nested, smallest wins", fs: tree(self, "0::/a/b\n",
			"sys/fs/cgroup/a/b/memory.max", "2147483648",
			"sys/fs/cgroup/a/memory.max", "4294967296"),
			limit: 2 << 30, file: "/sys/fs/cgroup/a/b/memory.max"},
		{name: "v2 path not visible in mount", fs: tree(self, "0::/../../host/x\n", "sys/fs/cgroup/memory.max", "268435456"),
			limit: 256 << 20, file: "/sys/fs/cgroup/memory.max"},
		{name: "v1 unlimited", fs: tree(self, "4:memory:/\n0::/\n", "sys/fs/cgroup/memory/memory.limit_in_bytes", "9223372036854771712\n")},
		{name: "v1 limited, joint controllers", fs: tree(self, "12:cpu,cpuacct:/\n4:memory,hugetlb:/docker/abc\n",
			"sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes", "104857600\n",
			"sys/fs/cgroup/memory/memory.limit_in_bytes", "9223372036854771712\n"),
			limit: 100 << 20, file: "/sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes"},
		{name: "v1 host path, bind-mounted own cgroup", fs: tree(self, "4:memory:/docker/abc\n",
			"sys/fs/cgroup/memory/memory.limit_in_bytes", "209715200"),
			limit: 200 << 20, file: "/sys/fs/cgroup/memory/memory.limit_in_bytes"},
		{name: "hybrid: v1 unlimited, v2 limited", fs: tree(self, "4:memory:/\n0::/\n",
			"sys/fs/cgroup/memory/memory.limit_in_bytes", "9223372036854771712",
			"sys/fs/cgroup/memory.max", "1048576"),
			limit: 1 << 20, file: "/sys/fs/cgroup/memory.max"},
		{name: "no memory controller", fs: tree(self, "3:cpu:/\n")},
		{name: "garbage lines skipped", fs: tree(self, "nonsense\n\x00:\n0::/\n", "sys/fs/cgroup/memory.max", "4096"),
			limit: 4096, file: "/sys/fs/cgroup/memory.max"},
		{name: "bad value", fs: tree(self, "0::/\n", "sys/fs/cgroup/memory.max", "12x\n"),
			wantErr: `"12x" is not a byte count`},
		{name: "negative", fs: tree(self, "0::/\n", "sys/fs/cgroup/memory.max", "-1"), wantErr: "not a byte count"},
		{name: "64 KiB of junk", fs: tree(self, "0::/\n", "sys/fs/cgroup/memory.max", strings.Repeat("9", 64<<10)),
			wantErr: "not a byte count"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			limit, file, err := Cgroup(tc.fs)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if limit != tc.limit || (tc.limit != 0 && file != tc.file) {
				t.Fatalf("Cgroup = %d %q, want %d %q", limit, file, tc.limit, tc.file)
			}
		})
	}
}

func TestDecide(t *testing.T) {
	const mib = 1 << 20
	for _, tc := range []struct {
		name               string
		configured, cgroup int64
		env                string
		runtime            int64
		want               Plan
	}{
		{name: "nothing", runtime: math.MaxInt64},
		{name: "memory_limit", configured: 1000 * mib, runtime: math.MaxInt64,
			want: Plan{Limit: 1000 * mib, Source: "memory_limit", Runtime: 900 * mib, Admit: 800 * mib}},
		{name: "memory_limit over cgroup", configured: 1000 * mib, cgroup: 2000 * mib, runtime: math.MaxInt64,
			want: Plan{Limit: 1000 * mib, Source: "memory_limit", Runtime: 900 * mib, Admit: 800 * mib}},
		{name: "cgroup", cgroup: 500 * mib, runtime: math.MaxInt64,
			want: Plan{Limit: 500 * mib, Source: "/sys/fs/cgroup/memory.max", Runtime: 450 * mib, Admit: 400 * mib}},
		{name: "GOMEMLIMIT keeps the runtime's limit", cgroup: 500 * mib, env: "300MiB", runtime: 300 * mib,
			want: Plan{Limit: 500 * mib, Source: "/sys/fs/cgroup/memory.max", Admit: 400 * mib}},
		{name: "GOMEMLIMIT alone", env: "900MiB", runtime: 900 * mib,
			want: Plan{Limit: 900 * mib, Source: "GOMEMLIMIT", Admit: 800 * mib}},
		{name: "GOMEMLIMIT off", env: "off", runtime: math.MaxInt64},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := Decide(tc.configured, tc.cgroup, "/sys/fs/cgroup/memory.max", tc.env, tc.runtime)
			if got != tc.want {
				t.Fatalf("Decide = %+v, want %+v", got, tc.want)
			}
		})
	}
}

// Usage follows live data, not garbage: it grows with what is kept.
func TestUsageFollowsLiveHeap(t *testing.T) {
	u := NewUsage()
	runtime.GC()
	before := u.Bytes()
	if before <= 0 {
		t.Fatalf("usage %d", before)
	}
	keep := make([][]byte, 64)
	for i := range keep {
		keep[i] = make([]byte, 1<<20)
	}
	runtime.GC()
	after := u.Bytes()
	if after-before < 48<<20 {
		t.Fatalf("usage grew by %d bytes holding 64 MiB", after-before)
	}
	runtime.KeepAlive(keep)
}
