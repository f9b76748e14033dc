// Package systemd holds vmha's systemd units and example environment files; its test checks them offline.
package systemd

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"vmha/infra/config"
)

// units and the environment file each one reads.
var units = map[string]string{
	"vmha-server.service":     "server.env",
	"vmha-controller.service": "controller.env",
	"vmha-hypervisor.service": "hypervisor.env",
}

// TestUnitsVerify runs `systemd-analyze verify` on the units installed as the README says (the binary at
// /usr/local/bin/vmha, the environment files in /etc/vmha) under a temporary root.
func TestUnitsVerify(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is missing (Debian's systemd package): the units are not verified")
	}
	root := t.TempDir()
	install := func(from, to string, mode os.FileMode) {
		t.Helper()
		data, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		to = filepath.Join(root, to)
		if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(to, data, mode); err != nil {
			t.Fatal(err)
		}
	}
	install("/bin/true", "usr/local/bin/vmha", 0o755)
	// The units systemd itself ships (sysinit.target and the like), which every unit's default dependencies name.
	if err := os.MkdirAll(filepath.Join(root, "usr/lib/systemd"), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", "-a", "/usr/lib/systemd/system", filepath.Join(root, "usr/lib/systemd/")).CombinedOutput(); err != nil {
		t.Skipf("systemd's own units (/usr/lib/systemd/system) cannot be copied, the units are not verified: %v\n%s", err, out)
	}
	var paths []string
	for unit, env := range units {
		install(unit, "etc/systemd/system/"+unit, 0o644)
		install(env+".example", "etc/vmha/"+env, 0o600)
		paths = append(paths, filepath.Join(root, "etc/systemd/system", unit))
	}
	slices.Sort(paths)
	out, err := exec.Command(analyze, append([]string{"verify", "--root=" + root, "--man=no"}, paths...)...).CombinedOutput()
	text := string(out)
	if err != nil && (strings.Contains(text, "Failed to initialize manager") || strings.Contains(text, "Failed to connect to bus") ||
		strings.Contains(text, "Operation not permitted")) {
		t.Skipf("systemd-analyze verify cannot run in this container: %v\n%s", err, text)
	}
	if err != nil {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, text)
	}
	// verify exits 0 on some problems it only prints (an unknown key, a bad value): none is acceptable here.
	for _, line := range strings.Split(strings.TrimSpace(text), "\n") {
		if line != "" && !missingDependency(line) {
			t.Errorf("systemd-analyze verify: %s", line)
		}
	}
}

// missingDependency tells whether a verify message is only about a unit this root does not have (libvirtd,
// virtlockd, postgresql): on a real host their packages install them.
func missingDependency(line string) bool {
	for _, unit := range []string{"libvirtd.service", "virtlockd.service", "postgresql.service"} {
		if strings.Contains(line, unit) && strings.Contains(line, "not found") {
			return true
		}
	}
	return false
}

// TestUnitsPolicy checks what the deployment relies on: every role restarts whatever made it exit, reads its own
// environment file, and the hypervisor worker starts after libvirt and its lock daemon, only with the share mounted
// at the path it is configured with.
func TestUnitsPolicy(t *testing.T) {
	for unit, env := range units {
		u := parseUnit(t, unit)
		if got := u["Service.Restart"]; !slices.Equal(got, []string{"always"}) {
			t.Errorf("%s: Restart=%v, want always", unit, got)
		}
		if got := u["Service.EnvironmentFile"]; !slices.Equal(got, []string{"/etc/vmha/" + env}) {
			t.Errorf("%s: EnvironmentFile=%v, want /etc/vmha/%s", unit, got, env)
		}
		if got := u["Service.NoNewPrivileges"]; !slices.Equal(got, []string{"yes"}) {
			t.Errorf("%s: NoNewPrivileges=%v, want yes", unit, got)
		}
	}
	hv := parseUnit(t, "vmha-hypervisor.service")
	after := strings.Fields(strings.Join(hv["Unit.After"], " "))
	for _, dep := range []string{"libvirtd.service", "virtlockd.service", "network-online.target"} {
		if !slices.Contains(after, dep) {
			t.Errorf("vmha-hypervisor.service: After=%v, want %s in it", after, dep)
		}
	}
	share := envExample(t, "hypervisor.env")["VMHA_SHARE_PATH"]
	if got := hv["Unit.RequiresMountsFor"]; !slices.Equal(got, []string{share}) {
		t.Errorf("vmha-hypervisor.service: RequiresMountsFor=%v, want the share %s of hypervisor.env.example", got, share)
	}
	if got := settingDefault(t, "SharePath"); got != share {
		t.Errorf("hypervisor.env.example: VMHA_SHARE_PATH=%s, want VMHA_SHARE_PATH's default %s (the unit mounts it)", share, got)
	}
	// The watchdog device must stay visible to the worker.
	if _, ok := hv["Service.PrivateDevices"]; ok {
		t.Error("vmha-hypervisor.service: PrivateDevices would hide /dev/watchdog from the worker")
	}
}

// TestEnvExamples checks that each example environment file names only settings vmha has, set or commented out,
// and sets no secret.
func TestEnvExamples(t *testing.T) {
	known := map[string]bool{}
	st := reflect.TypeFor[config.Settings]()
	for i := range st.NumField() {
		if name := st.Field(i).Tag.Get("envconfig"); name != "" {
			known[config.Prefix+"_"+name] = true
		}
	}
	commented := regexp.MustCompile(`(?m)^#(` + config.Prefix + `_[A-Z0-9_]+)=`)
	for _, env := range units {
		vars := envExample(t, env)
		if len(vars) == 0 {
			t.Errorf("%s.example: sets nothing", env)
		}
		data, err := os.ReadFile(env + ".example")
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range commented.FindAllStringSubmatch(string(data), -1) {
			if !known[m[1]] {
				t.Errorf("%s.example: commented-out %s is not a vmha setting (vmha help env)", env, m[1])
			}
		}
		for name, value := range vars {
			if !known[name] {
				t.Errorf("%s.example: %s is not a vmha setting (vmha help env)", env, name)
			}
			if (strings.HasSuffix(name, "_PASSWORD") || strings.HasSuffix(name, "_SECRET")) && value != "" {
				t.Errorf("%s.example: %s set in the file; name a file only the service can read instead", env, name)
			}
		}
	}
}

// parseUnit reads a unit file into "Section.Key" -> values, in order.
func parseUnit(t *testing.T, file string) map[string][]string {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	values := map[string][]string{}
	section := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "["):
			section = strings.Trim(line, "[]")
		default:
			key, value, _ := strings.Cut(line, "=")
			values[section+"."+key] = append(values[section+"."+key], value)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return values
}

// envExample reads NAME=VALUE lines of an example environment file, comments left out.
func envExample(t *testing.T, env string) map[string]string {
	t.Helper()
	data, err := os.ReadFile(env + ".example")
	if err != nil {
		t.Fatal(err)
	}
	vars := map[string]string{}
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, value, ok := strings.Cut(line, "=")
		if !ok {
			t.Errorf("%s.example: %q is not NAME=VALUE", env, line)
			continue
		}
		vars[name] = value
	}
	return vars
}

// settingDefault is the default of a config.Settings field.
func settingDefault(t *testing.T, field string) string {
	t.Helper()
	f, ok := reflect.TypeFor[config.Settings]().FieldByName(field)
	if !ok {
		t.Fatalf("config.Settings has no field %s", field)
	}
	return f.Tag.Get("default")
}
