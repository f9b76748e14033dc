package types

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/url"
	"reflect"
	"slices"
	"strconv"
	"strings"
)

// Inventory is the set of hosts vmha watches: the whole truth, so a host left out of it is no longer watched.
type Inventory struct {
	Hosts []HostSpec `json:"hosts" yaml:"hosts"`
}

// Validate checks every host and names each bad field with its value; it reports all problems at once.
func (inv Inventory) Validate() error {
	var errs []error
	seen := map[string]int{}
	addrs := map[string]int{}
	bmcs := map[string]int{}
	for i, h := range inv.Hosts {
		if j, dup := seen[h.Name]; dup && h.Name != "" {
			errs = append(errs, fmt.Errorf("hosts[%d].name %q: duplicate of hosts[%d]", i, h.Name, j))
		}
		seen[h.Name] = i
		if err := h.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("hosts[%d]: %w", i, err))
		}
		// Two entries for one machine would let one monitor probe, and fence, another entry's machine.
		if h.Address != "" {
			key := normalHost(h.Address)
			if ip := net.ParseIP(key); ip != nil && ip.IsLoopback() {
				// Only test set-ups put hosts on a loopback address; there one machine simulates several
				// hosts, told apart by their probe port.
				key = normalHost(h.ProbeAddress())
			}
			if j, dup := addrs[key]; dup {
				errs = append(errs, fmt.Errorf("hosts[%d] (%s) address %q: same machine as hosts[%d] (%s), address %q",
					i, h.Name, h.Address, j, inv.Hosts[j].Name, inv.Hosts[j].Address))
			} else {
				addrs[key] = i
			}
		}
		if h.BMC.Address != "" {
			key := h.BMC.endpoint()
			if j, dup := bmcs[key]; dup {
				errs = append(errs, fmt.Errorf("hosts[%d] (%s) bmc %s: same BMC as hosts[%d] (%s): its monitor would read and fence the other host's power",
					i, h.Name, key, j, inv.Hosts[j].Name))
			} else {
				bmcs[key] = i
			}
		}
	}
	return errors.Join(errs...)
}

// endpoint is the BMC's address:port, normalised (default port, lower case, canonical IP form).
func (b BMCSpec) endpoint() string {
	port := b.Port
	if port == 0 {
		port = DefaultBMCPort
	}
	return net.JoinHostPort(normalHost(b.Address), strconv.Itoa(port))
}

// normalHost puts an address in one spelling: IP addresses in canonical form, DNS names in lower case without
// a trailing dot. A host:port keeps its port.
func normalHost(s string) string {
	if h, p, err := net.SplitHostPort(s); err == nil {
		return net.JoinHostPort(normalHost(h), p)
	}
	if ip := net.ParseIP(s); ip != nil {
		return ip.String()
	}
	return strings.TrimSuffix(strings.ToLower(s), ".")
}

// Normalize gives a spec one spelling for what means the same: no labels and empty labels are both nil.
// Compare normalised specs (Equal), or an unchanged entry looks changed.
func (h HostSpec) Normalize() HostSpec {
	if len(h.Labels) == 0 {
		h.Labels = nil
	}
	return h
}

// Equal says whether two specs watch a host the same way.
func (h HostSpec) Equal(o HostSpec) bool {
	return reflect.DeepEqual(h.Normalize(), o.Normalize())
}

// Validate checks one host entry.
func (h HostSpec) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if !ValidName(h.Name) {
		bad("name %q: want 1-63 letters, digits, '-', '_' or '.'", h.Name)
	}
	if !validHost(h.Address) {
		bad("host %s: address %q: want an IP address or DNS name", h.Name, h.Address)
	}
	if h.ProbePort < 0 || h.ProbePort > 65535 {
		bad("host %s: probePort %d: want 1..65535", h.Name, h.ProbePort)
	}
	if u, err := url.Parse(h.LibvirtURI); err != nil || u.Scheme == "" {
		bad("host %s: libvirtURI %q: want a libvirt URI such as qemu+tcp://10.0.0.5/system", h.Name, h.LibvirtURI)
	}
	if !validHost(h.BMC.Address) {
		bad("host %s: bmc.address %q: want an IP address or DNS name", h.Name, h.BMC.Address)
	}
	if h.BMC.Port < 0 || h.BMC.Port > 65535 {
		bad("host %s: bmc.port %d: want 1..65535", h.Name, h.BMC.Port)
	}
	if h.BMC.User == "" {
		bad("host %s: bmc.user: empty", h.Name)
	}
	if (h.BMC.PasswordEnv == "") == (h.BMC.PasswordFile == "") {
		bad("host %s: bmc.passwordEnv %q / bmc.passwordFile %q: set exactly one", h.Name, h.BMC.PasswordEnv, h.BMC.PasswordFile)
	}
	for _, k := range slices.Sorted(maps.Keys(h.Labels)) {
		v := h.Labels[k]
		if k == "" || strings.ContainsAny(k+v, "= ") {
			bad("host %s: label %q=%q: keys and values may not be empty or hold '=' or spaces", h.Name, k, v)
		}
	}
	if h.Capacity.MemoryMiB < 0 || h.Capacity.VCPUs < 0 {
		bad("host %s: capacity memoryMiB %d / vcpus %d: must not be negative", h.Name, h.Capacity.MemoryMiB, h.Capacity.VCPUs)
	}
	return errors.Join(errs...)
}

// validHost accepts an IP address or a DNS name, nothing with a port or a scheme.
func validHost(s string) bool {
	if net.ParseIP(s) != nil {
		return true
	}
	if s == "" || len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 || strings.HasPrefix(label, "-") || strings.HasSuffix(label, "-") {
			return false
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// ApplyResult says what an inventory apply changed, by host name.
type ApplyResult struct {
	Added     []string `json:"added,omitempty"`
	Updated   []string `json:"updated,omitempty"`
	Unchanged []string `json:"unchanged,omitempty"`
	Removed   []string `json:"removed,omitempty"`
}
