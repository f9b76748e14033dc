package domainxml

import (
	"reflect"
	"strings"
	"testing"

	"vmha/types"
)

const testUUID = "0b0c5a3e-5e4f-4d1c-9d5e-2f7a1b3c4d5e"

func spec() Spec {
	return Spec{
		Name: "db1", UUID: testUUID, VCPUs: 2, MemoryMiB: 512,
		DiskPath: "/share/vmha/disks/db1.qcow2", DiskFormat: "qcow2", DomainType: "qemu",
		Policy: types.HAPolicy{Enabled: true, Priority: 10, Rules: types.Rules{
			PinHosts: []string{"hv2"}, PinLabels: []string{"zone=a"},
			AvoidHosts: []string{"hv9"}, AvoidLabels: []string{"disk=slow"},
			AntiAffinityGroup: "db",
		}},
	}
}

func TestBuildParseRoundTrip(t *testing.T) {
	s := spec()
	doc, err := Build(s)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := Parse(doc)
	if err != nil {
		t.Fatal(err)
	}
	want := types.VMRecord{UUID: s.UUID, Name: s.Name, MemoryMiB: 512, VCPUs: 2, Policy: s.Policy}
	if !reflect.DeepEqual(rec, want) {
		t.Fatalf("Parse(Build()) = %+v, want %+v", rec, want)
	}
	for _, part := range []string{`type="qemu"`, `arch="x86_64"`, `<interface type="user">`, `<serial type="pty">`,
		`<on_crash>destroy</on_crash>`, `file="/share/vmha/disks/db1.qcow2"`, `type="qcow2"`, `bus="virtio"`} {
		if !strings.Contains(doc, part) {
			t.Errorf("built XML lacks %s:\n%s", part, doc)
		}
	}
	if strings.Contains(doc, "<graphics") {
		t.Errorf("built XML has graphics:\n%s", doc)
	}
}

func TestBuildMAC(t *testing.T) {
	s := spec()
	s.NetworkMAC = "52:54:00:AB:CD:EF"
	doc, err := Build(s)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(doc, `<mac address="52:54:00:ab:cd:ef">`) {
		t.Fatalf("MAC missing:\n%s", doc)
	}
}

func TestBuildValidation(t *testing.T) {
	cases := []struct {
		edit func(*Spec)
		want string
	}{
		{func(s *Spec) { s.Name = "bad name" }, `name "bad name"`},
		{func(s *Spec) { s.UUID = "nope" }, `uuid "nope"`},
		{func(s *Spec) { s.UUID = strings.ToUpper(testUUID) }, `uuid "0B0C5A3E`},
		{func(s *Spec) { s.VCPUs = 0 }, `vcpus 0`},
		{func(s *Spec) { s.MemoryMiB = 8 }, `memoryMiB 8`},
		{func(s *Spec) { s.DiskPath = "disk.qcow2" }, `diskPath "disk.qcow2"`},
		{func(s *Spec) { s.DiskFormat = "vmdk" }, `diskFormat "vmdk"`},
		{func(s *Spec) { s.DomainType = "xen" }, `domainType "xen"`},
		{func(s *Spec) { s.NetworkMAC = "01:00:5e:00:00:01" }, `networkMAC "01:00:5e:00:00:01"`},
		{func(s *Spec) { s.Policy.Rules.PinLabels = []string{"zone"} }, `label "zone"`},
	}
	for _, c := range cases {
		s := spec()
		c.edit(&s)
		_, err := Build(s)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Build error = %v, want it to name %s", err, c.want)
		}
	}
}

// virshDump is what libvirt stores after
//
//	virsh metadata test https://vmha.dev/xmlns/ha/1 --key ha --set \
//	  '<ha enabled="true" priority="5"><pin-host>hv2</pin-host><anti-affinity group="db"/></ha>'
//
// (captured from virsh against test:///default, with --key ha: the prefix is the operator's choice).
const virshDump = `<domain type='test' id='1'>
  <name>test</name>
  <uuid>6695eb01-f6a4-8304-79aa-97f2502e193f</uuid>
  <metadata>
    <other:app xmlns:other="https://example.com/app"><other:x>1</other:x></other:app>
    <ha:ha xmlns:ha="https://vmha.dev/xmlns/ha/1" enabled="true" priority="5">
      <ha:pin-host>hv2</ha:pin-host>
      <ha:anti-affinity group="db"/>
    </ha:ha>
  </metadata>
  <memory unit='KiB'>8388608</memory>
  <currentMemory unit='KiB'>2097152</currentMemory>
  <vcpu placement='static' current='1'>2</vcpu>
  <os>
    <type arch='i686'>hvm</type>
    <boot dev='hd'/>
  </os>
  <devices>
    <disk type='file' device='disk'>
      <source file='/guest/diskimage1'/>
      <target dev='vda' bus='virtio'/>
    </disk>
  </devices>
</domain>`

func TestParseVirshMetadata(t *testing.T) {
	rec, err := Parse(virshDump)
	if err != nil {
		t.Fatal(err)
	}
	want := types.VMRecord{UUID: "6695eb01-f6a4-8304-79aa-97f2502e193f", Name: "test", MemoryMiB: 8192, VCPUs: 2,
		Policy: types.HAPolicy{Enabled: true, Priority: 5, Rules: types.Rules{PinHosts: []string{"hv2"}, AntiAffinityGroup: "db"}}}
	if !reflect.DeepEqual(rec, want) {
		t.Fatalf("Parse = %+v, want %+v", rec, want)
	}
}

