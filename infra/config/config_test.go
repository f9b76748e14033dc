package config

import (
	"strings"
	"testing"
	"time"
)

func TestLoadDefaults(t *testing.T) {
	s, err := Load()
	if err != nil {
		t.Fatal(err)
	}
	if s.TemporalAddress != "127.0.0.1:7233" || s.Namespace != "vmha" || s.MissesBeforeDead != 2 || s.MissesBeforeUnreachable != 8 || s.RecoveryConcurrency != 16 {
		t.Fatalf("defaults %+v", s)
	}
}

// TestLoadNamesTheBadSetting: a bad value is refused with the variable's name and the value.
func TestLoadNamesTheBadSetting(t *testing.T) {
	for _, c := range []struct{ key, value, want string }{
		{"VMHA_LOG_LEVEL", "loud", `VMHA_LOG_LEVEL="loud"`},
		{"VMHA_MISSES_BEFORE_DEAD", "0", "VMHA_MISSES_BEFORE_DEAD=0"},
		{"VMHA_PROBE_INTERVAL", "0s", "VMHA_PROBE_INTERVAL=0s"},
		{"VMHA_PROBE_TIMEOUT", "soon", "PROBE_TIMEOUT"},
		{"VMHA_OVERCOMMIT_RATIO", "0.5", "VMHA_OVERCOMMIT_RATIO=0.5"},
		{"VMHA_TLS_CERT", "/etc/vmha/cert.pem", `VMHA_TLS_KEY=""`},
		{"VMHA_MAX_WATCHES", "0", "VMHA_MAX_WATCHES=0"},
		{"VMHA_PROBE_BUDGET", "-1", "VMHA_PROBE_BUDGET=-1"},
	} {
		t.Run(c.key, func(t *testing.T) {
			t.Setenv(c.key, c.value)
			_, err := Load()
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Load with %s=%s: %v, want an error naming %s", c.key, c.value, err, c.want)
			}
		})
	}
}

// TestValidateRefusesSettingsThatBreakTheWatch: each refusal names the variable and its value; the values just
// inside each limit are accepted.
func TestValidateRefusesSettingsThatBreakTheWatch(t *testing.T) {
	for _, c := range []struct {
		name string
		set  map[string]string
		want string // empty: accepted
	}{
		{"defaults", nil, ""},
		{"bmc timeout eats the heartbeat", map[string]string{"VMHA_BMC_TIMEOUT": "3s"}, "VMHA_BMC_TIMEOUT=3s"},
		{"bmc timeout at the limit", map[string]string{"VMHA_BMC_TIMEOUT": "1750ms"}, ""},
		{"probe timeout eats the heartbeat", map[string]string{"VMHA_PROBE_TIMEOUT": "3s"}, "VMHA_PROBE_TIMEOUT=3s"},
		{"probe interval eats the heartbeat", map[string]string{"VMHA_PROBE_INTERVAL": "2s"}, "VMHA_PROBE_INTERVAL=2s"},
		{"probe timeout above the interval is fine", map[string]string{"VMHA_PROBE_TIMEOUT": "1s", "VMHA_PROBE_INTERVAL": "200ms"}, ""},
		{"confirmations on the first miss eat the heartbeat", map[string]string{"VMHA_POWER_CONFIRMATIONS": "4"}, "VMHA_POWER_CONFIRMATIONS=4"},
		{"one miss is too little for a death", map[string]string{"VMHA_MISSES_BEFORE_DEAD": "1"}, "VMHA_MISSES_BEFORE_DEAD=1"},
		{"unreachable before dead", map[string]string{"VMHA_MISSES_BEFORE_UNREACHABLE": "1"}, "VMHA_MISSES_BEFORE_UNREACHABLE=1"},
		{"unreachable before suspect", map[string]string{"VMHA_MISSES_BEFORE_SUSPECT": "9"}, "VMHA_MISSES_BEFORE_UNREACHABLE=8"},
		{"worker grace zero", map[string]string{"VMHA_WORKER_GRACE": "0s"}, "VMHA_WORKER_GRACE=0s"},
		{"worker grace under the long poll", map[string]string{"VMHA_WORKER_GRACE": "30s"}, "VMHA_WORKER_GRACE=30s"},
		{"worker grace one minute", map[string]string{"VMHA_WORKER_GRACE": "1m"}, ""},
		{"bmc idle zero", map[string]string{"VMHA_BMC_IDLE_INTERVAL": "0s"}, "VMHA_BMC_IDLE_INTERVAL=0s"},
		{"fence timeout zero", map[string]string{"VMHA_FENCE_TIMEOUT": "0s"}, "VMHA_FENCE_TIMEOUT=0s"},
		{"fence timeout under two readings", map[string]string{"VMHA_FENCE_TIMEOUT": "2s"}, "VMHA_FENCE_TIMEOUT=2s"},
		{"host reserve negative", map[string]string{"VMHA_HOST_RESERVE_MIB": "-1"}, "VMHA_HOST_RESERVE_MIB=-1"},
		{"host reserve zero", map[string]string{"VMHA_HOST_RESERVE_MIB": "0"}, ""},
		{"share timeout zero", map[string]string{"VMHA_SHARE_TIMEOUT": "0s"}, "VMHA_SHARE_TIMEOUT=0s"},
		{"share timeout negative", map[string]string{"VMHA_SHARE_TIMEOUT": "-1s"}, "VMHA_SHARE_TIMEOUT=-1s"},
	} {
		t.Run(c.name, func(t *testing.T) {
			for k, v := range c.set {
				t.Setenv(k, v)
			}
			_, err := Load()
			switch {
			case c.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
				t.Fatalf("got %v, want an error naming %s", err, c.want)
			}
		})
	}
}

