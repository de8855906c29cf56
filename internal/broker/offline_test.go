package broker_test

import (
	"reflect"
	"strings"
	"testing"

	"github.com/moat-mqtt/moat/internal/broker"
	"github.com/moat-mqtt/moat/internal/config"
)

func TestUnreadableTopics(t *testing.T) {
	topics := []string{"alice/x", "bob/y", "home/door", "public/news"}
	for _, tc := range []struct {
		name string
		s    setup
		want []string
	}{
		{"no acl_file", setup{}, nil},
		{"own trees", setup{acl: "pattern readwrite %u/#\n"}, []string{"home/door", "public/news"}},
		{"anonymous read rule", setup{acl: "topic read public/#\npattern readwrite %u/#\n", anonymous: true}, []string{"home/door"}},
		{"anonymous rule without anonymous clients", setup{acl: "topic read public/#\n"}, []string{"alice/x", "bob/y", "home/door", "public/news"}},
		{"per user", setup{acl: "user bob\ntopic read home/#\n"}, []string{"alice/x", "bob/y", "public/news"}},
		{"no users, no anonymous", setup{users: map[string]string{}}, []string{"alice/x", "bob/y", "home/door", "public/news"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conf, _, _ := writeSetup(t, t.TempDir(), tc.s)
			cfg, err := config.Load(conf, nil)
			if err != nil {
				t.Fatal(err)
			}
			got, err := broker.UnreadableTopics(cfg, topics)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestOpenStoreNeedsPersistence(t *testing.T) {
	conf, _, _ := writeSetup(t, t.TempDir(), setup{})
	cfg, err := config.Load(conf, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := broker.OpenStore(broker.Options{Config: cfg}); err == nil || !strings.Contains(err.Error(), "persistence is off") {
		t.Fatalf("OpenStore without persistence: %v", err)
	}
}
