package temporalserver

import (
	"fmt"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// TestPostgresAddressRefused checks that every malformed VMHA_POSTGRES_ADDRESS is refused with the setting, the
// whole value and the entry at fault named.
func TestPostgresAddressRefused(t *testing.T) {
	for _, tc := range []struct{ address, want string }{
		{"", `server 1 ("") is empty`},
		{"db.example", `server 1 ("db.example") is not host:port`},
		{"db1:5432,", `server 2 ("") is empty`},
		{"db1:5432,,db2:5432", `server 2 ("") is empty`},
		{"db1:5432, :5432", `server 2 (":5432") has an empty host`},
		{"db1:5432,db2", `server 2 ("db2") is not host:port`},
		{"db1:", `server 1 ("db1:") has port "", want 1-65535`},
		{"db1:0", `server 1 ("db1:0") has port "0", want 1-65535`},
		{"db1:65536", `server 1 ("db1:65536") has port "65536", want 1-65535`},
		{"db1:pg", `server 1 ("db1:pg") has port "pg", want 1-65535`},
		{"db1:5432;db2:5432", `server 1 ("db1:5432;db2:5432") is not host:port`},
		{"db1:5432,[fd00::13]:5432", `server 2 ("[fd00::13]:5432") is an IPv6 address`},
	} {
		p := Postgres{Address: tc.address, User: "temporal"}.withDefaults()
		err := p.validate()
		want := fmt.Sprintf("VMHA_POSTGRES_ADDRESS=%q: %s", tc.address, tc.want)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("address %q: error %v, want one containing %q", tc.address, err, want)
		}
	}
}

type pgServer struct {
	host string
	port uint16
}

// TestPostgresSeveralServers checks what pgx makes of the DSN Temporal builds from sqlConfig and of vmha's own
// connString: every server in order with its port, only a server that accepts writes kept, a bounded connect to each.
func TestPostgresSeveralServers(t *testing.T) {
	p := Postgres{Address: "db1.example:5432, 10.0.0.12:5433 ,db3.example:5434", User: "temporal", Password: "p@ss"}
	checkPgxSees(t, p, "db1.example:5432,10.0.0.12:5433,db3.example:5434",
		[]pgServer{{"db1.example", 5432}, {"10.0.0.12", 5433}, {"db3.example", 5434}})
	// One IPv6 server alone, as before several were accepted.
	checkPgxSees(t, Postgres{Address: "[fd00::13]:5434", User: "temporal", Password: "p@ss"}, "[fd00::13]:5434",
		[]pgServer{{"fd00::13", 5434}})
}

func checkPgxSees(t *testing.T, p Postgres, connectAddr string, want []pgServer) {
	t.Helper()
	p = p.withDefaults()
	if err := p.validate(); err != nil {
		t.Fatalf("valid address %q: %v", p.Address, err)
	}
	conf := p.sqlConfig(p.Database)
	if conf.ConnectAddr != connectAddr {
		t.Errorf("Temporal's ConnectAddr %q: want %q, the servers joined by commas, no spaces", conf.ConnectAddr, connectAddr)
	}
	attrs := url.Values{}
	for k, v := range conf.ConnectAttributes {
		attrs.Set(k, v)
	}
	if conf.TLS == nil {
		attrs.Set("sslmode", "disable") // as Temporal's buildDSNAttr does without TLS
	}
	// The format of Temporal's postgres session.buildDSN (go.temporal.io/server/common/persistence/sql/sqlplugin/
	// postgresql/session), which is unexported.
	temporalDSN := fmt.Sprintf("postgres://%v:%v@%v/%v?%v", conf.User, url.QueryEscape(conf.Password), conf.ConnectAddr,
		conf.DatabaseName, attrs.Encode())

	for name, dsn := range map[string]string{"Temporal's DSN": temporalDSN, "vmha's connString": p.connString(maintenanceDatabase)} {
		c, err := pgx.ParseConfig(dsn)
		if err != nil {
			t.Errorf("%s %q: %v", name, dsn, err)
			continue
		}
		got := []pgServer{{c.Host, c.Port}}
		for _, fb := range c.Fallbacks {
			got = append(got, pgServer{fb.Host, fb.Port})
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s: servers %v, want %v in this order", name, got, want)
		}
		if c.ValidateConnect == nil {
			t.Errorf("%s: no ValidateConnect, want target_session_attrs=read-write", name)
		} else if reflect.ValueOf(c.ValidateConnect).Pointer() != reflect.ValueOf(pgconn.ValidateConnectTargetSessionAttrsReadWrite).Pointer() {
			t.Errorf("%s: ValidateConnect is not target_session_attrs=read-write's", name)
		}
		// Below Temporal's 3 s history task deadline, with time left for the next server (see sessionAttributes).
		if c.ConnectTimeout != 2*time.Second {
			t.Errorf("%s: connect timeout %s, want 2s per server", name, c.ConnectTimeout)
		}
		if c.Password != "p@ss" {
			t.Errorf("%s: password not carried intact", name)
		}
	}
}