// TestValidateHeartbeatSettings (issue 7): a stop threshold the probe cannot measure, or a negative reminder, is
// refused naming the variable.
func TestValidateHeartbeatSettings(t *testing.T) {
	for _, c := range []struct {
		name string
		set  func(*Settings)
		want string
	}{
		{"threshold under two probes", func(s *Settings) { s.HeartbeatStoppedAfter = 150 * time.Millisecond }, "VMHA_HEARTBEAT_STOPPED_AFTER=150ms"},
		{"negative threshold", func(s *Settings) { s.HeartbeatStoppedAfter = -time.Second }, "VMHA_HEARTBEAT_STOPPED_AFTER=-1s"},
		{"negative reminder", func(s *Settings) { s.UnknownReminder = -time.Minute }, "VMHA_UNKNOWN_REMINDER=-1m0s"},
		{"verdicts off", func(s *Settings) { s.HeartbeatStoppedAfter = 0 }, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			s, err := Load()
			if err != nil {
				t.Fatal(err)
			}
			c.set(&s)
			err = s.Validate()
			if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
				t.Fatalf("Validate = %v, want %q", err, c.want)
			}
		})
	}
}

// TestValidateHeartbeatAndWatchdog: the storage heartbeat and watchdog settings of the hypervisor worker; each
// refusal names the variables and values, the values just inside each limit are accepted.
func TestValidateHeartbeatAndWatchdog(t *testing.T) {
	for _, c := range []struct {
		name string
		set  map[string]string
		want string // empty: accepted
	}{
		{"defaults: no watchdog", nil, ""},
		{"interval zero", map[string]string{"VMHA_HEARTBEAT_INTERVAL": "0s"}, "VMHA_HEARTBEAT_INTERVAL=0s"},
		{"interval negative", map[string]string{"VMHA_HEARTBEAT_INTERVAL": "-1s"}, "VMHA_HEARTBEAT_INTERVAL=-1s"},
		{"slow interval without a watchdog", map[string]string{"VMHA_HEARTBEAT_INTERVAL": "1m"}, ""},
		{"linux watchdog, defaults", map[string]string{"VMHA_WATCHDOG_DEVICE": "/dev/watchdog"}, ""},
		{"lab watchdog, defaults", map[string]string{"VMHA_WATCHDOG_DEVICE": "file:/run/vmha/hv1.watchdog"}, ""},
		{"lab watchdog without a path", map[string]string{"VMHA_WATCHDOG_DEVICE": "file:"}, `VMHA_WATCHDOG_DEVICE="file:"`},
		{"watchdog timeout zero", map[string]string{"VMHA_WATCHDOG_DEVICE": "/dev/watchdog", "VMHA_WATCHDOG_TIMEOUT": "0s"}, "VMHA_WATCHDOG_TIMEOUT=0s"},
		{"linux watchdog under a second", map[string]string{"VMHA_WATCHDOG_DEVICE": "/dev/watchdog", "VMHA_WATCHDOG_TIMEOUT": "900ms",
			"VMHA_HEARTBEAT_INTERVAL": "100ms"}, "VMHA_WATCHDOG_TIMEOUT=900ms"},
		{"lab watchdog under a second", map[string]string{"VMHA_WATCHDOG_DEVICE": "file:/x", "VMHA_WATCHDOG_TIMEOUT": "900ms",
			"VMHA_HEARTBEAT_INTERVAL": "300ms"}, ""},
		{"three renewals per timeout", map[string]string{"VMHA_WATCHDOG_DEVICE": "/dev/watchdog", "VMHA_WATCHDOG_TIMEOUT": "3s",
			"VMHA_HEARTBEAT_INTERVAL": "1s"}, ""},
		{"fewer than three renewals per timeout", map[string]string{"VMHA_WATCHDOG_DEVICE": "/dev/watchdog", "VMHA_WATCHDOG_TIMEOUT": "3s",
			"VMHA_HEARTBEAT_INTERVAL": "1001ms"}, "VMHA_HEARTBEAT_INTERVAL=1.001s x 3 > VMHA_WATCHDOG_TIMEOUT=3s"},
		{"no watchdog: the timeout does not matter", map[string]string{"VMHA_WATCHDOG_TIMEOUT": "0s"}, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			for k, v := range c.set {
				t.Setenv(k, v)
			}
			s, err := Load()
			switch {
			case c.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
				t.Fatalf("got %v, want an error naming %s", err, c.want)
			}
			if c.set == nil && (s.HeartbeatInterval != 500*time.Millisecond || s.WatchdogTimeout != 10*time.Second || s.WatchdogDevice != "") {
				t.Errorf("defaults: interval %s, watchdog %q timeout %s", s.HeartbeatInterval, s.WatchdogDevice, s.WatchdogTimeout)
			}
		})
	}
}

// TestServerPlaintextWithTLS: asking for plain gRPC and for mTLS at once is refused, naming both settings.
func TestServerPlaintextWithTLS(t *testing.T) {
	t.Setenv("VMHA_SERVER_TLS_CERT", "/etc/vmha/tls/node.pem")
	t.Setenv("VMHA_SERVER_TLS_KEY", "/etc/vmha/tls/node-key.pem")
	t.Setenv("VMHA_SERVER_TLS_CLIENT_CA", "/etc/vmha/tls/ca.pem")
	if _, err := Load(); err != nil {
		t.Fatalf("Load with mTLS only: %v", err)
	}
	t.Setenv("VMHA_SERVER_PLAINTEXT", "true")
	_, err := Load()
	if err == nil || !strings.Contains(err.Error(), "VMHA_SERVER_PLAINTEXT=true") || !strings.Contains(err.Error(), "VMHA_SERVER_TLS_CERT") {
		t.Fatalf("Load with VMHA_SERVER_PLAINTEXT=true and mTLS: %v, want an error naming both", err)
	}
}
