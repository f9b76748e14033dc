// Package domainxml reads and writes the libvirt domain XML of vmha VMs: the vmha metadata element that carries a
// VM's HA policy, the record the catalog keeps, and the definition of new VMs. Domains go through libvirtxml;
// only the small metadata element has its own struct, because libvirt hands metadata over as raw XML.
package domainxml

import (
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"net"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/google/uuid"
	"libvirt.org/go/libvirtxml"

	"vmha/types"
)

// Namespace is the XML namespace of vmha's metadata element. Operators opt a VM in with
//
//	virsh metadata DOMAIN https://vmha.dev/xmlns/ha/1 --key vmha --set '<ha enabled="true" priority="5"/>'
//
// libvirt then stores <vmha:ha xmlns:vmha="https://vmha.dev/xmlns/ha/1" ...> with every child element in the
// namespace. The element is found by namespace, so any prefix (--key) works.
const Namespace = "https://vmha.dev/xmlns/ha/1"

// haIn is the metadata element as read. Children match by local name in any namespace: libvirt puts them in
// the element's namespace, hand-written XML may not, and both mean the same.
type haIn struct {
	XMLName      xml.Name
	Enabled      *string  `xml:"enabled,attr"`
	Priority     *string  `xml:"priority,attr"`
	PinHosts     []string `xml:"pin-host"`
	PinLabels    []string `xml:"pin-label"`
	AvoidHosts   []string `xml:"avoid-host"`
	AvoidLabels  []string `xml:"avoid-label"`
	AntiAffinity []struct {
		Group string `xml:"group,attr"`
	} `xml:"anti-affinity"`
}

// haOut is the metadata element as written, with the prefix "vmha" as libvirt prints it after virsh --key vmha.
// Readers never rely on the prefix.
type haOut struct {
	XMLName      xml.Name         `xml:"vmha:ha"`
	NS           string           `xml:"xmlns:vmha,attr"`
	Enabled      bool             `xml:"enabled,attr"`
	Priority     int              `xml:"priority,attr"`
	PinHosts     []string         `xml:"vmha:pin-host"`
	PinLabels    []string         `xml:"vmha:pin-label"`
	AvoidHosts   []string         `xml:"vmha:avoid-host"`
	AvoidLabels  []string         `xml:"vmha:avoid-label"`
	AntiAffinity *antiAffinityOut `xml:"vmha:anti-affinity"`
}

type antiAffinityOut struct {
	Group string `xml:"group,attr"`
}

// Parse reads a VM's record from its domain XML: identity, size and HA policy. A domain without vmha metadata
// has the zero (disabled) policy. Owner, Generation and UpdatedAt are the catalog's and stay zero.
func Parse(doc string) (types.VMRecord, error) {
	var d libvirtxml.Domain
	if err := d.Unmarshal(doc); err != nil {
		return types.VMRecord{}, fmt.Errorf("domain XML: %w", err)
	}
	if d.UUID == "" {
		return types.VMRecord{}, fmt.Errorf("domain XML of %q: no <uuid>", d.Name)
	}
	if d.Name == "" {
		return types.VMRecord{}, fmt.Errorf("domain XML of %s: no <name>", d.UUID)
	}
	if d.Memory == nil {
		return types.VMRecord{}, fmt.Errorf("domain XML of %s: no <memory>", d.Name)
	}
	mem, err := toMiB(d.Memory.Value, d.Memory.Unit)
	if err != nil {
		return types.VMRecord{}, fmt.Errorf("domain XML of %s: <memory>: %w", d.Name, err)
	}
	// libvirt's default without a <vcpu> element is one vCPU; the maximum counts, as it can be hot-plugged.
	vcpus := 1
	if d.VCPU != nil && d.VCPU.Value > 0 {
		vcpus = int(d.VCPU.Value)
	}
	rec := types.VMRecord{UUID: d.UUID, Name: d.Name, MemoryMiB: mem, VCPUs: vcpus}
	if d.Metadata != nil {
		el, _, err := findPolicy(d.Metadata.XML)
		if err != nil {
			return types.VMRecord{}, fmt.Errorf("domain XML of %s: %w", d.Name, err)
		}
		if el != nil {
			if rec.Policy, err = el.policy(); err != nil {
				return types.VMRecord{}, fmt.Errorf("domain XML of %s: vmha metadata: %w", d.Name, err)
			}
		}
	}
	return rec, nil
}

