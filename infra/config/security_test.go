package config

import (
	"strings"
	"testing"
)

// TestServerTLSAndUISettings: the server's TLS files come all three or none, and the UI's address is an IP; each
// refusal names the variables and their values.
func TestServerTLSAndUISettings(t *testing.T) {
	s, err := Load()
	if err != nil {
		t.Fatal(err)
	}
	if s.UIAddress != "127.0.0.1" || s.UIWriteActions || s.ServerTLSCert != "" {
		t.Fatalf("defaults: UI on %q, write actions %t, server TLS %q; want loopback, off, none", s.UIAddress, s.UIWriteActions, s.ServerTLSCert)
	}
	for _, c := range []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"VMHA_SERVER_TLS_CERT": "/pki/server.pem", "VMHA_SERVER_TLS_KEY": "/pki/server-key.pem"}, `VMHA_SERVER_TLS_CLIENT_CA=""`},
		{map[string]string{"VMHA_SERVER_TLS_CLIENT_CA": "/pki/ca.pem"}, `VMHA_SERVER_TLS_CERT=""`},
		{map[string]string{"VMHA_UI_ADDRESS": "localhost"}, `VMHA_UI_ADDRESS="localhost"`},
		{map[string]string{"VMHA_UI_ADDRESS": "0.0.0.0:8233"}, `VMHA_UI_ADDRESS="0.0.0.0:8233"`},
	} {
		for k, v := range c.env {
			t.Setenv(k, v)
		}
		if _, err := Load(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Load with %v: %v, want an error naming %s", c.env, err, c.want)
		}
		for k := range c.env {
			t.Setenv(k, "")
		}
	}
	t.Setenv("VMHA_UI_ADDRESS", "127.0.0.1")
	for k, v := range map[string]string{"VMHA_SERVER_TLS_CERT": "/pki/s.pem", "VMHA_SERVER_TLS_KEY": "/pki/s-key.pem", "VMHA_SERVER_TLS_CLIENT_CA": "/pki/ca.pem"} {
		t.Setenv(k, v)
	}
	if _, err := Load(); err != nil {
		t.Errorf("all three server TLS files: %v", err)
	}
}
