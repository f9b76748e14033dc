package topology

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
)

// Postgres is a PostgreSQL server the test started, with a password-protected user for Temporal.
type Postgres struct {
	Address      string
	User         string
	PasswordFile string

	binDir, data, dir string
	runAs             []string
}

// StartPostgres runs Debian's PostgreSQL in a temporary directory on 127.0.0.1 and a free port, with scram-sha-256
// password authentication, as an unprivileged user when the test runs as root (initdb refuses root). It skips the
// test when PostgreSQL is not installed, and stops the server at cleanup.
func StartPostgres(t TB) Postgres {
	t.Helper()
	initdbs, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	if len(initdbs) == 0 {
		t.Skip("PostgreSQL's binaries are missing (/usr/lib/postgresql/*/bin/initdb): `infra/deps.sh test` installs Debian's postgresql")
	}
	pg := Postgres{binDir: filepath.Dir(initdbs[len(initdbs)-1])}
	dir, err := os.MkdirTemp("", "vmha-postgres-")
	if err != nil {
		t.Fatal(err)
	}
	pg.dir = dir
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	// chown hands a path to the user PostgreSQL runs as.
	chown := func(string) error { return nil }
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Skipf("running as root and no postgres user to run PostgreSQL as (initdb refuses root): %v", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		chown = func(path string) error { return os.Chown(path, uid, gid) }
		pg.runAs = []string{"runuser", "-u", "postgres", "--"}
	}
	password := fmt.Sprintf("test-%d", rand.Int64())
	pwForInitdb := filepath.Join(dir, "pw")
	if err := os.WriteFile(pwForInitdb, []byte(password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{dir, pwForInitdb} {
		if err := chown(path); err != nil {
			t.Fatal(err)
		}
	}
	pg.data = filepath.Join(dir, "data")
	pg.run(t, "initdb", "-D", pg.data, "-U", "temporal", "--pwfile", pwForInitdb, "-A", "scram-sha-256", "--no-sync")
	port := FreePort(t, "127.0.0.1")
	pg.Address = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	pg.User = "temporal"
	pg.Start(t)
	t.Cleanup(func() { pg.Stop(t, "fast") })

	// The nodes read the password from their own copy, as root would from /etc/vmha.
	pg.PasswordFile = filepath.Join(t.TempDir(), "postgres-password")
	if err := os.WriteFile(pg.PasswordFile, []byte(password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return pg
}

// Start starts the server (again) on its address and waits until it accepts connections.
func (pg Postgres) Start(t TB) {
	t.Helper()
	host, port, _ := net.SplitHostPort(pg.Address)
	// Each node opens a few dozen connections (four services, each with a persistence and a visibility pool).
	opts := fmt.Sprintf("-c listen_addresses=%s -p %s -k %s -c max_connections=400", host, port, pg.dir)
	pg.run(t, "pg_ctl", "-D", pg.data, "-o", opts, "-l", filepath.Join(pg.dir, "postgres.log"), "-w", "start")
}

// Stop stops the server with pg_ctl's shutdown mode: "fast" (clean) or "immediate" (as a crash: no checkpoint,
// recovery from the WAL at the next start). Stopping a stopped server does nothing.
func (pg Postgres) Stop(t TB, mode string) {
	t.Helper()
	if pg.command("pg_ctl", "-D", pg.data, "status").Run() != nil {
		return
	}
	pg.run(t, "pg_ctl", "-D", pg.data, "-m", mode, "-w", "stop")
}

func (pg Postgres) run(t TB, name string, args ...string) {
	t.Helper()
	if out, err := pg.command(name, args...).CombinedOutput(); err != nil {
		log, _ := os.ReadFile(filepath.Join(pg.dir, "postgres.log"))
		t.Fatalf("%s %v: %v\n%s\n%s", name, args, err, out, log)
	}
}

// NodeEnv are the settings of a cluster node on this PostgreSQL.
func (pg Postgres) NodeEnv() []string {
	return []string{
		"VMHA_PERSISTENCE=postgres",
		"VMHA_POSTGRES_ADDRESS=" + pg.Address,
		"VMHA_POSTGRES_USER=" + pg.User,
		"VMHA_POSTGRES_PASSWORD_FILE=" + pg.PasswordFile,
		"VMHA_HISTORY_SHARDS=8",
	}
}

// command runs one of PostgreSQL's programs as the user the server runs as.
func (pg Postgres) command(name string, args ...string) *exec.Cmd {
	argv := append(append(slices.Clone(pg.runAs), filepath.Join(pg.binDir, name)), args...)
	return exec.Command(argv[0], argv[1:]...)
}
