package temporalserver

import (
	"fmt"
	"net"
	"strconv"
)

// checkPortFree tells whether port can be bound on ip now.
func checkPortFree(ip string, port int) error {
	addr := net.JoinHostPort(ip, strconv.Itoa(port))
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", addr, err)
	}
	return l.Close()
}

// freePort picks a port for one of the server's internal services, which must be told a fixed port.
//
// As in the Temporal CLI, the port is left in TIME_WAIT by a connection closed from the listening side: Linux then
// does not hand it out again for bind(:0) for a while, yet the server can still bind it explicitly (SO_REUSEADDR).
// That keeps another freePort (ours or another program's) from picking the same number before the server binds it.
func freePort(ip string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		return 0, fmt.Errorf("find a free port on %s: %w", ip, err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port
	client, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		return 0, fmt.Errorf("reserve port %d on %s: %w", port, ip, err)
	}
	defer client.Close()
	server, err := l.Accept()
	if err != nil {
		return 0, fmt.Errorf("reserve port %d on %s: %w", port, ip, err)
	}
	if err := server.Close(); err != nil {
		return 0, fmt.Errorf("reserve port %d on %s: %w", port, ip, err)
	}
	return port, nil
}
