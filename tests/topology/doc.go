// Package topology starts vmha's production topology on this machine for tests and benchmarks: Debian's PostgreSQL
// in a temporary directory, `vmha server` processes as cluster nodes on it (each on an address of its own), a CA and
// certificates made by vmha's own certificate code, and a DNS name with one A record per node.
package topology
