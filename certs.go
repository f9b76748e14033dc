package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"time"

	"vmha/infra/certs"
	"vmha/infra/config"
)

const certsUsage = `want one of:
  vmha certs ca --dir DIR [--name NAME] [--days 3650]
  vmha certs issue --dir DIR --role server|controller|hypervisor|operator|viewer --name NAME
                   [--dns NAME,...] [--ip ADDRESS,...] [--days 365]`

const day = 24 * time.Hour

// certsCommand runs `vmha certs ca` (a new CA in --dir) and `vmha certs issue` (a certificate for one role and name,
// signed by the CA in --dir and written next to it).
func certsCommand(args []string, out io.Writer) error {
	if len(args) == 0 || (args[0] != "ca" && args[0] != "issue") {
		return errors.New(certsUsage)
	}
	fs := flag.NewFlagSet("vmha certs "+args[0], flag.ContinueOnError)
	fs.SetOutput(out)
	dir := fs.String("dir", "", "directory of the CA (ca.pem, ca-key.pem); issued certificates are written there too")
	if args[0] == "ca" {
		name := fs.String("name", "vmha CA", "the CA's name (subject CN)")
		days := fs.Int("days", 3650, "validity in days")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		if *dir == "" {
			return errors.New("--dir: missing")
		}
		files, err := certs.CreateCA(*dir, *name, time.Duration(*days)*day)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "CA certificate: %s (give it to every vmha process and the server)\nCA key:         %s (keep it here, offline if you can)\n",
			files.Cert, files.Key)
		return nil
	}
	var (
		role, name, dns, ips string
		days                 int
	)
	fs.StringVar(&role, "role", "", "server, controller, hypervisor, operator or viewer")
	fs.StringVar(&name, "name", "", "subject CN: a hypervisor's inventory host name, a node's or a person's name")
	fs.StringVar(&dns, "dns", "", "server only: comma-separated DNS names clients dial it by")
	fs.StringVar(&ips, "ip", "", "server only: comma-separated IP addresses clients dial it by")
	fs.IntVar(&days, "days", 365, "validity in days")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if *dir == "" {
		return errors.New("--dir: missing")
	}
	req := certs.Request{Role: certs.Role(role), Name: name, DNSNames: split(dns), ValidFor: time.Duration(days) * day}
	for _, s := range split(ips) {
		ip := net.ParseIP(s)
		if ip == nil {
			return fmt.Errorf("--ip=%q: %q is not an IP address", ips, s)
		}
		req.IPs = append(req.IPs, ip)
	}
	files, err := certs.Issue(*dir, req)
	if err != nil {
		return err
	}
	ca := filepath.Join(*dir, certs.CACertFile)
	if req.Role == certs.RoleServer {
		fmt.Fprintf(out, "%s_SERVER_TLS_CERT=%s\n%s_SERVER_TLS_KEY=%s\n%s_SERVER_TLS_CLIENT_CA=%s\n",
			config.Prefix, files.Cert, config.Prefix, files.Key, config.Prefix, ca)
		return nil
	}
	fmt.Fprintf(out, "%s_TLS_CERT=%s\n%s_TLS_KEY=%s\n%s_TLS_CA=%s\n", config.Prefix, files.Cert, config.Prefix, files.Key, config.Prefix, ca)
	return nil
}
