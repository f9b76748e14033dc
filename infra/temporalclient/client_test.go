package temporalclient

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.temporal.io/api/workflowservice/v1"

	"vmha/infra/certs"
	"vmha/infra/config"
	"vmha/infra/temporalserver"
)

func TestTLSConfig(t *testing.T) {
	dir := t.TempDir()
	// A CA's own certificate is a self-signed pair, enough for loading files.
	ca, err := certs.CreateCA(filepath.Join(dir, "ca"), "test CA", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cert, key := ca.Cert, ca.Key
	missing := filepath.Join(dir, "missing.pem")
	garbage := filepath.Join(dir, "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	if c, err := tlsConfig(config.Settings{}); c != nil || err != nil {
		t.Errorf("no TLS settings: got %v, %v; want plain gRPC", c, err)
	}

	c, err := tlsConfig(config.Settings{TLSCert: cert, TLSKey: key, TLSCA: cert, TLSServerName: "temporal.example"})
	if err != nil {
		t.Fatalf("valid files: %v", err)
	}
	if len(c.Certificates) != 1 || c.RootCAs == nil || c.ServerName != "temporal.example" {
		t.Errorf("valid files: certificates %d, root CAs %v, server name %q", len(c.Certificates), c.RootCAs != nil, c.ServerName)
	}

	if c, err := tlsConfig(config.Settings{TLSCA: cert}); err != nil || c.RootCAs == nil || len(c.Certificates) != 0 {
		t.Errorf("CA only: %v, %v", c, err)
	}

	for name, tc := range map[string]struct {
		s    config.Settings
		want string
	}{
		"missing cert":   {config.Settings{TLSCert: missing, TLSKey: key}, missing},
		"missing key":    {config.Settings{TLSCert: cert, TLSKey: missing}, missing},
		"missing CA":     {config.Settings{TLSCA: missing}, missing},
		"CA not PEM":     {config.Settings{TLSCA: garbage}, garbage},
		"key not PEM":    {config.Settings{TLSCert: cert, TLSKey: garbage}, garbage},
		"cert alone":     {config.Settings{TLSCert: cert}, "VMHA_TLS_KEY"},
		"key is no cert": {config.Settings{TLSCert: key, TLSKey: key}, key},
	} {
		_, err := tlsConfig(tc.s)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one naming %s", name, err, tc.want)
		}
	}
}

func TestDialGivesUpWithContext(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close() // nothing listens there now

	ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
	defer cancel()
	c, err := Dial(ctx, config.Settings{TemporalAddress: addr, Namespace: "vmha"}, slog.New(slog.DiscardHandler))
	if err == nil {
		c.Close()
		t.Fatalf("dial %s with nothing listening: no error", addr)
	}
	if !strings.Contains(err.Error(), addr) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("error %q: want it to name %s and wrap the context's deadline", err, addr)
	}
}

// Dial keeps trying while the server is still starting.
func TestDialWaitsForStartingServer(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	s := config.Settings{TemporalAddress: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), Namespace: "vmha"}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

	dialed := make(chan error, 1)
	go func() {
		c, err := Dial(t.Context(), s, logger)
		if err == nil {
			_, err = c.WorkflowService().DescribeNamespace(t.Context(), &workflowservice.DescribeNamespaceRequest{Namespace: "vmha"})
			c.Close()
		}
		dialed <- err
	}()

	// Let Dial fail at least once before the server exists.
	time.Sleep(300 * time.Millisecond)
	srv, err := temporalserver.Start(t.Context(), temporalserver.Options{
		DataDir: t.TempDir(), FrontendPort: port, Namespace: "vmha", Logger: logger,
	})
	if err != nil {
		t.Fatalf("start server: %v", err)
	}
	t.Cleanup(func() {
		if err := srv.Stop(); err != nil {
			t.Errorf("stop server: %v", err)
		}
	})
	if err := <-dialed; err != nil {
		t.Fatalf("Dial while the server starts: %v", err)
	}
}