// SetPolicy adds or replaces the vmha metadata element of a domain XML. Everything else is kept, including other
// applications' metadata, though libvirtxml may reformat it.
func SetPolicy(doc string, p types.HAPolicy) (string, error) {
	if err := validatePolicy(p); err != nil {
		return "", fmt.Errorf("policy: %w", err)
	}
	var d libvirtxml.Domain
	if err := d.Unmarshal(doc); err != nil {
		return "", fmt.Errorf("domain XML: %w", err)
	}
	inner := ""
	if d.Metadata != nil {
		inner = d.Metadata.XML
	}
	_, spans, err := findPolicy(inner)
	if err != nil {
		return "", fmt.Errorf("domain XML of %s: %w", d.Name, err)
	}
	// Cut from the end so earlier offsets stay valid.
	for i := len(spans) - 1; i >= 0; i-- {
		inner = inner[:spans[i][0]] + inner[spans[i][1]:]
	}
	el, err := encodePolicy(p)
	if err != nil {
		return "", err
	}
	d.Metadata = &libvirtxml.DomainMetadata{XML: strings.TrimSpace(inner) + el}
	out, err := d.Marshal()
	if err != nil {
		return "", fmt.Errorf("domain XML of %s: %w", d.Name, err)
	}
	return out, nil
}

// findPolicy looks through the children of <metadata> for elements in vmha's namespace. It returns the first one
// decoded and the byte ranges of all of them (libvirt keeps one per namespace, hand-written XML may not).
func findPolicy(inner string) (*haIn, [][2]int64, error) {
	dec := xml.NewDecoder(strings.NewReader(inner))
	var found *haIn
	var spans [][2]int64
	for {
		start := dec.InputOffset()
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			return found, spans, nil
		}
		if err != nil {
			return nil, nil, fmt.Errorf("<metadata>: %w", err)
		}
		se, ok := tok.(xml.StartElement)
		if !ok {
			continue
		}
		if se.Name.Space != Namespace {
			if err := dec.Skip(); err != nil {
				return nil, nil, fmt.Errorf("<metadata> element %s: %w", se.Name.Local, err)
			}
			continue
		}
		var el haIn
		if err := dec.DecodeElement(&el, &se); err != nil {
			return nil, nil, fmt.Errorf("vmha metadata: %w", err)
		}
		if found == nil {
			found = &el
		}
		spans = append(spans, [2]int64{start, dec.InputOffset()})
	}
}

func (el *haIn) policy() (types.HAPolicy, error) {
	// The element's presence is the opt-in: enabled="false" keeps the rules but turns HA off.
	p := types.HAPolicy{Enabled: true}
	if el.Enabled != nil {
		switch strings.ToLower(strings.TrimSpace(*el.Enabled)) {
		case "true", "yes", "1", "on":
		case "false", "no", "0", "off":
			p.Enabled = false
		default:
			return types.HAPolicy{}, fmt.Errorf("enabled %q: want true or false", *el.Enabled)
		}
	}
	if el.Priority != nil {
		n, err := strconv.Atoi(strings.TrimSpace(*el.Priority))
		if err != nil {
			return types.HAPolicy{}, fmt.Errorf("priority %q: want an integer", *el.Priority)
		}
		p.Priority = n
	}
	p.Rules = types.Rules{
		PinHosts:    trimAll(el.PinHosts),
		PinLabels:   trimAll(el.PinLabels),
		AvoidHosts:  trimAll(el.AvoidHosts),
		AvoidLabels: trimAll(el.AvoidLabels),
	}
	switch len(el.AntiAffinity) {
	case 0:
	case 1:
		p.Rules.AntiAffinityGroup = strings.TrimSpace(el.AntiAffinity[0].Group)
	default:
		return types.HAPolicy{}, fmt.Errorf("%d anti-affinity elements: want at most one", len(el.AntiAffinity))
	}
	if err := validatePolicy(p); err != nil {
		return types.HAPolicy{}, err
	}
	return p, nil
}

func trimAll(ss []string) []string {
	if len(ss) == 0 {
		return nil
	}
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = strings.TrimSpace(s)
	}
	return out
}

