package topology

// TB is what the topology's functions need of their caller: *testing.T and *testing.B satisfy it, and so can a
// command such as tests/bench, which starts the topology outside `go test`.
type TB interface {
	Helper()
	Fatal(args ...any)
	Fatalf(format string, args ...any)
	Skip(args ...any)
	Skipf(format string, args ...any)
	Cleanup(func())
	TempDir() string
	Logf(format string, args ...any)
	// Failed tells a node's cleanup to print the node's log.
	Failed() bool
}
