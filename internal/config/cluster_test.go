package config

import (
	"slices"
	"strings"
	"testing"
)

func TestClusterSettings(t *testing.T) {
	c, err := parse(t, "cluster_nats nats://127.0.0.1:4222, tls://n2.example:4222\ncluster_nats_credentials moat.creds\ncluster_nats_cafile ca.pem\ncluster_nats_certfile c.pem\ncluster_nats_keyfile k.pem\ncluster_name prod-eu_1\ncluster_node_name node1.example\ncluster_replicas 5\n")
	if err != nil {
		t.Fatal(err)
	}
	k := c.Cluster
	if !k.Enabled() || !slices.Equal(k.NATS, []string{"nats://127.0.0.1:4222", "tls://n2.example:4222"}) ||
		k.Credentials != "/etc/moat/moat.creds" || k.CAFile != "/etc/moat/ca.pem" || k.CertFile != "/etc/moat/c.pem" ||
		k.KeyFile != "/etc/moat/k.pem" || k.Name != "prod-eu_1" || k.NodeName != "node1.example" || k.Replicas != 5 {
		t.Fatalf("cluster = %+v", k)
	}
	c, err = parse(t, "cluster_nats nats://127.0.0.1:4222\n")
	if err != nil {
		t.Fatal(err)
	}
	if c.Cluster.Name != "moat" || c.Cluster.Replicas != 3 || c.Cluster.NodeName != "" {
		t.Fatalf("defaults = %+v", c.Cluster)
	}
	// Off by default.
	c, err = parse(t, "listener 1883\n")
	if err != nil || c.Cluster.Enabled() {
		t.Fatalf("cluster on without cluster_nats: %+v %v", c.Cluster, err)
	}
}

func TestClusterErrors(t *testing.T) {
	cases := []struct{ conf, want string }{
		{"cluster_name x\n", "moat.conf:1: cluster settings need cluster_nats"},
		{"cluster_replicas 3\n", "cluster settings need cluster_nats"},
		{"cluster_nats http://127.0.0.1:4222\n", "scheme must be nats or tls"},
		{"cluster_nats nats://127.0.0.1\n", "nats://HOST:PORT"},
		{"cluster_nats nats://user:s3cret@127.0.0.1:4222\n", "credentials in the URL are refused"},
		{"cluster_nats ,\n", "at least one"},
		{"cluster_nats nats://127.0.0.1:4222\ncluster_name a.b\n", "moat.conf:2: cluster_name must be"},
		{"cluster_nats nats://127.0.0.1:4222\ncluster_name " + strings.Repeat("x", 65) + "\n", "cluster_name must be"},
		{"cluster_nats nats://127.0.0.1:4222\ncluster_node_name \"ip=1\"\n", "cluster_node_name must be"},
		{"cluster_nats nats://127.0.0.1:4222\ncluster_replicas 0\n", "cluster_replicas"},
		{"cluster_nats nats://127.0.0.1:4222\ncluster_nats_certfile c.pem\n", "go together"},
	}
	for _, c := range cases {
		_, err := parse(t, c.conf)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: error %v, want %q", c.conf, err, c.want)
		}
		if err != nil && strings.Contains(err.Error(), "s3cret") {
			t.Errorf("%q: the error quotes the secret: %v", c.conf, err)
		}
	}
}
