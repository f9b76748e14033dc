package topology

import (
	"math/rand/v2"
	"net"
	"strconv"
)

// FreeFrontendPort finds a frontend port whose whole layout (the ports of a node's four services and their
// membership ports) is free on every ip.
func FreeFrontendPort(t TB, ips []string) int {
	t.Helper()
	for range 50 {
		// Membership ports (300 below) must stay under 32768: Temporal stores them as a smallint.
		port := 10300 + rand.IntN(22000)
		if allFree(ips, port) {
			return port
		}
	}
	t.Fatal("no free port layout for the cluster nodes after 50 tries")
	return 0
}

func allFree(ips []string, frontendPort int) bool {
	for _, ip := range ips {
		for _, offset := range []int{0, 1, 2, 6} {
			for _, port := range []int{frontendPort + offset, frontendPort + offset - 300} {
				l, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(port)))
				if err != nil {
					return false
				}
				_ = l.Close()
			}
		}
	}
	return true
}

// FreePort is a TCP port free on ip right now.
func FreePort(t TB, ip string) int {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
