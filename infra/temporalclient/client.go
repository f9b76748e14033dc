// Package temporalclient dials the Temporal frontend every vmha role talks to, embedded or external.
package temporalclient

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"time"

	"go.temporal.io/sdk/client"
	sdklog "go.temporal.io/sdk/log"

	"vmha/infra/config"
)

const (
	// dialPatience covers a server that is still starting (vmha server and its workers start together).
	dialPatience  = 10 * time.Second
	firstBackoff  = 100 * time.Millisecond
	maxBackoff    = 2 * time.Second
	backoffFactor = 2
)

// Dial connects to s.TemporalAddress in s.Namespace, over TLS when any TLS setting is given. It retries for about
// ten seconds while the frontend does not answer, and gives up earlier when ctx ends.
func Dial(ctx context.Context, s config.Settings, logger *slog.Logger) (client.Client, error) {
	tlsConf, err := tlsConfig(s)
	if err != nil {
		return nil, err
	}
	return DialTLS(ctx, s, tlsConf, logger)
}

// DialTLS is Dial with the TLS configuration given instead of the one the TLS settings make (nil: plain gRPC):
// vmha server hands its embedded controller the server's own.
func DialTLS(ctx context.Context, s config.Settings, tlsConf *tls.Config, logger *slog.Logger) (client.Client, error) {
	opts := client.Options{
		HostPort:          s.TemporalAddress,
		Namespace:         s.Namespace,
		Logger:            sdklog.NewStructuredLogger(logger),
		ConnectionOptions: client.ConnectionOptions{TLS: tlsConf},
	}

	deadline := time.Now().Add(dialPatience)
	backoff := firstBackoff
	for {
		c, err := client.DialContext(ctx, opts)
		if err == nil {
			return c, nil
		}
		if ctx.Err() != nil || time.Now().Add(backoff).After(deadline) {
			return nil, fmt.Errorf("dial temporal at %s (namespace %s): %w", s.TemporalAddress, s.Namespace, err)
		}
		logger.Debug("temporal not answering yet, retrying", "address", s.TemporalAddress, "error", err, "in", backoff)
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("dial temporal at %s (namespace %s): %w (last error: %w)", s.TemporalAddress, s.Namespace, ctx.Err(), err)
		case <-time.After(backoff):
		}
		backoff = min(backoff*backoffFactor, maxBackoff)
	}
}

// tlsConfig is nil (plain gRPC) when no TLS setting is given.
func tlsConfig(s config.Settings) (*tls.Config, error) {
	if s.TLSCert == "" && s.TLSKey == "" && s.TLSCA == "" && s.TLSServerName == "" {
		return nil, nil
	}
	conf := &tls.Config{ServerName: s.TLSServerName, MinVersion: tls.VersionTLS12}
	if (s.TLSCert == "") != (s.TLSKey == "") {
		return nil, fmt.Errorf("%s_TLS_CERT=%q and %s_TLS_KEY=%q: set both or neither", config.Prefix, s.TLSCert, config.Prefix, s.TLSKey)
	}
	if s.TLSCert != "" {
		certPEM, err := os.ReadFile(s.TLSCert)
		if err != nil {
			return nil, fmt.Errorf("read TLS client certificate: %w", err)
		}
		keyPEM, err := os.ReadFile(s.TLSKey)
		if err != nil {
			return nil, fmt.Errorf("read TLS client key: %w", err)
		}
		pair, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			return nil, fmt.Errorf("TLS client certificate %s with key %s: %w", s.TLSCert, s.TLSKey, err)
		}
		conf.Certificates = []tls.Certificate{pair}
	}
	if s.TLSCA != "" {
		caPEM, err := os.ReadFile(s.TLSCA)
		if err != nil {
			return nil, fmt.Errorf("read TLS CA bundle: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(caPEM) {
			return nil, fmt.Errorf("TLS CA bundle %s: no PEM certificate in it", s.TLSCA)
		}
		conf.RootCAs = pool
	}
	return conf, nil
}
