package temporalserver

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"

	"go.temporal.io/server/common/authorization"
	"go.temporal.io/server/common/config"
	"go.temporal.io/server/common/metrics"
	"go.temporal.io/server/common/rpc/encryption"
	"go.temporal.io/server/temporal"

	"vmha/infra/certs"
)

// TLSFiles make the frontend serve mutual TLS: it presents Cert, requires every client to present a certificate
// that chains to ClientCA, and authorizes each call by the role that certificate names (see authorize).
type TLSFiles struct {
	// Cert and Key are the frontend's certificate (role server) and its key. The server's own clients (its system
	// worker, the embedded Web UI, the embedded controller) present the same certificate, so it must be issued by
	// ClientCA for client authentication too, as `vmha certs issue --role server` does.
	Cert string
	Key  string
	// ClientCA is the CA bundle client certificates must chain to.
	ClientCA string
}

// serverTLS is TLSFiles loaded and checked once at start.
type serverTLS struct {
	files     TLSFiles
	cert      tls.Certificate
	clientCAs *x509.CertPool
	// serverName is a name the server certificate carries, which the in-process clients verify it by (they dial
	// a loopback address the certificate need not name).
	serverName string
	// tasks is the authorizer's task token checker, made with the first serverOptions.
	tasks *activityQueues
}

// close ends the task token checker's connection; nil-safe.
func (t *serverTLS) close() error {
	if t == nil || t.tasks == nil {
		return nil
	}
	return t.tasks.close()
}

// loadServerTLS reads the files and checks what would otherwise fail later with a handshake error in some
// internal client: the key matches, the certificate names a server and chains to the client CA for both uses.
func loadServerTLS(f TLSFiles) (*serverTLS, error) {
	cert, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		return nil, fmt.Errorf("server TLS certificate %s with key %s: %w", f.Cert, f.Key, err)
	}
	leaf := cert.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, fmt.Errorf("server TLS certificate %s: %w", f.Cert, err)
		}
	}
	caPEM, err := os.ReadFile(f.ClientCA)
	if err != nil {
		return nil, fmt.Errorf("read server TLS client CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("server TLS client CA %s: no PEM certificate in it", f.ClientCA)
	}
	id, err := certs.IdentityOf(leaf.Subject)
	if err != nil {
		return nil, fmt.Errorf("server TLS certificate %s: %w", f.Cert, err)
	}
	if id.Role != certs.RoleServer {
		return nil, fmt.Errorf("server TLS certificate %s: role %s, want %s (vmha certs issue --role server)", f.Cert, id.Role, certs.RoleServer)
	}
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
			return nil, fmt.Errorf("server TLS certificate %s against client CA %s: %w (the server's own clients present it, "+
				"so it must be issued by that CA for server and client authentication)", f.Cert, f.ClientCA, err)
		}
	}
	st := &serverTLS{files: f, cert: cert, clientCAs: pool}
	switch {
	case len(leaf.DNSNames) > 0:
		st.serverName = leaf.DNSNames[0]
	case len(leaf.IPAddresses) > 0:
		st.serverName = leaf.IPAddresses[0].String()
	default:
		return nil, fmt.Errorf("server TLS certificate %s: no DNS name or IP address in it; clients verify the server by them", f.Cert)
	}
	return st, nil
}

// apply makes the frontend require and verify client certificates, and the system worker (and every other
// internal client of the frontend) present the server certificate. Traffic between the server's own services
// (history, matching, worker, and the frontend's calls to them; between the nodes of a cluster) is mutual TLS with
// the server certificate too, verified by serverName, which every node's certificate carries; serversOnlyInternode
// admits only server certificates there. Without TLS (nil) it changes nothing.
func (t *serverTLS) apply(conf *config.Config) {
	if t == nil {
		return
	}
	conf.Global.TLS.Frontend.Server = config.ServerTLS{
		CertFile: t.files.Cert, KeyFile: t.files.Key, ClientCAFiles: []string{t.files.ClientCA}, RequireClientAuth: true,
	}
	conf.Global.TLS.Internode = config.GroupTLS{
		Server: config.ServerTLS{
			CertFile: t.files.Cert, KeyFile: t.files.Key, ClientCAFiles: []string{t.files.ClientCA}, RequireClientAuth: true,
		},
		Client: config.ClientTLS{ServerName: t.serverName, RootCAFiles: []string{t.files.ClientCA}},
	}
	conf.Global.TLS.SystemWorker = config.WorkerTLS{
		CertFile: t.files.Cert, KeyFile: t.files.Key,
		Client: config.ClientTLS{ServerName: t.serverName, RootCAFiles: []string{t.files.ClientCA}},
	}
}

// clientConfig is what the server's in-process clients dial the frontend with; nil without TLS.
func (t *serverTLS) clientConfig() *tls.Config {
	if t == nil {
		return nil
	}
	return &tls.Config{
		Certificates: []tls.Certificate{t.cert},
		RootCAs:      t.clientCAs,
		ServerName:   t.serverName,
		MinVersion:   tls.VersionTLS12,
	}
}

