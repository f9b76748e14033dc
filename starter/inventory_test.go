package starter

import (
	"strings"
	"testing"
)

const goodYAML = `
hosts:
  - name: hv1
    address: 10.0.0.11
    libvirtURI: qemu+tcp://10.0.0.11/system
    bmc: {address: 10.0.1.11, user: admin, passwordFile: /etc/vmha/bmc/hv1}
    labels: {rack: r1}
  - name: hv2
    address: hv2.example.org
    probePort: 22
    libvirtURI: qemu+ssh://root@hv2.example.org/system
    bmc: {address: 10.0.1.12, port: 623, user: admin, passwordEnv: HV2_BMC}
    capacity: {memoryMiB: 65536, vcpus: 32}
`

func TestParseInventoryAcceptsYAMLAndJSON(t *testing.T) {
	inv, err := ParseInventory([]byte(goodYAML), ".yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(inv.Hosts) != 2 || inv.Hosts[1].ProbeAddress() != "hv2.example.org:22" || inv.Hosts[0].Labels["rack"] != "r1" {
		t.Fatalf("parsed %+v", inv)
	}
	js := `{"hosts":[{"name":"hv1","address":"10.0.0.11","libvirtURI":"qemu+tcp://10.0.0.11/system",
		"bmc":{"address":"10.0.1.11","user":"admin","passwordEnv":"HV1_BMC"}}]}`
	if _, err := ParseInventory([]byte(js), ".json"); err != nil {
		t.Fatal(err)
	}
}

// TestParseInventoryNamesWhatIsWrong: every refusal names the field and the value.
func TestParseInventoryNamesWhatIsWrong(t *testing.T) {
	for _, c := range []struct {
		name, doc, ext string
		want           []string
	}{
		{"unknown yaml field", strings.Replace(goodYAML, "labels:", "lables:", 1), ".yaml", []string{"lables"}},
		{"unknown json field", `{"hosts":[{"name":"hv1","adress":"x"}]}`, ".json", []string{"adress"}},
		{"duplicate name", strings.Replace(goodYAML, "name: hv2", "name: hv1", 1), ".yaml", []string{`hosts[1].name "hv1": duplicate of hosts[0]`}},
		{"bad address", strings.Replace(goodYAML, "address: 10.0.0.11", "address: 10.0.0.11:22", 1), ".yaml", []string{`address "10.0.0.11:22"`}},
		{"bad bmc address", strings.Replace(goodYAML, "address: 10.0.1.12", "address: 'bmc 2'", 1), ".yaml", []string{`bmc.address "bmc 2"`}},
		{"two secrets", strings.Replace(goodYAML, "passwordEnv: HV2_BMC", "passwordEnv: HV2_BMC, passwordFile: /x", 1), ".yaml", []string{"set exactly one"}},
		{"no secret", strings.Replace(goodYAML, ", passwordFile: /etc/vmha/bmc/hv1", "", 1), ".yaml", []string{"hv1: bmc.passwordEnv", "set exactly one"}},
		{"bad port", strings.Replace(goodYAML, "port: 623", "port: 70000", 1), ".yaml", []string{"bmc.port 70000"}},
		{"bad name", strings.Replace(goodYAML, "name: hv1", "name: 'hv 1'", 1), ".yaml", []string{`name "hv 1"`}},
		{"bad uri", strings.Replace(goodYAML, "libvirtURI: qemu+tcp://10.0.0.11/system", "libvirtURI: nonsense", 1), ".yaml", []string{`libvirtURI "nonsense"`}},
		{"empty", "hosts: []", ".yaml", []string{"hosts: empty"}},
		{"two errors at once", strings.Replace(strings.Replace(goodYAML, "port: 623", "port: -1", 1), "probePort: 22", "probePort: 99999", 1), ".yaml",
			[]string{"bmc.port -1", "probePort 99999"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseInventory([]byte(c.doc), c.ext)
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

// TestParseInventoryRefusesSeveralDocuments: only the first document would be applied and the hosts of the others
// retired, so a second document (YAML) or value (JSON) is refused, naming it.
func TestParseInventoryRefusesSeveralDocuments(t *testing.T) {
	second := "---\nhosts:\n  - name: hv3\n    address: 10.0.0.13\n    libvirtURI: qemu+tcp://10.0.0.13/system\n" +
		"    bmc: {address: 10.0.1.13, user: admin, passwordEnv: HV3_BMC}\n"
	for _, c := range []struct{ name, doc, ext, want string }{
		{"yaml", goodYAML + second, ".yaml", "document 2 (line 14)"},
		{"yaml, leading separator", "---\n" + goodYAML + second, ".yaml", "document 2"},
		{"json", `{"hosts":[{"name":"hv1","address":"10.0.0.11","libvirtURI":"qemu+tcp://10.0.0.11/system",
			"bmc":{"address":"10.0.1.11","user":"admin","passwordEnv":"HV1_BMC"}}]} {"hosts":[]}`, ".json", "second value"},
	} {
		t.Run(c.name, func(t *testing.T) {
			inv, err := ParseInventory([]byte(c.doc), c.ext)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %+v, %v; want an error naming %q", inv, err, c.want)
			}
		})
	}
	// A separator at the start or the end, with nothing after it, is still one document.
	if _, err := ParseInventory([]byte("---\n"+goodYAML+"---\n"), ".yaml"); err != nil {
		t.Fatal(err)
	}
}