func validatePolicy(p types.HAPolicy) error {
	for _, h := range append(append([]string(nil), p.Rules.PinHosts...), p.Rules.AvoidHosts...) {
		if !types.ValidName(h) {
			return fmt.Errorf("host %q: want a host name", h)
		}
	}
	for _, l := range append(append([]string(nil), p.Rules.PinLabels...), p.Rules.AvoidLabels...) {
		if k, _, ok := strings.Cut(l, "="); !ok || strings.TrimSpace(k) == "" {
			return fmt.Errorf("label %q: want key=value", l)
		}
	}
	return nil
}

func encodePolicy(p types.HAPolicy) (string, error) {
	out := haOut{
		NS:          Namespace,
		Enabled:     p.Enabled,
		Priority:    p.Priority,
		PinHosts:    p.Rules.PinHosts,
		PinLabels:   p.Rules.PinLabels,
		AvoidHosts:  p.Rules.AvoidHosts,
		AvoidLabels: p.Rules.AvoidLabels,
	}
	if p.Rules.AntiAffinityGroup != "" {
		out.AntiAffinity = &antiAffinityOut{Group: p.Rules.AntiAffinityGroup}
	}
	b, err := xml.Marshal(out)
	if err != nil {
		return "", fmt.Errorf("vmha metadata: %w", err)
	}
	return string(b), nil
}

// toMiB converts a libvirt memory amount to MiB, rounding up. Units follow libvirt: no unit is KiB, "KB" is
// 1000 bytes, "K" or "KiB" 1024, and so on up to exbibytes, case-insensitively.
func toMiB(value uint, unit string) (int64, error) {
	u := strings.ToLower(unit)
	var scale uint64
	switch u {
	case "":
		scale = 1 << 10
	case "b", "bytes":
		scale = 1
	default:
		exp := strings.IndexByte("kmgtpe", u[0]) + 1
		if exp == 0 {
			return 0, fmt.Errorf("unit %q: unknown", unit)
		}
		base := uint64(0)
		switch u[1:] {
		case "", "ib":
			base = 1024
		case "b":
			base = 1000
		default:
			return 0, fmt.Errorf("unit %q: unknown", unit)
		}
		scale = 1
		for range exp {
			scale *= base
		}
	}
	hi, bytes := bits.Mul64(uint64(value), scale)
	if hi != 0 || bytes > 1<<62 {
		return 0, fmt.Errorf("%d %s: too large", value, unit)
	}
	return int64((bytes + 1<<20 - 1) >> 20), nil
}

// Spec describes a new vmha VM.
type Spec struct {
	Name string
	// UUID must be in canonical lowercase form: it names the catalog entry, and libvirt reports it that way.
	UUID      string
	VCPUs     int
	MemoryMiB int64
	// DiskPath is the VM's disk on the shared storage (absolute); DiskFormat is "qcow2" or "raw".
	DiskPath   string
	DiskFormat string
	Policy     types.HAPolicy
	// DomainType is "kvm" or "qemu" (TCG, where /dev/kvm is missing).
	DomainType string
	// NetworkMAC is optional; without it libvirt generates one when the domain is defined.
	NetworkMAC string
}

func (s Spec) validate() error {
	if !types.ValidName(s.Name) {
		return fmt.Errorf("name %q: want 1-63 letters, digits, '-', '_' or '.'", s.Name)
	}
	if u, err := uuid.Parse(s.UUID); err != nil || u.String() != s.UUID {
		return fmt.Errorf("uuid %q: want a canonical lowercase UUID", s.UUID)
	}
	if s.VCPUs < 1 || s.VCPUs > 256 {
		return fmt.Errorf("vcpus %d: want 1..256", s.VCPUs)
	}
	if s.MemoryMiB < 16 || s.MemoryMiB > 1<<30 {
		return fmt.Errorf("memoryMiB %d: want 16..%d", s.MemoryMiB, int64(1<<30))
	}
	if !filepath.IsAbs(s.DiskPath) || filepath.Clean(s.DiskPath) != s.DiskPath || strings.ContainsAny(s.DiskPath, ",:") {
		return fmt.Errorf("diskPath %q: want a clean absolute path without ',' or ':'", s.DiskPath)
	}
	if s.DiskFormat != "qcow2" && s.DiskFormat != "raw" {
		return fmt.Errorf("diskFormat %q: want qcow2 or raw", s.DiskFormat)
	}
	if s.DomainType != "kvm" && s.DomainType != "qemu" {
		return fmt.Errorf("domainType %q: want kvm or qemu", s.DomainType)
	}
	if s.NetworkMAC != "" {
		mac, err := net.ParseMAC(s.NetworkMAC)
		if err != nil || len(mac) != 6 || mac[0]&1 == 1 {
			return fmt.Errorf("networkMAC %q: want a unicast MAC like 52:54:00:12:34:56", s.NetworkMAC)
		}
	}
	if err := validatePolicy(s.Policy); err != nil {
		return fmt.Errorf("policy: %w", err)
	}
	return nil
}

