package temporalserver

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"go.temporal.io/server/common/primitives"
	"gopkg.in/yaml.v3"
)

func TestClusterOptionsValidate(t *testing.T) {
	valid := ClusterOptions{
		ListenAddress: "10.0.0.21", Namespace: "vmha",
		Postgres: Postgres{Address: "db.example:5432", User: "temporal"},
	}
	if err := valid.withDefaults().validate(); err != nil {
		t.Fatalf("valid options: %v", err)
	}
	for _, tc := range []struct {
		change func(*ClusterOptions)
		want   string
	}{
		{func(o *ClusterOptions) { o.ListenAddress = "0.0.0.0" }, "BroadcastAddress: empty with ListenAddress=0.0.0.0"},
		{func(o *ClusterOptions) { o.BroadcastAddress = "node1.example" }, `BroadcastAddress="node1.example"`},
		{func(o *ClusterOptions) { o.FrontendPort = 40000 }, "FrontendPort=40000"},
		{func(o *ClusterOptions) { o.FrontendPort = 250 }, "FrontendPort=250"},
		{func(o *ClusterOptions) { o.UIPort = 7234 }, "UIPort=7234: taken by the node's services"},
		{func(o *ClusterOptions) { o.UIPort = 6939 }, "UIPort=6939: taken by the node's services"},
		{func(o *ClusterOptions) { o.HistoryShards = -1 }, "HistoryShards=-1"},
		{func(o *ClusterOptions) { o.Postgres.Address = "db.example" }, `VMHA_POSTGRES_ADDRESS="db.example": server 1 ("db.example") is not host:port`},
		{func(o *ClusterOptions) { o.Postgres.User = "" }, "User: empty"},
		{func(o *ClusterOptions) { o.Postgres.VisibilityDatabase = "temporal" }, `VisibilityDatabase="temporal": same as Database`},
		{func(o *ClusterOptions) { o.TLS = &TLSFiles{Cert: "c.pem"} }, "Cert, Key and ClientCA are all required"},
	} {
		o := valid
		tc.change(&o)
		err := o.withDefaults().validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("options %+v: error %v, want one containing %q", o, err, tc.want)
		}
	}
}

// TestServicePorts pins the layout to Temporal's own defaults, which docs, firewall rules and the systemd example
// name: frontend 7233, history 7234, matching 7235, worker 7239, membership 300 below each.
func TestServicePorts(t *testing.T) {
	want := map[primitives.ServiceName][2]int{
		primitives.FrontendService: {7233, 6933},
		primitives.HistoryService:  {7234, 6934},
		primitives.MatchingService: {7235, 6935},
		primitives.WorkerService:   {7239, 6939},
	}
	got := servicePorts(7233)
	if len(got) != len(want) {
		t.Fatalf("servicePorts(7233): %d services, want %d", len(got), len(want))
	}
	for name, ports := range want {
		if p := got[name]; p.GRPCPort != ports[0] || p.MembershipPort != ports[1] {
			t.Errorf("%s: gRPC %d membership %d, want %d and %d", name, p.GRPCPort, p.MembershipPort, ports[0], ports[1])
		}
	}
}

// TestPostgresConnString checks that the password reaches PostgreSQL escaped and that TLS verifies the server.
func TestPostgresConnString(t *testing.T) {
	p := Postgres{Address: "db.example:5432", User: "temporal", Password: "p@ss:w/rd"}
	if got := p.connString("postgres"); got != "postgres://temporal:p%40ss%3Aw%2Frd@db.example:5432/postgres?application_name=vmha&connect_timeout=2&sslmode=disable&target_session_attrs=read-write" {
		t.Errorf("plain: %s", got)
	}
	p.TLSCAFile = "/etc/vmha/pg-ca.pem"
	if got := p.connString("postgres"); !strings.Contains(got, "sslmode=verify-full") || !strings.Contains(got, "sslrootcert=%2Fetc%2Fvmha%2Fpg-ca.pem") {
		t.Errorf("TLS: %s, want sslmode=verify-full with the CA", got)
	}
	if conf := p.sqlConfig("temporal"); conf.TLS == nil || !conf.TLS.EnableHostVerification || conf.TLS.CaFile != p.TLSCAFile {
		t.Errorf("TLS: Temporal's config %+v, want host verification against %s", conf.TLS, p.TLSCAFile)
	}
}

// TestComposeDynamicConfig keeps docker-compose.yml's Temporal on the dynamic configuration of a cluster node: every
// value a node sets, infra/compose/dynamicconfig.yaml sets too, equal.
func TestComposeDynamicConfig(t *testing.T) {
	data, err := os.ReadFile("../compose/dynamicconfig.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var file map[string][]struct {
		Value any `yaml:"value"`
	}
	if err := yaml.Unmarshal(data, &file); err != nil {
		t.Fatalf("infra/compose/dynamicconfig.yaml: %v", err)
	}
	compose := map[string]string{}
	for key, values := range file {
		if len(values) != 1 {
			t.Errorf("infra/compose/dynamicconfig.yaml: %s has %d values, want one for every constraint", key, len(values))
			continue
		}
		compose[strings.ToLower(key)] = fmt.Sprint(values[0].Value)
	}
	for key, want := range clusterDynamicConfig() {
		if got, ok := compose[key.String()]; !ok || got != fmt.Sprint(want) {
			t.Errorf("infra/compose/dynamicconfig.yaml: %s = %q, want %v as on a cluster node", key, got, want)
		}
	}
}
