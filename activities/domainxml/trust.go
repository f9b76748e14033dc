package domainxml

import (
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/google/uuid"
	"libvirt.org/go/libvirtxml"
)

// QEMUNamespace is libvirt's namespace for QEMU pass-through (<qemu:commandline>, <qemu:override>, ...).
const QEMUNamespace = "http://libvirt.org/schemas/domain/qemu/1.0"

// hypervisorNamespaces is the common prefix of libvirt's per-hypervisor namespaces (qemu, lxc, bhyve, xen,
// vmware): every element in them hands something to the hypervisor that libvirt does not check.
const hypervisorNamespaces = "http://libvirt.org/schemas/domain/"

// CheckTrusted decides whether a domain XML read from the catalog may be defined on a host. The catalog is
// written by anyone who can write the share, and whatever it holds is defined and started as root on whichever
// host recovers the VM, so it is checked like untrusted input. It refuses:
//   - a document that does not parse (by libvirtxml, and as plain XML with namespaces), or that carries a DTD
//     (libvirt expands entities that this check would not see);
//   - hypervisor pass-through: <qemu:commandline> (runs any command as root), <qemu:capabilities>,
//     <qemu:override>, <qemu:deprecation>, <lxc:namespace>, <bhyve:commandline>, <xen:commandline>, and any other
//     element in one of libvirt's hypervisor namespaces, wherever it is in the document;
//   - a <uuid> missing or other than wantUUID (the entry's name): defining it would create or replace another
//     domain than the one the catalog entry is for.
//
// The error names the VM and everything refused.
func CheckTrusted(doc, wantUUID string) error {
	var d libvirtxml.Domain
	if err := d.Unmarshal(doc); err != nil {
		return fmt.Errorf("domain XML of VM %s: refused: not a parseable libvirt domain: %w", wantUUID, err)
	}
	vm := fmt.Sprintf("VM %s", wantUUID)
	if d.Name != "" {
		vm = fmt.Sprintf("VM %q (%s)", d.Name, wantUUID)
	}
	var refused []string
	for _, f := range []struct {
		present bool
		what    string
	}{
		{d.QEMUCommandline != nil, "<qemu:commandline> (QEMU arguments and environment passed through)"},
		{d.QEMUCapabilities != nil, "<qemu:capabilities> (QEMU capabilities overridden)"},
		{d.QEMUOverride != nil, "<qemu:override> (QEMU device properties passed through)"},
		{d.QEMUDeprecation != nil, "<qemu:deprecation> (QEMU deprecation behaviour passed through)"},
		{d.LXCNamespace != nil, "<lxc:namespace> (host namespaces shared)"},
		{d.BHyveCommandline != nil, "<bhyve:commandline> (bhyve arguments passed through)"},
		{d.XenCommandline != nil, "<xen:commandline> (Xen arguments passed through)"},
	} {
		if f.present {
			refused = append(refused, f.what)
		}
	}
	raw, err := rawRefusals(doc)
	if err != nil {
		return fmt.Errorf("domain XML of %s: refused: not parseable as XML: %w", vm, err)
	}
	for _, r := range raw {
		if !strings.Contains(strings.Join(refused, "\n"), "<"+r.short+">") {
			refused = append(refused, r.long)
		}
	}
	if len(refused) > 0 {
		return fmt.Errorf("domain XML of %s: refused: hypervisor pass-through, which libvirt hands to the hypervisor unchecked: %s",
			vm, strings.Join(refused, "; "))
	}
	if d.UUID == "" {
		return fmt.Errorf("domain XML of %s: refused: no <uuid> (libvirt would define it under a new one)", vm)
	}
	got, gerr := uuid.Parse(d.UUID)
	want, werr := uuid.Parse(wantUUID)
	if gerr != nil || werr != nil || got != want {
		return fmt.Errorf("domain XML of %s: refused: its <uuid> is %s, not the catalog entry's %s", vm, d.UUID, wantUUID)
	}
	return nil
}

type refusal struct{ short, long string }

// rawRefusals scans the document as plain XML, independently of libvirtxml, which may not decode everything
// (an element it has no field for, pass-through inside <metadata> or a device). An element whose prefix was
// never declared is refused too: no XML that libvirt writes has one.
func rawRefusals(doc string) ([]refusal, error) {
	dec := xml.NewDecoder(strings.NewReader(doc))
	var out []refusal
	seen := map[string]bool{}
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		switch t := tok.(type) {
		case xml.Directive:
			return nil, errors.New("a <!DOCTYPE> or other directive (entities would be expanded by libvirt)")
		case xml.StartElement:
			ns := t.Name.Space
			var r refusal
			switch {
			case strings.HasPrefix(ns, hypervisorNamespaces):
				kind := strings.TrimSuffix(strings.TrimPrefix(ns, hypervisorNamespaces), "/1.0")
				r.short = kind + ":" + t.Name.Local
				r.long = fmt.Sprintf("<%s> (element %s in %s)", r.short, t.Name.Local, ns)
			case ns != "" && !strings.Contains(ns, ":"):
				// encoding/xml leaves an undeclared prefix as the space.
				r.short = ns + ":" + t.Name.Local
				r.long = fmt.Sprintf("<%s> (prefix %q never declared)", r.short, ns)
			default:
				continue
			}
			if !seen[r.long] {
				seen[r.long] = true
				out = append(out, r)
			}
			// Its children (<qemu:arg>, ...) are part of what is refused already.
			if err := dec.Skip(); err != nil {
				return nil, err
			}
		}
	}
}
