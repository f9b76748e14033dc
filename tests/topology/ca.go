package topology

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"time"

	"vmha/infra/certs"
)

// CA is a CA made with vmha's own certificate code (`vmha certs`), in a temporary directory.
type CA struct{ Dir, Cert string }

// NewCA creates a CA valid for ten years, as `vmha certs ca` makes them: certificates it issues with vmha's
// defaults (a year) fit in it.
func NewCA(t TB) CA {
	t.Helper()
	dir := t.TempDir()
	files, err := certs.CreateCA(dir, "vmha test CA", 3650*24*time.Hour)
	if err != nil {
		t.Fatalf("create CA: %v", err)
	}
	return CA{Dir: dir, Cert: files.Cert}
}

// Issue signs a certificate for req, valid for a day, next to the CA.
func (ca CA) Issue(t TB, req certs.Request) certs.Files {
	t.Helper()
	req.ValidFor = 24 * time.Hour
	files, err := certs.Issue(ca.Dir, req)
	if err != nil {
		t.Fatalf("issue %s certificate %s: %v", req.Role, req.Name, err)
	}
	return files
}

// ClientTLS presents the certificate in files (none when empty) and verifies the server as serverName.
func (ca CA) ClientTLS(t TB, files certs.Files, serverName string) *tls.Config {
	t.Helper()
	pem, err := os.ReadFile(ca.Cert)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		t.Fatalf("CA %s: no certificate", ca.Cert)
	}
	conf := &tls.Config{RootCAs: roots, ServerName: serverName, MinVersion: tls.VersionTLS12}
	if files.Cert != "" {
		cert, err := tls.LoadX509KeyPair(files.Cert, files.Key)
		if err != nil {
			t.Fatal(err)
		}
		conf.Certificates = []tls.Certificate{cert}
	}
	return conf
}

// ClientEnv are the VMHA_TLS_* settings of a vmha process presenting files and verifying the server as serverName.
func (ca CA) ClientEnv(files certs.Files, serverName string) []string {
	return []string{"VMHA_TLS_CERT=" + files.Cert, "VMHA_TLS_KEY=" + files.Key, "VMHA_TLS_CA=" + ca.Cert,
		"VMHA_TLS_SERVER_NAME=" + serverName}
}