// ClientTLS is the TLS configuration the server's own clients use (the server certificate, verified against the
// client CA), nil when the frontend serves plain gRPC. vmha server's embedded controller dials with it.
func (s *Server) ClientTLS() *tls.Config { return s.tls.clientConfig() }

// serverOptions install vmha's authorizer and claim mapper on a frontend that serves mTLS on frontendAddress;
// without TLS (nil) there is no certificate to authorize by, and Temporal's defaults let every caller do anything.
func (t *serverTLS) serverOptions(conf *config.Config, namespace, frontendAddress string, logger *slog.Logger) ([]temporal.ServerOption, error) {
	if t == nil {
		return nil, nil
	}
	provider, err := encryption.NewTLSConfigProviderFromConfig(conf.Global.TLS, metrics.NoopMetricsHandler, &slogBridge{log: logger}, nil)
	if err != nil {
		return nil, fmt.Errorf("temporal server TLS: %w", err)
	}
	if t.tasks == nil {
		t.tasks = &activityQueues{frontendAddress: frontendAddress, tls: t.clientConfig()}
	}
	tasks := t.tasks
	return []temporal.ServerOption{
		temporal.WithTLSConfigFactory(serversOnlyInternode{provider}),
		temporal.WithAuthorizer(&authorizer{namespace: namespace, tasks: tasks, logger: logger}),
		temporal.WithClaimMapper(func(*config.Config) authorization.ClaimMapper { return claimMapper{} }),
	}, nil
}

// serversOnlyInternode is Temporal's TLS provider, except that the server's internal services accept only server
// certificates. Temporal checks no more than "chains to the client CA", and that CA also signs the hypervisors',
// controllers' and operators' certificates: any of them could otherwise call a history or matching service
// directly, past the frontend's authorizer.
type serversOnlyInternode struct{ encryption.TLSConfigProvider }

func (p serversOnlyInternode) GetInternodeServerConfig() (*tls.Config, error) {
	conf, err := p.TLSConfigProvider.GetInternodeServerConfig()
	if err != nil || conf == nil {
		return conf, err
	}
	conf = conf.Clone()
	conf.VerifyPeerCertificate = requireServerRole
	if perClient := conf.GetConfigForClient; perClient != nil {
		conf.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			c, err := perClient(hello)
			if err != nil || c == nil {
				return c, err
			}
			c = c.Clone()
			c.VerifyPeerCertificate = requireServerRole
			return c, nil
		}
	}
	return conf, nil
}

// requireServerRole refuses a peer whose verified certificate does not name the server role (certs.Role).
func requireServerRole(_ [][]byte, chains [][]*x509.Certificate) error {
	if len(chains) == 0 || len(chains[0]) == 0 {
		return errors.New("internode TLS: no verified client certificate")
	}
	id, err := certs.IdentityOf(chains[0][0].Subject)
	if err != nil {
		return fmt.Errorf("internode TLS: %w", err)
	}
	if id.Role != certs.RoleServer {
		return fmt.Errorf("internode TLS: %s %q may not call the server's internal services (role %s only)", id.Role, id.Name, certs.RoleServer)
	}
	return nil
}

func (f TLSFiles) validate() error {
	if f.Cert == "" || f.Key == "" || f.ClientCA == "" {
		return errors.New("temporal server TLS: Cert, Key and ClientCA are all required")
	}
	return nil
}

// checkOpen refuses a frontend that would serve plain gRPC on a non-loopback address, where anyone who can reach it
// could start, signal and terminate vmha's workflows, fail hosts over and power them off, and poll any host's task
// queue, unless allowPlaintext says the operator chose that; then it says so once at error level. Loopback without
// TLS stays allowed: only processes of this machine reach it (a one-machine trial).
func checkOpen(listen string, port int, tlsFiles *TLSFiles, allowPlaintext bool, logger *slog.Logger) error {
	ip := net.ParseIP(listen)
	if tlsFiles != nil || ip == nil || ip.IsLoopback() {
		return nil
	}
	address := net.JoinHostPort(listen, strconv.Itoa(port))
	if !allowPlaintext {
		return fmt.Errorf("the Temporal frontend would listen on %s without TLS, where anyone who can reach it can fail hosts over "+
			"and power them off: set VMHA_SERVER_TLS_CERT, VMHA_SERVER_TLS_KEY and VMHA_SERVER_TLS_CLIENT_CA (see vmha certs), "+
			"listen on a loopback address, or set VMHA_SERVER_PLAINTEXT=true (for a lab behind a firewall only)", address)
	}
	logger.Error("the Temporal frontend listens without TLS on a non-loopback address (VMHA_SERVER_PLAINTEXT=true): anyone who can "+
		"reach it can start, signal and terminate vmha's workflows, fail hosts over and power them off, and poll any host's task "+
		"queue; for a lab behind a firewall only", "address", address)
	return nil
}
