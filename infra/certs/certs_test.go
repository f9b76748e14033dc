package certs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

const year = 365 * 24 * time.Hour

func newCA(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "pki")
	if _, err := CreateCA(dir, "test CA", 10*year); err != nil {
		t.Fatalf("CreateCA: %v", err)
	}
	return dir
}

func pool(t *testing.T, dir string) *x509.CertPool {
	t.Helper()
	pem, err := os.ReadFile(filepath.Join(dir, CACertFile))
	if err != nil {
		t.Fatal(err)
	}
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(pem) {
		t.Fatal("no CA certificate in ca.pem")
	}
	return p
}

func mode(t *testing.T, path string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

func TestIssueEveryRole(t *testing.T) {
	dir := newCA(t)
	if m := mode(t, filepath.Join(dir, CAKeyFile)); m != 0o600 {
		t.Errorf("CA key mode %v, want 0600", m)
	}
	roots := pool(t, dir)
	for _, role := range Roles() {
		req := Request{Role: role, Name: "hv1", ValidFor: year}
		if role == RoleServer {
			req.DNSNames, req.IPs = []string{"temporal.example"}, []net.IP{net.ParseIP("127.0.0.1")}
		}
		files, err := Issue(dir, req)
		if err != nil {
			t.Fatalf("Issue %s: %v", role, err)
		}
		if want := LeafFiles(dir, role, "hv1"); files != want {
			t.Errorf("Issue %s wrote %+v, want %+v", role, files, want)
		}
		if m := mode(t, files.Key); m != 0o600 {
			t.Errorf("%s key mode %v, want 0600", role, m)
		}
		pair, err := tls.LoadX509KeyPair(files.Cert, files.Key)
		if err != nil {
			t.Fatalf("%s: certificate and key do not load as a pair: %v", role, err)
		}
		leaf := pair.Leaf
		if k, ok := leaf.PublicKey.(*ecdsa.PublicKey); !ok || k.Curve != elliptic.P256() {
			t.Errorf("%s: key %T, want ECDSA P-256", role, leaf.PublicKey)
		}
		id, err := IdentityOf(leaf.Subject)
		if err != nil || id != (Identity{Role: role, Name: "hv1"}) {
			t.Errorf("%s: IdentityOf = %+v, %v; want role %s name hv1", role, id, err, role)
		}
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			t.Errorf("%s: not valid for client authentication under the CA: %v", role, err)
		}
		_, serverErr := leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: "temporal.example"})
		if (serverErr == nil) != (role == RoleServer) {
			t.Errorf("%s: verified as server temporal.example: %v; want only the server role to", role, serverErr)
		}
		if role == RoleServer && (!slices.Contains(leaf.DNSNames, "temporal.example") || len(leaf.IPAddresses) != 1) {
			t.Errorf("server SANs %v %v, want temporal.example and 127.0.0.1", leaf.DNSNames, leaf.IPAddresses)
		}
	}
}

func TestNothingIsOverwritten(t *testing.T) {
	dir := newCA(t)
	caBefore, _ := os.ReadFile(filepath.Join(dir, CAKeyFile))
	if _, err := CreateCA(dir, "again", year); err == nil || !strings.Contains(err.Error(), "refusing to overwrite") {
		t.Fatalf("second CreateCA: %v, want a refusal", err)
	}
	caAfter, _ := os.ReadFile(filepath.Join(dir, CAKeyFile))
	if string(caBefore) != string(caAfter) {
		t.Fatal("the CA key changed")
	}
	req := Request{Role: RoleHypervisor, Name: "hv2", ValidFor: year}
	files, err := Issue(dir, req)
	if err != nil {
		t.Fatal(err)
	}
	keyBefore, _ := os.ReadFile(files.Key)
	if _, err := Issue(dir, req); err == nil || !strings.Contains(err.Error(), files.Cert) {
		t.Fatalf("second Issue: %v, want a refusal naming %s", err, files.Cert)
	}
	if keyAfter, _ := os.ReadFile(files.Key); string(keyBefore) != string(keyAfter) {
		t.Fatal("the key changed")
	}
}

func TestRequestErrorsNameTheFlag(t *testing.T) {
	dir := newCA(t)
	for _, tc := range []struct {
		req  Request
		want string
	}{
		{Request{Role: "admin", Name: "x", ValidFor: year}, `--role="admin"`},
		{Request{Role: RoleHypervisor, Name: "hv 1", ValidFor: year}, `--name="hv 1"`},
		{Request{Role: RoleHypervisor, Name: "", ValidFor: year}, `--name=""`},
		{Request{Role: RoleViewer, Name: "v", ValidFor: time.Hour}, "--days=0"},
		{Request{Role: RoleServer, Name: "t1", ValidFor: year}, "--dns and --ip"},
		{Request{Role: RoleServer, Name: "t1", DNSNames: []string{"bad name"}, ValidFor: year}, `--dns="bad name"`},
		{Request{Role: RoleOperator, Name: "alice", IPs: []net.IP{net.ParseIP("10.0.0.1")}, ValidFor: year}, "--role=operator"},
		{Request{Role: RoleOperator, Name: "alice", ValidFor: 20 * year}, "outlive its CA"},
	} {
		if _, err := Issue(dir, tc.req); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Issue(%+v) = %v, want an error naming %s", tc.req, err, tc.want)
		}
	}
	if _, err := Issue(t.TempDir(), Request{Role: RoleViewer, Name: "v", ValidFor: year}); err == nil || !strings.Contains(err.Error(), "vmha certs ca") {
		t.Errorf("Issue without a CA: %v, want an error pointing at vmha certs ca", err)
	}
}

func TestIdentityOfRefusesUnknownSubjects(t *testing.T) {
	for _, s := range []pkix.Name{
		{CommonName: "hv1"},
		{CommonName: "hv1", OrganizationalUnit: []string{"admin"}},
		{CommonName: "hv1", OrganizationalUnit: []string{"hypervisor", "controller"}},
		{CommonName: "", OrganizationalUnit: []string{"controller"}},
	} {
		if id, err := IdentityOf(s); err == nil {
			t.Errorf("IdentityOf(%q) = %+v, want an error", s, id)
		}
	}
}
