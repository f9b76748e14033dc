package types

import (
	"strings"
	"testing"
)

func host(name, addr, bmc string, bmcPort int) HostSpec {
	return HostSpec{Name: name, Address: addr, LibvirtURI: "qemu+tcp://" + addr + "/system",
		BMC: BMCSpec{Address: bmc, Port: bmcPort, User: "admin", PasswordEnv: "BMC_" + name}}
}

// TestInventoryRefusesTwoEntriesForOneMachine: the same address, or the same BMC (port defaulted, spelling
// normalised), in two entries is refused, naming both entries and the value.
func TestInventoryRefusesTwoEntriesForOneMachine(t *testing.T) {
	for _, c := range []struct {
		name string
		a, b HostSpec
		want []string
	}{
		{"same address", host("hv1", "10.0.0.1", "10.0.1.1", 0), host("hv2", "10.0.0.1", "10.0.1.2", 0),
			[]string{"hosts[1] (hv2)", "hosts[0] (hv1)", `"10.0.0.1"`}},
		{"same DNS name in other case", host("hv1", "hv1.example.org", "10.0.1.1", 0), host("hv2", "HV1.example.org.", "10.0.1.2", 0),
			[]string{"hosts[1] (hv2)", "hosts[0] (hv1)", `"HV1.example.org."`}},
		{"same IPv6 spelt twice", host("hv1", "fd00::1", "10.0.1.1", 0), host("hv2", "fd00:0::0:1", "10.0.1.2", 0),
			[]string{"hosts[1] (hv2)", "hosts[0] (hv1)"}},
		{"same bmc, default port", host("hv1", "10.0.0.1", "10.0.1.1", 0), host("hv2", "10.0.0.2", "10.0.1.1", DefaultBMCPort),
			[]string{"hosts[1] (hv2)", "hosts[0] (hv1)", "bmc 10.0.1.1:623"}},
		{"same bmc name", host("hv1", "10.0.0.1", "bmc1.example.org", 9623), host("hv2", "10.0.0.2", "BMC1.example.org", 9623),
			[]string{"hosts[1] (hv2)", "hosts[0] (hv1)", "bmc bmc1.example.org:9623"}},
		{"same loopback probe endpoint", host("hv1", "127.0.0.1", "127.0.0.1", 9001), host("hv2", "127.0.0.1", "127.0.0.1", 9002),
			[]string{"hosts[1] (hv2)", "hosts[0] (hv1)", `"127.0.0.1"`}},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := Inventory{Hosts: []HostSpec{c.a, c.b}}.Validate()
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not name %q", err, w)
				}
			}
		})
	}
}

// TestInventoryAcceptsDistinctMachines: one BMC address with other ports (a chassis of several BMCs, or a lab),
// and simulated hosts on loopback told apart by probe port, are fine.
func TestInventoryAcceptsDistinctMachines(t *testing.T) {
	a, b := host("hv1", "127.0.0.1", "127.0.0.1", 9001), host("hv2", "127.0.0.1", "127.0.0.1", 9002)
	a.ProbePort, b.ProbePort = 7001, 7002
	c := host("hv3", "10.0.0.3", "10.0.1.3", 0)
	if err := (Inventory{Hosts: []HostSpec{a, b, c}}).Validate(); err != nil {
		t.Fatal(err)
	}
}

// TestHostSpecEqualIgnoresEmptyLabels: `labels: {}` and no labels are the same spec.
func TestHostSpecEqualIgnoresEmptyLabels(t *testing.T) {
	a, b := host("hv1", "10.0.0.1", "10.0.1.1", 0), host("hv1", "10.0.0.1", "10.0.1.1", 0)
	b.Labels = map[string]string{}
	if !a.Equal(b) || !b.Equal(a) {
		t.Fatal("empty labels differ from none")
	}
	b.Labels["rack"] = "r1"
	if a.Equal(b) {
		t.Fatal("a label is no change")
	}
	if n := (HostSpec{Labels: map[string]string{}}).Normalize(); n.Labels != nil {
		t.Fatalf("normalised labels %#v", n.Labels)
	}
}
