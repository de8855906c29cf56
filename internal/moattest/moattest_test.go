package moattest

import (
	"crypto/x509"
	"slices"
	"testing"
)

func TestLogBufferLines(t *testing.T) {
	var l LogBuffer
	_, _ = l.Write([]byte("a=1 b=2\nb=2 c=3\n\na=1\n"))
	for _, c := range []struct {
		words []string
		want  []string
	}{
		{[]string{"a=1"}, []string{"a=1 b=2", "a=1"}},
		{[]string{"a=1", "b=2"}, []string{"a=1 b=2"}},
		{[]string{"zzz"}, nil},
		{nil, []string{"a=1 b=2", "b=2 c=3", "a=1"}},
	} {
		if got := l.Lines(c.words...); !slices.Equal(got, c.want) {
			t.Errorf("Lines(%q) = %q, want %q", c.words, got, c.want)
		}
	}
}

func TestCAIssuesVerifiableCertificates(t *testing.T) {
	ca := NewCA(t)
	for _, name := range []string{"127.0.0.1", "::1", "localhost", "mqtt.example.test"} {
		c := ca.Issue(t, name)
		if _, err := c.Leaf.Verify(x509.VerifyOptions{Roots: ca.Pool(), DNSName: name}); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := ca.Issue(t, "a.test").Leaf.Verify(x509.VerifyOptions{Roots: NewCA(t).Pool()}); err == nil {
		t.Error("a certificate verified against another CA")
	}
}
