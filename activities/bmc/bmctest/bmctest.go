// Package bmctest runs OpenIPMI's ipmi_sim on loopback as a real IPMI 2.0 (lanplus) BMC for tests. Chassis power
// is a state file the test can read and set, so a test sees exactly what a power command did to the "host".
package bmctest

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"vmha/types"
)

// User is the administrator account every simulated BMC has.
const User = "admin"

// Sim is one running ipmi_sim. It lives until the test that started it ends.
type Sim struct {
	port       int
	password   string
	stateFile  string
	refuseFile string
}

// chassisScript is OpenIPMI's chassis_control program: called as `chassis.sh 0x20 get power` (answers
// `power:0|1`) and `chassis.sh 0x20 set power 0|1`. Power lives in a file so the test can see and change it.
const chassisScript = `#!/bin/sh
state=%q
refuse=%q
op=$2
shift 2
case "$op" in
get)
	for p in "$@"; do
		[ "$p" = power ] && printf 'power:%%s\n' "$(cat "$state")"
	done
	;;
set)
	while [ $# -ge 2 ]; do
		if [ "$1" = power ]; then
			refusal=$(cat "$refuse" 2>/dev/null)
			[ "$2" = 0 ] && [ "$refusal" = keep ] || printf '%%s\n' "$2" > "$state"
			[ "$2" = 0 ] && [ -n "$refusal" ] && exit 1
		fi
		shift 2
	done
	;;
esac
exit 0
`

const lanConf = `name "bmctest"
set_working_mc 0x20
  startlan 1
    addr 127.0.0.1 %d
    priv_limit admin
    allowed_auths_callback md5
    allowed_auths_user md5
    allowed_auths_operator md5
    allowed_auths_admin md5
    guid a123456789abcdefa123456789abcdef
  endlan
  chassis_control "%s 0x20"
  user 2 true "%s" "%s" admin 10 md5
`

const emulator = `mc_setbmc 0x20
mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr
sel_enable 0x20 1000 0x0a
mc_enable 0x20
`

// Start runs a BMC on a free loopback UDP port with chassis power on, the user User and the given password,
// and stops it when the test ends. It skips the test when ipmi_sim is not installed.
func Start(t testing.TB, password string) *Sim {
	t.Helper()
	bin, err := exec.LookPath("ipmi_sim")
	if err != nil {
		t.Skip("ipmi_sim not found in PATH: install Debian package openipmi to run BMC tests")
	}
	dir := t.TempDir()
	s := &Sim{port: FreeUDPPort(t), password: password, stateFile: filepath.Join(dir, "power"), refuseFile: filepath.Join(dir, "refuse-power-off")}
	s.SetPower(true)

	script := filepath.Join(dir, "chassis.sh")
	writeFile(t, script, fmt.Sprintf(chassisScript, s.stateFile, s.refuseFile), 0o755)
	conf := filepath.Join(dir, "lan.conf")
	writeFile(t, conf, fmt.Sprintf(lanConf, s.port, script, User, password), 0o600)
	emu := filepath.Join(dir, "sim.emu")
	writeFile(t, emu, emulator, 0o600)
	stateDir := filepath.Join(dir, "state")
	if err := os.Mkdir(stateDir, 0o700); err != nil {
		t.Fatalf("bmctest: %v", err)
	}

	var out bytes.Buffer
	cmd := exec.Command(bin, "-c", conf, "-f", emu, "-s", stateDir, "-n")
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("bmctest: start %s: %v", bin, err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	if err := waitReady(s.port, exited); err != nil {
		t.Fatalf("bmctest: ipmi_sim on 127.0.0.1:%d: %v; output:\n%s", s.port, err, out.String())
	}
	return s
}

// Spec is how vmha's inventory would name this BMC. It names no password source: the password is passed
// separately, as workers do; set PasswordEnv or PasswordFile when a test needs a valid inventory entry.
func (s *Sim) Spec() types.BMCSpec {
	return types.BMCSpec{Address: "127.0.0.1", Port: s.port, User: User}
}

// Password is the password the BMC accepts for User.
func (s *Sim) Password() string { return s.password }

// Power reads chassis power from the state file: true is on.
func (s *Sim) Power() bool {
	b, err := os.ReadFile(s.stateFile)
	if err != nil {
		panic(fmt.Sprintf("bmctest: read power state %s: %v", s.stateFile, err))
	}
	return strings.TrimSpace(string(b)) == "1"
}

// SetPower sets chassis power as if the host had been switched on or off behind the BMC's back.
func (s *Sim) SetPower(on bool) {
	v := "0\n"
	if on {
		v = "1\n"
	}
	if err := os.WriteFile(s.stateFile, []byte(v), 0o600); err != nil {
		panic(fmt.Sprintf("bmctest: write power state %s: %v", s.stateFile, err))
	}
}

// RefusePowerOff makes every later power-off command fail with an error. With dropPower the chassis goes off
// anyway, as when a BMC refuses a power-down racing a power loss; without it the chassis stays on.
func (s *Sim) RefusePowerOff(dropPower bool) {
	refusal := "keep"
	if dropPower {
		refusal = "drop"
	}
	if err := os.WriteFile(s.refuseFile, []byte(refusal), 0o600); err != nil {
		panic(fmt.Sprintf("bmctest: %v", err))
	}
}

// FreeUDPPort returns a loopback UDP port nothing listens on right now; also useful as a BMC that never answers.
func FreeUDPPort(t testing.TB) int {
	t.Helper()
	c, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("bmctest: pick a free UDP port: %v", err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

// SilentUDP binds a loopback UDP port that reads nothing and answers nothing until the test ends: a BMC that
// has dropped off the network, where requests time out instead of being refused.
func SilentUDP(t testing.TB) int {
	t.Helper()
	c, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("bmctest: bind a silent UDP port: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c.LocalAddr().(*net.UDPAddr).Port
}

func writeFile(t testing.TB, path, content string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatalf("bmctest: %v", err)
	}
}

// rmcpPing is an RMCP/ASF presence ping (IPMI 2.0 §13.2.3); any BMC answers it without a session.
var rmcpPing = []byte{0x06, 0x00, 0xff, 0x06, 0x00, 0x00, 0x11, 0xbe, 0x80, 0x00, 0x00, 0x00}

// waitReady pings until the simulator answers, because ipmi_sim binds its port some time after it starts.
func waitReady(port int, exited <-chan struct{}) error {
	conn, err := net.Dial("udp4", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return err
	}
	defer conn.Close()
	buf := make([]byte, 512)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return fmt.Errorf("exited before answering")
		default:
		}
		if _, err := conn.Write(rmcpPing); err != nil {
			return err
		}
		_ = conn.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		if n, err := conn.Read(buf); err == nil && n >= 9 && buf[8] == 0x40 {
			return nil
		}
		// A refused read means the port is not bound yet; don't spin.
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("no answer to RMCP ping within 10s")
}
