package types

import (
	"errors"
	"fmt"
	"net"
	"net/url"
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
	for i, h := range inv.Hosts {
		if j, dup := seen[h.Name]; dup && h.Name != "" {
			errs = append(errs, fmt.Errorf("hosts[%d].name %q: duplicate of hosts[%d]", i, h.Name, j))
		}
		seen[h.Name] = i
		if err := h.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("hosts[%d]: %w", i, err))
		}
	}
	return errors.Join(errs...)
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
	for k, v := range h.Labels {
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
