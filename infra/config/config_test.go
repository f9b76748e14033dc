package config

import (
	"strings"
	"testing"
)

func TestLoadDefaults(t *testing.T) {
	s, err := Load()
	if err != nil {
		t.Fatal(err)
	}
	if s.TemporalAddress != "127.0.0.1:7233" || s.Namespace != "vmha" || s.MissesBeforeDead != 3 || s.RecoveryConcurrency != 16 {
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
