package acl

import (
	"errors"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
)

func user(name, id string) *Client { return &Client{Username: name, HasUsername: true, ClientID: id} }

func anon(id string) *Client { return &Client{ClientID: id} }

func loadSemantics(t testing.TB) *Rules {
	t.Helper()
	b, err := os.ReadFile("testdata/acl-semantics.acl")
	if err != nil {
		t.Fatal(err)
	}
	r, _, err := Parse("acl-semantics.acl", b)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// mosquitto.md §3 table (C), writes.
func TestSemanticsWrites(t *testing.T) {
	r := loadSemantics(t)
	tests := []struct {
		who   *Client
		topic string
		allow bool
		why   string
	}{
		{anon("a1"), "anon/x", true, "anonymous section"},
		{anon("a1"), "public/x", false, "read-only"},
		{user("alice", "a"), "anon/x", false, "anonymous section never applies to named users"},
		{user("alice", "a"), "shared/x", true, "user readwrite"},
		{user("alice", "a"), "shared/locked", false, "deny sorted first"},
		{user("alice", "a"), "ro/x", false, "read-only entry falls through"},
		{user("alice", "a"), "alice/x", true, "pattern"},
		{user("alice", "a"), "alice/private/x", false, "pattern deny"},
		{user("alice", "a"), "alice/private/open", true, "user entry beats pattern deny"},
		{user("bob", "b"), "shared/x", true, "no access word = readwrite"},
		{user("bob", "b"), "shared/locked", true, "alice's deny is not bob's"},
		{user("bob", "b"), "bob/private/x", false, "pattern deny"},
		{user("alice", "c1"), "clients/c1/x", false, "read-only %c pattern"},
		{user("admin", "ad"), "anything/at/all", true, "admin #"},
		{user("admin", "ad"), "$SYS/foo", false, "$SYS write"},
		{user("carol", "c"), "carol/x", true, "username without section still gets patterns"},
		{user("carol", "c"), "shared/x", false, "username without section has no list"},
	}
	for _, tt := range tests {
		if got := r.CanWrite(tt.who, tt.topic); got != tt.allow {
			t.Errorf("%s write %s = %v, want %v (%s); %s", tt.who.Username, tt.topic, got, tt.allow, tt.why,
				r.Explain(tt.who, OpWrite, tt.topic, true))
		}
	}
}

var seeded = []string{
	"anon/x", "public/x", "shared/x", "shared/locked", "ro/x", "alice/x", "alice/private/x",
	"alice/private/open", "bob/x", "bob/private/x", "clients/c1/x", "clients/c2/x", "$SYS/broker/uptime",
}

// readable returns, in seeded order, what c would receive on a subscription
// to filter (mosquitto grants it; each delivery is read-checked).
func readable(r *Rules, c *Client, filter string, topics []string) []string {
	var got []string
	for _, tp := range topics {
		if FilterMatches(filter, tp) && r.CanRead(c, tp) {
			got = append(got, tp)
		}
	}
	return got
}

// mosquitto.md §3 table (C), reads (subscribe "#", retained seeded by admin).
func TestSemanticsReads(t *testing.T) {
	r := loadSemantics(t)
	var nonDollar []string
	for _, s := range seeded {
		if !strings.HasPrefix(s, "$") {
			nonDollar = append(nonDollar, s)
		}
	}
	tests := []struct {
		name string
		who  *Client
		want []string
	}{
		{"anonymous", anon("a1"), []string{"anon/x", "public/x"}},
		{"alice", user("alice", "a"), []string{"shared/x", "ro/x", "alice/x", "alice/private/open"}},
		{"alice as c1", user("alice", "c1"), []string{"shared/x", "ro/x", "alice/x", "alice/private/open", "clients/c1/x"}},
		{"bob", user("bob", "b"), []string{"shared/x", "shared/locked", "bob/x"}},
		{"admin", user("admin", "ad"), nonDollar},
	}
	for _, tt := range tests {
		if !r.CanSubscribe(tt.who, "#", false) {
			t.Errorf("%s: non-strict subscribe # refused", tt.name)
		}
		if got := readable(r, tt.who, "#", seeded); !slices.Equal(got, tt.want) {
			t.Errorf("%s reads %q, want %q", tt.name, got, tt.want)
		}
	}
	// admin's "#" rule does not reach $SYS, even with an explicit subscription.
	if r.CanRead(user("admin", "ad"), "$SYS/broker/uptime") {
		t.Error("admin reads $SYS through #")
	}
}

const ownTree = "pattern readwrite %u/#\n"

// mosquitto.md §3 table (B): hardened jzombie set-up, alice subscribes.
func TestOwnTreeSubscriptions(t *testing.T) {
	r := mustParse(t, ownTree)
	alice := user("alice", "alice-1")
	topics := []string{"alice/r", "bob/r", "bob/sensors/r", "alice/x", "alice/sensors", "bob/x", "bob/sensors", "$SYS/broker/uptime"}
	tests := []struct {
		filter    string
		delivered []string
		strict    bool // strict-mode grant
	}{
		{"alice/#", []string{"alice/r", "alice/x", "alice/sensors"}, true},
		{"#", []string{"alice/r", "alice/x", "alice/sensors"}, false},
		{"+/sensors", []string{"alice/sensors"}, false},
		{"+/sensors/#", []string{"alice/sensors"}, false},
		{"+/r", []string{"alice/r"}, false},
		{"bob/#", nil, false},
		{"$SYS/#", nil, false},
	}
	for _, tt := range tests {
		if !r.CanSubscribe(alice, tt.filter, false) {
			t.Errorf("non-strict subscribe %s refused (mosquitto grants)", tt.filter)
		}
		if got := r.CanSubscribe(alice, tt.filter, true); got != tt.strict {
			t.Errorf("strict subscribe %s = %v, want %v", tt.filter, got, tt.strict)
		}
		if got := readable(r, alice, tt.filter, topics); !slices.Equal(got, tt.delivered) {
			t.Errorf("subscribe %s delivers %q, want %q", tt.filter, got, tt.delivered)
		}
	}
	writes := []struct {
		topic string
		allow bool
	}{{"bob/x", false}, {"bob/evil", false}, {"$SYS/foo", false}, {"alice/ok", true}}
	for _, w := range writes {
		if got := r.CanWrite(alice, w.topic); got != w.allow {
			t.Errorf("alice write %s = %v, want %v", w.topic, got, w.allow)
		}
	}
}

// mosquitto.md §3 table (A): the same ACL with anonymous access allowed.
func TestOwnTreeAnonymousAndIdentities(t *testing.T) {
	r := mustParse(t, ownTree)
	a := anon("x")
	if !r.CanSubscribe(a, "#", false) || r.CanSubscribe(a, "#", true) {
		t.Error("anonymous #: want granted non-strict, refused strict")
	}
	for _, tp := range []string{"alice/r", "x/y", "anything"} {
		if r.CanRead(a, tp) || r.CanWrite(a, tp) {
			t.Errorf("anonymous has access to %s", tp)
		}
	}
	// mosquitto lets "alice/evil" write into alice's tree; CheckIdentity is
	// how Moat refuses such a username.
	evil := user("alice/evil", "e")
	if !r.CanWrite(evil, "alice/evil/cmd") || !r.CanRead(user("alice", "a"), "alice/evil/cmd") {
		t.Error("mosquitto semantics for a '/' username changed")
	}
	if CheckIdentity("alice/evil") == nil {
		t.Error("CheckIdentity accepts alice/evil")
	}
	// '+' or '#' in the username or client id: denied outright.
	for _, c := range []*Client{user("alice/#", "e"), user("+", "e"), user("alice", "id#"), user("alice", "+")} {
		for _, tp := range []string{"alice/x", "alice/#/x", "e/x"} {
			if r.CanRead(c, tp) || r.CanWrite(c, tp) || r.CanSubscribe(c, "alice/#", true) {
				t.Errorf("dangerous identity %+v has access to %s", c, tp)
			}
		}
	}
	d := r.Explain(user("alice/#", "e"), OpWrite, "alice/x", true)
	if d.Allow || !strings.Contains(d.Reason, "contains '+' or '#'") {
		t.Errorf("Explain dangerous = %v", d)
	}
	// Hardening: an empty username or client id never substitutes.
	if r.CanWrite(user("", "e"), "/x") {
		t.Error("empty username reached /#")
	}
	rc := mustParse(t, "pattern readwrite c/%c/#\n")
	if rc.CanWrite(anon(""), "c//x") {
		t.Error("empty client id reached c//#")
	}
	if !rc.CanWrite(anon("k"), "c/k/x") {
		t.Error("a client-id pattern does not apply to anonymous clients")
	}
}

func TestSpecialCases(t *testing.T) {
	r := mustParse(t, "topic readwrite #\ntopic readwrite $SYS/#\ntopic readwrite $share/#\npattern read %u/#\n")
	a := anon("a")
	tests := []struct {
		op     Op
		topic  string
		strict bool
		allow  bool
	}{
		{OpWrite, "$SYS/broker/x", true, false},
		{OpWrite, "$SYSTEM/x", true, false}, // mosquitto compares the "$SYS" prefix
		{OpRead, "$SYS/broker/x", true, true},
		{OpWrite, "$share/g/x", true, false},
		{OpRead, "$share/g/x", true, false},
		{OpSubscribe, "$share/g/x", true, true},
		{OpSubscribe, "$share/g/#", true, true},
		{OpSubscribe, "$share/g/$SYS/#", true, true},
		{OpSubscribe, "$share//x", false, false},
		{OpSubscribe, "$share/g+/x", false, false},
		{OpSubscribe, "$share/g", false, false},
		{OpSubscribe, "$share/g/", false, false},
		{OpSubscribe, "a/#/b", false, false},
		{OpWrite, "a/+", true, false},
		{OpWrite, "", true, false},
		{OpRead, "a\x00b", true, false},
		{OpWrite, "a/b", true, true},
		{OpRead, strings.Repeat("a", maxTopicLen+1), true, false},
	}
	for _, tt := range tests {
		if got := r.Explain(a, tt.op, tt.topic, tt.strict); got.Allow != tt.allow {
			t.Errorf("%s %q strict=%v = %v", tt.op, tt.topic, tt.strict, got)
		}
	}
	if r.CanRead(nil, "a") {
		t.Error("nil client allowed")
	}
	var nilRules *Rules
	if nilRules.CanRead(a, "a") {
		t.Error("nil rules allow")
	}
	empty := mustParse(t, "# nothing\nuser alice\n")
	for _, op := range []Op{OpRead, OpWrite, OpSubscribe} {
		d := empty.Explain(user("alice", "a"), op, "a", true)
		if d.Allow || !strings.Contains(d.Reason, "no rules") {
			t.Errorf("empty file %s = %v", op, d)
		}
	}
}

func TestStrictSubscribe(t *testing.T) {
	r := loadSemantics(t)
	alice, bob := user("alice", "a"), user("bob", "b")
	tests := []struct {
		who    *Client
		filter string
		allow  bool
	}{
		{alice, "shared/#", true},       // the deny on shared/locked overlaps only part of it
		{alice, "shared/+", true},       // ditto
		{alice, "shared/locked", false}, // the deny covers the whole filter
		{alice, "ro/#", true},
		{alice, "ro/+/x", true},
		{alice, "alice/private/open", true}, // her user rule, before the pattern deny
		{alice, "alice/private/#", false},   // pattern deny covers it
		{alice, "alice/private/x", false},
		{alice, "alice/#", true},
		{alice, "alice/+", true},
		{alice, "#", false},
		{alice, "+/x", false},
		{alice, "anon/#", false},
		{user("alice", "c1"), "clients/c1/#", true},
		{user("alice", "c1"), "clients/+/#", false},
		{user("alice", "c1"), "clients/c2/#", false},
		{bob, "shared/locked", true},
		{bob, "bob/private/#", false},
		{bob, "bob/#", true},
		{anon("a1"), "public/#", true},
		{anon("a1"), "anon/+/y", true},
		{anon("a1"), "#", false},
		{user("admin", "ad"), "#", true},
		{user("admin", "ad"), "$SYS/#", false}, // # does not cover $ topics
		{user("admin", "ad"), "$share/g/anything/#", true},
	}
	for _, tt := range tests {
		if got := r.CanSubscribe(tt.who, tt.filter, true); got != tt.allow {
			t.Errorf("%s/%s strict subscribe %s = %v, want %v; %v", tt.who.Username, tt.who.ClientID, tt.filter, got, tt.allow,
				r.Explain(tt.who, OpSubscribe, tt.filter, true))
		}
	}
	// A write-only rule covering the filter does not grant it.
	w := mustParse(t, "topic write a/#\n")
	if w.CanSubscribe(anon("x"), "a/b", true) {
		t.Error("write-only rule granted a subscription")
	}
}

func TestExplain(t *testing.T) {
	r := loadSemantics(t)
	tests := []struct {
		who    *Client
		op     Op
		topic  string
		allow  bool
		line   int
		rule   string
		reason string
	}{
		{user("alice", "a"), OpWrite, "shared/locked", false, 7, "topic deny shared/locked", `user "alice" section decides write: deny`},
		{user("alice", "a"), OpWrite, "alice/private/open", true, 9, "topic readwrite alice/private/open", `user "alice" section`},
		{user("alice", "a"), OpWrite, "alice/private/x", false, 16, "pattern deny %u/private/#", "pattern decides write: deny"},
		{user("alice", "a"), OpRead, "ro/x", true, 8, "topic read ro/#", "read"},
		{anon("x"), OpRead, "public/a", true, 2, "topic read public/#", "anonymous section decides read: read"},
		{anon("x"), OpWrite, "nowhere", false, 0, "", "no rule matched: deny"},
		{user("alice", "a"), OpWrite, "$SYS/x", false, 0, "", "$SYS"},
		{user("alice", "a"), OpSubscribe, "alice/#", true, 15, "pattern readwrite %u/#", "covers"},
		{user("alice", "a"), OpSubscribe, "#", false, 0, "", "no rule matched: deny"},
	}
	for _, tt := range tests {
		d := r.Explain(tt.who, tt.op, tt.topic, true)
		if d.Allow != tt.allow || d.Line != tt.line || d.Rule != tt.rule || !strings.Contains(d.Reason, tt.reason) {
			t.Errorf("Explain(%s, %s, %s) = %+v, want allow=%v line=%d rule=%q reason~%q",
				tt.who.Username, tt.op, tt.topic, d, tt.allow, tt.line, tt.rule, tt.reason)
		}
		if tt.line > 0 && d.File != "acl-semantics.acl" {
			t.Errorf("File = %q", d.File)
		}
	}
	if s := r.Explain(user("alice", "a"), OpWrite, "shared/locked", true).String(); s != `deny: acl-semantics.acl:7: topic deny shared/locked (user "alice" section decides write: deny)` {
		t.Errorf("String() = %s", s)
	}
	if s := r.Explain(anon("x"), OpWrite, "nowhere", true).String(); s != "deny: no rule matched: deny" {
		t.Errorf("String() = %s", s)
	}
	if d := r.Explain(anon("x"), OpSubscribe, "nowhere/#", false); !d.Allow || !strings.Contains(d.Reason, "non-strict") {
		t.Errorf("non-strict = %v", d)
	}
}

func TestSubstitution(t *testing.T) {
	r := mustParse(t, "pattern readwrite pre-%u/#\npattern read x/%u%u/#\npattern write a/%c/%u/b\npattern read p/%%u\n")
	al := user("al", "id1")
	tests := []struct {
		op    Op
		topic string
		allow bool
	}{
		{OpWrite, "pre-al/x", true},
		{OpWrite, "pre-al", true},
		{OpWrite, "pre-alx/y", false},
		{OpWrite, "pre-/x", false},
		{OpRead, "x/alal/y", true},
		{OpRead, "x/al/y", false},
		{OpWrite, "x/alal/y", false},
		{OpWrite, "a/id1/al/b", true},
		{OpWrite, "a/id1/al/b/c", false},
		{OpWrite, "a/id1/al", false},
		{OpRead, "p/%al", true},
	}
	for _, tt := range tests {
		if got := r.Explain(al, tt.op, tt.topic, true); got.Allow != tt.allow {
			t.Errorf("%s %s = %v, want %v", tt.op, tt.topic, got, tt.allow)
		}
	}
	// A username with '/' spans levels exactly as mosquitto's text substitution does.
	ab := user("a/b", "c")
	if !r.CanWrite(ab, "pre-a/b/z") || r.CanWrite(ab, "pre-a/z") {
		t.Error("'/' in a substituted username")
	}
	// %u patterns never apply without a username; the written '$' rule holds.
	if r.CanWrite(anon("id1"), "a/id1//b") {
		t.Error("a username pattern applied to an anonymous client")
	}
	own := mustParse(t, ownTree)
	if own.CanRead(user("$SYS", "s"), "$SYS/broker/uptime") {
		t.Error("username $SYS turned the own-tree pattern into a $SYS grant")
	}
}

func TestManyUsers(t *testing.T) {
	var b strings.Builder
	for i := range 5000 {
		b.WriteString("user u")
		b.WriteString(strings.Repeat("x", i%7))
		b.WriteString(strconv.Itoa(i))
		b.WriteString("\ntopic readwrite home/")
		b.WriteString(strconv.Itoa(i))
		b.WriteString("/#\n")
	}
	r := mustParse(t, b.String())
	if s := r.Stats(); s.Users != 5000 || s.UserRules != 5000 {
		t.Fatalf("Stats = %+v", s)
	}
	c := user("u"+strings.Repeat("x", 4999%7)+"4999", "c")
	if !r.CanWrite(c, "home/4999/x") || r.CanWrite(c, "home/4998/x") {
		t.Error("user lookup")
	}
}

func TestCheckIdentity(t *testing.T) {
	tests := []struct {
		s  string
		ok bool
	}{
		{"alice", true}, {"homeassistant", true}, {"tasmota_1A2B3C", true}, {"a-b.c@d", true}, {"a$b", true},
		{"", false}, {"a/b", false}, {"a+", false}, {"#", false}, {"a\x00", false}, {"$SYS", false},
	}
	for _, tt := range tests {
		err := CheckIdentity(tt.s)
		if (err == nil) != tt.ok {
			t.Errorf("CheckIdentity(%q) = %v", tt.s, err)
		}
	}
}

func TestCheckClient(t *testing.T) {
	both := mustParse(t, "pattern read %u/#\npattern read c/%c/#\n")
	onlyU := mustParse(t, ownTree)
	none := mustParse(t, "topic read #\n")
	tests := []struct {
		r    *Rules
		c    *Client
		want string // "" = accepted
	}{
		{both, user("alice", "id1"), ""},
		{both, user("alice/x", "id1"), "username: unsafe identity"},
		{both, user("alice", "a/b"), "client id: unsafe identity"},
		{both, anon("id1"), ""},
		{both, anon(""), "client id: unsafe identity for %u/%c patterns: empty"},
		{onlyU, user("alice", "a/b"), ""},
		{onlyU, user("", "id"), "username: unsafe identity for %u/%c patterns: empty"},
		{onlyU, anon("x"), ""},
		{none, user("a/#", "+"), ""},
	}
	for _, tt := range tests {
		err := tt.r.CheckClient(tt.c)
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("CheckClient(%+v) = %v", tt.c, err)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want) || !errors.Is(err, ErrUnsafeIdentity)):
			t.Errorf("CheckClient(%+v) = %v, want %q", tt.c, err, tt.want)
		}
	}
}
