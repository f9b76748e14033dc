package domainxml

import (
	"strings"
	"testing"
)

func TestCheckTrusted(t *testing.T) {
	clean, err := Build(spec())
	if err != nil {
		t.Fatal(err)
	}
	const qemuNS = `xmlns:qemu="http://libvirt.org/schemas/domain/qemu/1.0"`
	// withRoot puts attributes on <domain ...>; before inserts elements before </domain>.
	withRoot := func(doc, attrs string) string {
		return strings.Replace(doc, `<domain type="qemu">`, `<domain type="qemu" `+attrs+`>`, 1)
	}
	before := func(doc, el string) string { return strings.Replace(doc, "</domain>", el+"</domain>", 1) }
	planted := withRoot(before(clean, `<qemu:commandline><qemu:arg value='-set'/><qemu:arg value='device.net0.script=/share/evil.sh'/>`+
		`<qemu:env name='X' value='1'/></qemu:commandline>`), qemuNS)

	for _, c := range []struct {
		name string
		doc  string
		uuid string
		// want is every part the error must hold; none means accepted.
		want []string
	}{
		{"clean", clean, testUUID, nil},
		{"uuid in another form", clean, strings.ToUpper(testUUID), nil},
		{"other metadata", strings.Replace(clean, "</metadata>", `<app:x xmlns:app="https://example.org/app/1" a="1"/></metadata>`, 1), testUUID, nil},
		{"qemu commandline", planted, testUUID, []string{`VM "db1" (` + testUUID + `)`, "refused", "<qemu:commandline>"}},
		{"qemu override", withRoot(before(clean, `<qemu:override><qemu:device alias='net0'><qemu:frontend>`+
			`<qemu:property name='romfile' type='string' value='/etc/shadow'/></qemu:frontend></qemu:device></qemu:override>`), qemuNS),
			testUUID, []string{"refused", "<qemu:override>"}},
		{"qemu capabilities", withRoot(before(clean, `<qemu:capabilities><qemu:del capability='sandbox'/></qemu:capabilities>`), qemuNS),
			testUUID, []string{"<qemu:capabilities>"}},
		{"qemu deprecation", withRoot(before(clean, `<qemu:deprecation behavior='crash'/>`), qemuNS), testUUID, []string{"<qemu:deprecation>"}},
		{"lxc namespace", withRoot(before(clean, `<lxc:namespace><lxc:sharenet type='netns' value='red'/></lxc:namespace>`),
			`xmlns:lxc="http://libvirt.org/schemas/domain/lxc/1.0"`), testUUID, []string{"<lxc:namespace>"}},
		{"bhyve commandline", withRoot(before(clean, `<bhyve:commandline><bhyve:arg value='-x'/></bhyve:commandline>`),
			`xmlns:bhyve="http://libvirt.org/schemas/domain/bhyve/1.0"`), testUUID, []string{"<bhyve:commandline>"}},
		{"xen commandline", withRoot(before(clean, `<xen:commandline><xen:arg value='-x'/></xen:commandline>`),
			`xmlns:xen="http://libvirt.org/schemas/domain/xen/1.0"`), testUUID, []string{"<xen:commandline>"}},
		// libvirtxml has no field for these; only the raw scan sees them.
		{"qemu element hidden in a device", strings.Replace(clean, "</devices>",
			`<qemu:commandline xmlns:qemu="http://libvirt.org/schemas/domain/qemu/1.0"><qemu:arg value='-x'/></qemu:commandline></devices>`, 1),
			testUUID, []string{"<qemu:commandline>", QEMUNamespace}},
		{"qemu element in metadata", strings.Replace(clean, "</metadata>", `<q:anything xmlns:q="http://libvirt.org/schemas/domain/qemu/1.0"/></metadata>`, 1),
			testUUID, []string{"<qemu:anything>"}},
		{"qemu namespace under another prefix", withRoot(before(clean, `<q:commandline><q:arg value='-x'/></q:commandline>`),
			`xmlns:q="http://libvirt.org/schemas/domain/qemu/1.0"`), testUUID, []string{"<qemu:commandline>"}},
		{"default namespace is qemu's", before(clean, `<commandline xmlns="http://libvirt.org/schemas/domain/qemu/1.0"><arg value='-x'/></commandline>`),
			testUUID, []string{"<qemu:commandline>"}},
		{"undeclared prefix", before(clean, `<qemu:commandline><qemu:arg value='-x'/></qemu:commandline>`),
			testUUID, []string{"refused", `prefix "qemu" never declared`}},
		{"doctype with entities", `<!DOCTYPE domain [<!ENTITY x "y">]>` + clean, testUUID, []string{"refused", "DOCTYPE"}},
		{"other uuid", clean, "11111111-2222-3333-4444-555555555555",
			[]string{`VM "db1" (11111111-2222-3333-4444-555555555555)`, "refused", testUUID, "not the catalog entry's"}},
		{"no uuid", strings.Replace(clean, "<uuid>"+testUUID+"</uuid>", "", 1), testUUID, []string{"refused", "no <uuid>"}},
		{"not XML", "<domain><name>x</nam", testUUID, []string{"VM " + testUUID, "refused", "not a parseable"}},
		{"not a domain", "<network><name>x</name></network>", testUUID, []string{"refused", "not a parseable"}},
		{"empty", "", testUUID, []string{"refused"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := CheckTrusted(c.doc, c.uuid)
			if len(c.want) == 0 {
				if err != nil {
					t.Fatalf("CheckTrusted refused a clean domain: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("CheckTrusted accepted:\n%s", c.doc)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}