// Build writes the domain XML of a new VM: x86_64, one virtio disk on the shared storage, user-mode networking
// (needs no bridge on the host, so it starts in any network namespace), a serial console on a pty, no graphics,
// and a crash that destroys the domain so that vmha, not libvirt, decides what happens next.
func Build(s Spec) (string, error) {
	if err := s.validate(); err != nil {
		return "", fmt.Errorf("domain spec: %w", err)
	}
	meta, err := encodePolicy(s.Policy)
	if err != nil {
		return "", err
	}
	port := uint(0)
	nic := libvirtxml.DomainInterface{
		Source: &libvirtxml.DomainInterfaceSource{User: &libvirtxml.DomainInterfaceSourceUser{}},
		Model:  &libvirtxml.DomainInterfaceModel{Type: "virtio"},
	}
	if s.NetworkMAC != "" {
		nic.MAC = &libvirtxml.DomainInterfaceMAC{Address: strings.ToLower(s.NetworkMAC)}
	}
	d := libvirtxml.Domain{
		Type:     s.DomainType,
		Name:     s.Name,
		UUID:     s.UUID,
		Metadata: &libvirtxml.DomainMetadata{XML: meta},
		Memory:   &libvirtxml.DomainMemory{Value: uint(s.MemoryMiB), Unit: "MiB"},
		VCPU:     &libvirtxml.DomainVCPU{Placement: "static", Value: uint(s.VCPUs)},
		OS: &libvirtxml.DomainOS{
			Type:        &libvirtxml.DomainOSType{Arch: "x86_64", Type: "hvm"},
			BootDevices: []libvirtxml.DomainBootDevice{{Dev: "hd"}},
		},
		Features:   &libvirtxml.DomainFeatureList{ACPI: &libvirtxml.DomainFeature{}, APIC: &libvirtxml.DomainFeatureAPIC{}},
		Clock:      &libvirtxml.DomainClock{Offset: "utc"},
		OnPoweroff: "destroy",
		OnReboot:   "restart",
		OnCrash:    "destroy",
		Devices: &libvirtxml.DomainDeviceList{
			Disks: []libvirtxml.DomainDisk{{
				Device: "disk",
				// cache=none keeps no dirty data in the page cache of a host that may die: what the guest was told
				// is written is on the share. It needs O_DIRECT, which ext4 and (since Linux 6.6) tmpfs support.
				Driver: &libvirtxml.DomainDiskDriver{Name: "qemu", Type: s.DiskFormat, Cache: "none"},
				Source: &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: s.DiskPath}},
				Target: &libvirtxml.DomainDiskTarget{Dev: "vda", Bus: "virtio"},
			}},
			Interfaces: []libvirtxml.DomainInterface{nic},
			Serials: []libvirtxml.DomainSerial{{
				Source: &libvirtxml.DomainChardevSource{Pty: &libvirtxml.DomainChardevSourcePty{}},
				Target: &libvirtxml.DomainSerialTarget{Port: &port},
			}},
			Consoles: []libvirtxml.DomainConsole{{
				Source: &libvirtxml.DomainChardevSource{Pty: &libvirtxml.DomainChardevSourcePty{}},
				Target: &libvirtxml.DomainConsoleTarget{Type: "serial", Port: &port},
			}},
		},
	}
	out, err := d.Marshal()
	if err != nil {
		return "", fmt.Errorf("domain XML of %s: %w", s.Name, err)
	}
	return out, nil
}
