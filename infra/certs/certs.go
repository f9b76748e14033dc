// Package certs creates the certificate authority of a lab or small site and issues the certificates vmha's roles
// present to its Temporal frontend. A certificate names its holder's role in the subject's organizational unit and
// its name in the common name (a hypervisor's is its inventory host name); the embedded server's authorizer reads
// both back with IdentityOf. Keys are ECDSA P-256, written 0600, and no file is ever overwritten.
package certs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"vmha/types"
)

// Role is what a certificate's holder may do on vmha's Temporal namespace.
type Role string

// The roles, as written in a certificate's subject OU.
const (
	// RoleServer is a Temporal server node: its frontend's certificate, also used by the server's own clients.
	RoleServer Role = "server"
	// RoleController runs vmha's workflows: everything in vmha's namespace.
	RoleController Role = "controller"
	// RoleHypervisor is one host's worker: its own task queue and the share queue.
	RoleHypervisor Role = "hypervisor"
	// RoleOperator runs the operator commands (apply, failover, maintenance, create-vm, ...) and reads.
	RoleOperator Role = "operator"
	// RoleViewer reads.
	RoleViewer Role = "viewer"
)

// Roles lists every role, in the order the documentation gives them.
func Roles() []Role {
	return []Role{RoleServer, RoleController, RoleHypervisor, RoleOperator, RoleViewer}
}

// ParseRole accepts one of Roles.
func ParseRole(s string) (Role, error) {
	for _, r := range Roles() {
		if string(r) == s {
			return r, nil
		}
	}
	return "", fmt.Errorf("--role=%q: want one of %s", s, roleList())
}

func roleList() string {
	names := make([]string, 0, len(Roles()))
	for _, r := range Roles() {
		names = append(names, string(r))
	}
	return strings.Join(names, ", ")
}

// Identity is who a client certificate names.
type Identity struct {
	Role Role
	Name string
}

// IdentityOf reads the role (the one OU) and the name (the CN) of a verified certificate's subject. A subject with
// no OU, several OUs, an unknown role or no valid name names nobody: the authorizer denies it everything.
func IdentityOf(subject pkix.Name) (Identity, error) {
	if len(subject.OrganizationalUnit) != 1 {
		return Identity{}, fmt.Errorf("subject %q: want exactly one OU naming a role (%s), got %d", subject, roleList(),
			len(subject.OrganizationalUnit))
	}
	role, err := ParseRole(subject.OrganizationalUnit[0])
	if err != nil {
		return Identity{}, fmt.Errorf("subject %q: OU %q is not a vmha role (%s)", subject, subject.OrganizationalUnit[0], roleList())
	}
	if !types.ValidName(subject.CommonName) {
		return Identity{}, fmt.Errorf("subject %q: CN %q is not a valid name", subject, subject.CommonName)
	}
	return Identity{Role: role, Name: subject.CommonName}, nil
}

// Files are where a certificate and its key were written.
type Files struct {
	Cert string
	Key  string
}

// The CA's files in its directory.
const (
	CACertFile = "ca.pem"
	CAKeyFile  = "ca-key.pem"
	// organization is every certificate's subject O, so that vmha's certificates are recognisable in a bundle.
	organization = "vmha"
)

// CreateCA creates a self-signed CA named name in dir (created 0700 when missing), valid for validFor.
func CreateCA(dir, name string, validFor time.Duration) (Files, error) {
	switch {
	case strings.TrimSpace(name) == "":
		return Files{}, fmt.Errorf("--name=%q: want the CA's name", name)
	case validFor < 24*time.Hour:
		return Files{}, fmt.Errorf("--days=%d: want >= 1", int(validFor/(24*time.Hour)))
	}
	files := Files{Cert: filepath.Join(dir, CACertFile), Key: filepath.Join(dir, CAKeyFile)}
	if err := prepare(dir, files); err != nil {
		return Files{}, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Files{}, fmt.Errorf("generate CA key: %w", err)
	}
	tmpl, err := template(pkix.Name{CommonName: name, Organization: []string{organization}}, validFor)
	if err != nil {
		return Files{}, err
	}
	tmpl.IsCA = true
	tmpl.BasicConstraintsValid = true
	// A lab or site CA signs leaf certificates only: no intermediate CA under it.
	tmpl.MaxPathLenZero = true
	tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return Files{}, fmt.Errorf("sign CA certificate: %w", err)
	}
	return files, write(files, der, key)
}

// Request is one certificate to issue. Errors name the `vmha certs issue` flag of each field.
type Request struct {
	Role Role
	// Name is the subject CN: a hypervisor's inventory host name, a controller's or server's node name, a person.
	Name string
	// DNSNames and IPs are the names clients verify a server by; only server certificates carry them.
	DNSNames []string
	IPs      []net.IP
	ValidFor time.Duration
}