func TestParseWithoutMetadata(t *testing.T) {
	for name, doc := range map[string]string{
		"no metadata":    strings.Replace(virshDump, virshDump[strings.Index(virshDump, "<metadata>"):strings.Index(virshDump, "<memory")], "", 1),
		"other app only": strings.Replace(virshDump, "https://vmha.dev/xmlns/ha/1", "https://vmha.dev/xmlns/ha/2", 1),
	} {
		rec, err := Parse(doc)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !reflect.DeepEqual(rec.Policy, types.HAPolicy{}) {
			t.Errorf("%s: policy = %+v, want zero", name, rec.Policy)
		}
	}
}

func TestParseMinimalOptIn(t *testing.T) {
	doc := strings.Replace(virshDump, `enabled="true" priority="5"`, "", 1)
	rec, err := Parse(doc)
	if err != nil {
		t.Fatal(err)
	}
	if !rec.Policy.Enabled || rec.Policy.Priority != 0 {
		t.Fatalf("policy = %+v, want enabled with priority 0", rec.Policy)
	}
	rec, err = Parse(strings.Replace(virshDump, `enabled="true"`, `enabled="no"`, 1))
	if err != nil || rec.Policy.Enabled {
		t.Fatalf(`enabled="no": policy %+v, err %v`, rec.Policy, err)
	}
}

func TestSetPolicyReplacesOnlyOurs(t *testing.T) {
	p := types.HAPolicy{Enabled: true, Priority: 7, Rules: types.Rules{AvoidLabels: []string{"rack=r1"}}}
	doc, err := SetPolicy(virshDump, p)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(doc, Namespace); n != 1 {
		t.Fatalf("%d vmha elements after SetPolicy, want 1:\n%s", n, doc)
	}
	if !strings.Contains(doc, `<other:app xmlns:other="https://example.com/app"><other:x>1</other:x></other:app>`) {
		t.Fatalf("other application's metadata lost:\n%s", doc)
	}
	rec, err := Parse(doc)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(rec.Policy, p) {
		t.Fatalf("policy = %+v, want %+v", rec.Policy, p)
	}
	if rec.Name != "test" || rec.MemoryMiB != 8192 || rec.VCPUs != 2 || !strings.Contains(doc, "/guest/diskimage1") {
		t.Fatalf("rest of the domain changed: %+v\n%s", rec, doc)
	}
	again, err := SetPolicy(doc, types.HAPolicy{})
	if err != nil {
		t.Fatal(err)
	}
	if rec, err := Parse(again); err != nil || !reflect.DeepEqual(rec.Policy, types.HAPolicy{}) || strings.Count(again, Namespace) != 1 {
		t.Fatalf("second SetPolicy: policy %+v, err %v:\n%s", rec.Policy, err, again)
	}
}

func TestSetPolicyAddsMetadata(t *testing.T) {
	doc := "<domain type='kvm'><name>a</name><uuid>" + testUUID + "</uuid><memory>1024</memory></domain>"
	p := types.HAPolicy{Enabled: true, Priority: 1}
	out, err := SetPolicy(doc, p)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := Parse(out)
	if err != nil || !reflect.DeepEqual(rec.Policy, p) {
		t.Fatalf("policy %+v, err %v:\n%s", rec.Policy, err, out)
	}
	if _, err := SetPolicy(doc, types.HAPolicy{Rules: types.Rules{PinHosts: []string{"a b"}}}); err == nil || !strings.Contains(err.Error(), `"a b"`) {
		t.Fatalf("bad host accepted: %v", err)
	}
}

func TestMemoryUnits(t *testing.T) {
	for _, c := range []struct {
		unit  string
		value uint
		want  int64
	}{
		{"", 1048576, 1024}, {"KiB", 2048, 2}, {"k", 1536, 2}, {"MiB", 64, 64}, {"M", 64, 64},
		{"GiB", 2, 2048}, {"G", 1, 1024}, {"KB", 1048576, 1000}, {"MB", 1000, 954}, {"bytes", 1 << 20, 1}, {"b", 1, 1},
		{"TiB", 1, 1 << 20},
	} {
		got, err := toMiB(c.value, c.unit)
		if err != nil || got != c.want {
			t.Errorf("toMiB(%d, %q) = %d, %v; want %d", c.value, c.unit, got, err, c.want)
		}
	}
	if _, err := toMiB(1, "parsecs"); err == nil || !strings.Contains(err.Error(), `"parsecs"`) {
		t.Errorf("unknown unit accepted: %v", err)
	}
}

func TestParseErrors(t *testing.T) {
	cases := []struct {
		doc, want string
	}{
		{"not xml", "domain XML"},
		{"<domain><name>x</name></domain>", "no <uuid>"},
		{"<domain><uuid>" + testUUID + "</uuid></domain>", "no <name>"},
		{"<domain><name>x</name><uuid>" + testUUID + "</uuid></domain>", "no <memory>"},
		{strings.Replace(virshDump, "unit='KiB'", "unit='furlongs'", 1), `"furlongs"`},
		{strings.Replace(virshDump, `priority="5"`, `priority="high"`, 1), `priority "high"`},
		{strings.Replace(virshDump, `enabled="true"`, `enabled="maybe"`, 1), `enabled "maybe"`},
		{strings.Replace(virshDump, `<ha:pin-host>hv2</ha:pin-host>`, `<ha:pin-label>zone</ha:pin-label>`, 1), `label "zone"`},
		{strings.Replace(virshDump, `<ha:pin-host>hv2</ha:pin-host>`, `<ha:pin-host>hv2</ha:avoid-host>`, 1), "domain XML"},
	}
	for _, c := range cases {
		_, err := Parse(c.doc)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Parse error = %v, want it to mention %s", err, c.want)
		}
	}
}
