package topology

import (
	"net"
	"strings"

	"golang.org/x/net/dns/dnsmessage"
)

// ServeDNS answers A queries for name with ips on listen (host:port, port 0: any free one) and returns
// the address it listens on: the test's
// stand-in for the DNS name with one A record per cluster node that README tells clients to use. Other names and
// types get an empty answer.
func ServeDNS(t TB, listen, name string, ips []string) string {
	t.Helper()
	conn, err := net.ListenPacket("udp", listen)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	fqdn := dnsmessage.MustNewName(strings.TrimSuffix(name, ".") + ".")
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := conn.ReadFrom(buf)
			if err != nil {
				return
			}
			var p dnsmessage.Parser
			h, err := p.Start(buf[:n])
			if err != nil {
				continue
			}
			q, err := p.Question()
			if err != nil {
				continue
			}
			b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true})
			b.EnableCompression()
			_ = b.StartQuestions()
			_ = b.Question(q)
			_ = b.StartAnswers()
			if q.Name == fqdn && q.Type == dnsmessage.TypeA {
				for _, ip := range ips {
					a := dnsmessage.AResource{}
					copy(a.A[:], net.ParseIP(ip).To4())
					_ = b.AResource(dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 5}, a)
				}
			}
			msg, err := b.Finish()
			if err != nil {
				continue
			}
			_, _ = conn.WriteTo(msg, from)
		}
	}()
	return conn.LocalAddr().String()
}
