package topology

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// StartStandby starts a hot standby of primary in a temporary directory on 127.0.0.1 and a free port: a base backup
// of primary, then streaming replication from it, SYNCHRONOUS: primary's synchronous_standby_names names the
// standby and synchronous_commit is on, so a commit returns to its client (Temporal) only once the standby has it
// too, and a promotion loses nothing a client was told is stored. It returns once primary reports the standby in
// sync; the standby is stopped at cleanup. Its Address is its own; its user and password are primary's.
//
// With synchronous replication the primary waits for the standby: while this one standby is down, every commit on
// primary blocks (production runs two standbys, or synchronous_standby_names = 'ANY 1 (a, b)').
func StartStandby(t TB, primary Postgres) Postgres {
	t.Helper()
	password := primaryPassword(t, primary)
	dir, err := os.MkdirTemp("", "vmha-postgres-standby-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	sb := primary
	sb.dir = dir
	sb.data = filepath.Join(dir, "data")
	port := FreePort(t, "127.0.0.1")
	sb.Address = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	// The name the primary knows the standby by (its walreceiver's application_name).
	name := "standby_" + strconv.Itoa(port)
	if err := sb.handOver(dir); err != nil {
		t.Fatal(err)
	}

	host, primaryPort, _ := net.SplitHostPort(primary.Address)
	backup := sb.command("pg_basebackup", "-h", host, "-p", primaryPort, "-U", primary.User, "-D", sb.data,
		"-X", "stream", "--checkpoint=fast", "--no-sync")
	backup.Env = append(os.Environ(), "PGPASSWORD="+password)
	if out, err := backup.CombinedOutput(); err != nil {
		t.Fatalf("pg_basebackup of %s: %v\n%s", primary.Address, err, out)
	}
	signal := filepath.Join(sb.data, "standby.signal")
	if err := os.WriteFile(signal, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := sb.handOver(signal); err != nil {
		t.Fatal(err)
	}
	// postgresql.auto.conf is the primary's copy (the base backup's), owned by the server's user already.
	conninfo := fmt.Sprintf("host=%s port=%s user=%s password=%s application_name=%s", host, primaryPort, primary.User, password, name)
	auto, err := os.OpenFile(filepath.Join(sb.data, "postgresql.auto.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = fmt.Fprintf(auto, "primary_conninfo = '%s'\n", strings.ReplaceAll(conninfo, "'", "''"))
	if cerr := auto.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatalf("standby's primary_conninfo: %v", err)
	}
	sb.Start(t)
	t.Cleanup(func() { sb.Stop(t, "fast") })

	// Made synchronous only now that the standby streams: before, every commit on the primary would wait for it.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn := primary.connect(ctx, t, password)
	defer conn.Close(ctx)
	for _, stmt := range []string{
		// name is letters, digits and an underscore: nothing to escape.
		fmt.Sprintf("ALTER SYSTEM SET synchronous_standby_names = '%s'", name),
		"ALTER SYSTEM SET synchronous_commit = on",
		"SELECT pg_reload_conf()",
	} {
		if _, err := conn.Exec(ctx, stmt); err != nil {
			t.Fatalf("primary %s: %s: %v", primary.Address, stmt, err)
		}
	}
	for {
		var state string
		err := conn.QueryRow(ctx, "SELECT sync_state FROM pg_stat_replication WHERE application_name = $1", name).Scan(&state)
		if err == nil && state == "sync" {
			return sb
		}
		select {
		case <-ctx.Done():
			t.Fatalf("standby %s not in sync with primary %s: state %q, %v", sb.Address, primary.Address, state, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Promote makes a standby the primary, as Patroni or an operator does once the primary is gone for good
// (pg_ctl promote), and returns once it accepts writes.
func (pg Postgres) Promote(t TB) {
	t.Helper()
	pg.run(t, "pg_ctl", "-D", pg.data, "-w", "promote")
}

// connect opens a session on the server's postgres database as its user.
func (pg Postgres) connect(ctx context.Context, t TB, password string) *pgx.Conn {
	t.Helper()
	u := url.URL{Scheme: "postgres", Host: pg.Address, Path: "/postgres", User: url.UserPassword(pg.User, password),
		RawQuery: "sslmode=disable"}
	conn, err := pgx.Connect(ctx, u.String())
	if err != nil {
		t.Fatalf("connect to postgres %s: %v", pg.Address, err)
	}
	return conn
}

// primaryPassword is the password of pg's user, from the file the nodes read it from.
func primaryPassword(t TB, pg Postgres) string {
	t.Helper()
	data, err := os.ReadFile(pg.PasswordFile)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(data))
}

// handOver gives path to the user the server runs as (initdb and the server refuse root).
func (pg Postgres) handOver(path string) error {
	if len(pg.runAs) == 0 {
		return nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return fmt.Errorf("postgres user for %s: %w", path, err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if err := os.Chown(path, uid, gid); err != nil {
		return fmt.Errorf("hand %s to postgres: %w", path, err)
	}
	return nil
}