// Validate names the first bad field by its flag.
func (r Request) Validate() error {
	if _, err := ParseRole(string(r.Role)); err != nil {
		return err
	}
	switch {
	case !types.ValidName(r.Name):
		return fmt.Errorf("--name=%q: want 1-63 letters, digits, '-', '_' or '.' (a hypervisor's is its inventory host name)", r.Name)
	case r.ValidFor < 24*time.Hour:
		return fmt.Errorf("--days=%d: want >= 1", int(r.ValidFor/(24*time.Hour)))
	case r.Role == RoleServer && len(r.DNSNames) == 0 && len(r.IPs) == 0:
		return errors.New("--dns and --ip: a server certificate needs at least one name or address clients dial it by")
	case r.Role != RoleServer && (len(r.DNSNames) > 0 || len(r.IPs) > 0):
		return fmt.Errorf("--dns/--ip with --role=%s: only server certificates carry DNS names and addresses", r.Role)
	}
	for _, d := range r.DNSNames {
		if !validDNSName(d) {
			return fmt.Errorf("--dns=%q: not a DNS name", d)
		}
	}
	return nil
}

func validDNSName(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// LeafFiles is where Issue writes a certificate of role and name in dir.
func LeafFiles(dir string, role Role, name string) Files {
	base := filepath.Join(dir, string(role)+"-"+name)
	return Files{Cert: base + ".pem", Key: base + "-key.pem"}
}

// Issue signs a certificate for r with the CA in caDir and writes it and its key into caDir (LeafFiles).
func Issue(caDir string, r Request) (Files, error) {
	if err := r.Validate(); err != nil {
		return Files{}, err
	}
	caCert, caKey, err := loadCA(caDir)
	if err != nil {
		return Files{}, err
	}
	files := LeafFiles(caDir, r.Role, r.Name)
	if err := prepare(caDir, files); err != nil {
		return Files{}, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Files{}, fmt.Errorf("generate key: %w", err)
	}
	tmpl, err := template(pkix.Name{CommonName: r.Name, OrganizationalUnit: []string{string(r.Role)}, Organization: []string{organization}}, r.ValidFor)
	if err != nil {
		return Files{}, err
	}
	if tmpl.NotAfter.After(caCert.NotAfter) {
		return Files{}, fmt.Errorf("--days=%d: the certificate would outlive its CA (%s expires %s)", int(r.ValidFor/(24*time.Hour)),
			filepath.Join(caDir, CACertFile), caCert.NotAfter.Format(time.DateOnly))
	}
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	if r.Role == RoleServer {
		// The server's own clients (its system worker, the embedded Web UI and controller) present it too.
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
		tmpl.DNSNames, tmpl.IPAddresses = r.DNSNames, r.IPs
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		return Files{}, fmt.Errorf("sign certificate for %s %s: %w", r.Role, r.Name, err)
	}
	return files, write(files, der, key)
}

func template(subject pkix.Name, validFor time.Duration) (*x509.Certificate, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("certificate serial number: %w", err)
	}
	now := time.Now()
	return &x509.Certificate{
		SerialNumber: serial,
		Subject:      subject,
		// A little slack for clocks that run behind the one that issued it.
		NotBefore: now.Add(-5 * time.Minute),
		NotAfter:  now.Add(validFor),
	}, nil
}

func loadCA(dir string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	certFile, keyFile := filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile)
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, nil, fmt.Errorf("--dir=%s: read the CA certificate (create the CA with `vmha certs ca` first): %w", dir, err)
	}
	block, _ := pem.Decode(certPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, nil, fmt.Errorf("%s: no PEM certificate", certFile)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", certFile, err)
	}
	if !cert.IsCA {
		return nil, nil, fmt.Errorf("%s: not a CA certificate", certFile)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, nil, fmt.Errorf("--dir=%s: read the CA key: %w", dir, err)
	}
	if block, _ = pem.Decode(keyPEM); block == nil || block.Type != "PRIVATE KEY" {
		return nil, nil, fmt.Errorf("%s: no PEM private key", keyFile)
	}
	parsed, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", keyFile, err)
	}
	key, ok := parsed.(*ecdsa.PrivateKey)
	if !ok || !key.PublicKey.Equal(cert.PublicKey) {
		return nil, nil, fmt.Errorf("%s: not the key of %s", keyFile, certFile)
	}
	return cert, key, nil
}

// prepare creates dir when missing and refuses files that exist: a key or certificate in use is never replaced.
func prepare(dir string, files Files) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("--dir=%s: %w", dir, err)
	}
	for _, f := range []string{files.Cert, files.Key} {
		if _, err := os.Lstat(f); err == nil {
			return fmt.Errorf("%s exists: refusing to overwrite it (remove it first to replace it)", f)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("check %s: %w", f, err)
		}
	}
	return nil
}

// write writes the key (0600) before the certificate (0644), each created exclusively, and removes the key again
// when the certificate cannot be written.
func write(files Files, der []byte, key *ecdsa.PrivateKey) error {
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("encode key: %w", err)
	}
	if err := writeNew(files.Key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return err
	}
	if err := writeNew(files.Cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return errors.Join(err, os.Remove(files.Key))
	}
	return nil
}

func writeNew(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		_ = f.Close()
		return errors.Join(fmt.Errorf("write %s: %w", path, err), os.Remove(path))
	}
	if err := f.Close(); err != nil {
		return errors.Join(fmt.Errorf("write %s: %w", path, err), os.Remove(path))
	}
	return nil
}
