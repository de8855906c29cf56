package acl

import (
	"strconv"
	"strings"
	"testing"
)

// bigFile has many user sections plus the usual own-tree patterns.
func bigFile(users int) string {
	var b strings.Builder
	b.WriteString("topic read public/#\n")
	for i := range users {
		n := strconv.Itoa(i)
		b.WriteString("user u" + n + "\ntopic read shared/+/" + n + "\ntopic deny shared/x/" + n + "\ntopic write out/" + n + "/#\n")
	}
	b.WriteString("pattern readwrite %u/#\npattern deny %u/private/#\npattern read clients/%c/#\n")
	return b.String()
}

// The per-delivery, per-publish and per-subscribe checks must not allocate.
func TestChecksDoNotAllocate(t *testing.T) {
	r := mustParse(t, bigFile(100))
	c := user("u42", "c42")
	slash := user("a/b", "c")
	checks := []struct {
		name string
		fn   func()
	}{
		{"read own list", func() { r.CanRead(c, "shared/y/42") }},
		{"read pattern", func() { r.CanRead(c, "u42/some/topic") }},
		{"read pattern deny", func() { r.CanRead(c, "u42/private/x") }},
		{"read %c", func() { r.CanRead(c, "clients/c42/x") }},
		{"read no match", func() { r.CanRead(c, "nobody/x") }},
		{"read slash username", func() { r.CanRead(slash, "a/b/x") }},
		{"read anonymous", func() { r.CanRead(anon("x"), "public/x") }},
		{"read $SYS", func() { r.CanRead(c, "$SYS/broker/uptime") }},
		{"write", func() { r.CanWrite(c, "out/42/x") }},
		{"subscribe strict", func() { r.CanSubscribe(c, "u42/+/temp", true) }},
		{"subscribe shared", func() { r.CanSubscribe(c, "$share/g/u42/#", true) }},
		{"subscribe refused", func() { r.CanSubscribe(c, "#", true) }},
	}
	for _, ch := range checks {
		if n := testing.AllocsPerRun(200, ch.fn); n != 0 {
			t.Errorf("%s: %v allocations per check", ch.name, n)
		}
	}
}

func BenchmarkCanRead(b *testing.B) {
	r := mustParse(b, bigFile(5000))
	c := user("u4242", "c4242")
	cases := []struct{ name, topic string }{
		{"own-list", "shared/y/4242"},
		{"pattern", "u4242/sensors/temperature"},
		{"pattern-deny", "u4242/private/x"},
		{"no-match", "someone/else/entirely"},
	}
	for _, cs := range cases {
		b.Run(cs.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				r.CanRead(c, cs.topic)
			}
		})
	}
}

func BenchmarkCanSubscribeStrict(b *testing.B) {
	r := mustParse(b, bigFile(5000))
	c := user("u4242", "c4242")
	b.ReportAllocs()
	for b.Loop() {
		r.CanSubscribe(c, "u4242/+/temperature/#", true)
	}
}

func BenchmarkParse5000Users(b *testing.B) {
	data := []byte(bigFile(5000))
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := Parse("b.acl", data); err != nil {
			b.Fatal(err)
		}
	}
}

// A snapshot is shared by every connection without locks.
func TestConcurrentChecks(t *testing.T) {
	r := mustParse(t, bigFile(50))
	done := make(chan bool)
	for g := range 4 {
		go func() {
			c := user("u"+strconv.Itoa(g), "c"+strconv.Itoa(g))
			ok := true
			for i := range 2000 {
				n := strconv.Itoa(g)
				ok = ok && r.CanRead(c, "u"+n+"/x") && !r.CanRead(c, "u"+n+"/private/x") &&
					r.CanSubscribe(c, "shared/+/"+n, true) && r.CanWrite(c, "out/"+n+"/"+strconv.Itoa(i))
			}
			done <- ok
		}()
	}
	for range 4 {
		if !<-done {
			t.Error("a concurrent check gave a wrong answer")
		}
	}
}
