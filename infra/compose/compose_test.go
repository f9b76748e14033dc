// Package compose holds docker-compose.yml's setup scripts; its test validates the file without a container engine.
package compose

import (
	"context"
	"go/ast"
	"go/parser"
	"go/token"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"

	"vmha/infra/config"
)

const root = "../.."

// loadCompose loads docker-compose.yml with the Compose specification's own loader (schema validation, interpolation,
// dependencies), as `docker compose config` would, with env as the only environment.
func loadCompose(t *testing.T, env ...string) (*types.Project, error) {
	t.Helper()
	opts, err := cli.NewProjectOptions([]string{filepath.Join(root, "docker-compose.yml")},
		cli.WithWorkingDirectory(root), cli.WithEnv(env))
	if err != nil {
		t.Fatalf("compose project options: %v", err)
	}
	return opts.LoadProject(context.Background())
}

// TestComposeMatchesTheTestedCluster loads docker-compose.yml and checks it against what the PostgreSQL cluster test
// (tests/production) runs: the Temporal server and Web UI versions vmha is built with (go.mod), the same schema and
// plugin family, history shards, namespace, retention and search attributes.
func TestComposeMatchesTheTestedCluster(t *testing.T) {
	if _, err := loadCompose(t); err == nil || !strings.Contains(err.Error(), "TEMPORAL_DB_PASSWORD") {
		t.Errorf("docker-compose.yml without TEMPORAL_DB_PASSWORD: error %v, want one naming TEMPORAL_DB_PASSWORD", err)
	}
	project, err := loadCompose(t, "TEMPORAL_DB_PASSWORD=validation-only")
	if err != nil {
		t.Fatalf("load docker-compose.yml: %v", err)
	}
	server, ui := moduleVersion(t, "go.temporal.io/server"), moduleVersion(t, "github.com/temporalio/ui-server/v2")
	wantImages := map[string]string{
		"temporal-schema":    "temporalio/admin-tools:" + server,
		"temporal":           "temporalio/server:" + server,
		"temporal-namespace": "temporalio/admin-tools:" + server,
		"temporal-ui":        "temporalio/ui:" + ui,
	}
	for name, want := range wantImages {
		svc, ok := project.Services[name]
		if !ok {
			t.Errorf("service %s: missing", name)
			continue
		}
		if svc.Image != want {
			t.Errorf("service %s: image %s, want %s (go.mod)", name, svc.Image, want)
		}
	}

	temporal := project.Services["temporal"]
	// infra/temporalserver/postgres.go: the pgx plugin, pools of 10.
	for key, want := range map[string]string{"DB": "postgres12_pgx", "SQL_MAX_CONNS": "10", "SQL_MAX_IDLE_CONNS": "10"} {
		if got := env(temporal, key); got != want {
			t.Errorf("service temporal: %s=%s, want %s as a vmha cluster node", key, got, want)
		}
	}
	if got, want := env(temporal, "NUM_HISTORY_SHARDS"), settingDefault(t, "HistoryShards"); got != want {
		t.Errorf("service temporal: NUM_HISTORY_SHARDS=%s, want %s (VMHA_HISTORY_SHARDS's default)", got, want)
	}
	setup, err := os.ReadFile("setup-postgres.sh")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(setup), "/etc/temporal/schema/postgresql/v12") {
		t.Error("setup-postgres.sh: does not apply the v12 schema (postgresql/v12) vmha's nodes apply")
	}

	ns := project.Services["temporal-namespace"]
	wantNS := settingDefault(t, "Namespace")
	if got := env(ns, "VMHA_NAMESPACE"); got != wantNS {
		t.Errorf("service temporal-namespace: VMHA_NAMESPACE=%s, want %s (VMHA_NAMESPACE's default)", got, wantNS)
	}
	if got := env(project.Services["temporal-ui"], "TEMPORAL_DEFAULT_NAMESPACE"); got != wantNS {
		t.Errorf("service temporal-ui: TEMPORAL_DEFAULT_NAMESPACE=%s, want %s", got, wantNS)
	}
	// infra/temporalserver registers the namespace with 7 days of retention.
	if got := env(ns, "VMHA_RETENTION"); got != "7d" {
		t.Errorf("service temporal-namespace: VMHA_RETENTION=%s, want 7d", got)
	}

	// Every file a service mounts is in the repository.
	for name, svc := range project.Services {
		for _, v := range svc.Volumes {
			if v.Type != types.VolumeTypeBind {
				continue
			}
			if _, err := os.Stat(v.Source); err != nil {
				t.Errorf("service %s mounts %s: %v", name, v.Source, err)
			}
		}
	}

	script, err := os.ReadFile("create-namespace.sh")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := scriptAttributes(string(script)), codeAttributes(t); !maps.Equal(got, want) {
		t.Errorf("create-namespace.sh creates search attributes %v, types/ declares %v", got, want)
	}
}

func env(svc types.ServiceConfig, key string) string {
	if v := svc.Environment[key]; v != nil {
		return *v
	}
	return ""
}

// moduleVersion is the version go.mod requires of module path, without its v.
func moduleVersion(t *testing.T, path string) string {
	t.Helper()
	gomod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^\s*` + regexp.QuoteMeta(path) + `\s+v(\S+)`).FindSubmatch(gomod)
	if m == nil {
		t.Fatalf("go.mod requires no %s", path)
	}
	return string(m[1])
}

// settingDefault is the default of a config.Settings field, as `vmha help env` shows it.
func settingDefault(t *testing.T, field string) string {
	t.Helper()
	f, ok := reflect.TypeFor[config.Settings]().FieldByName(field)
	if !ok {
		t.Fatalf("config.Settings has no field %s", field)
	}
	return f.Tag.Get("default")
}

// scriptAttributes are the `--name X --type Y` pairs of create-namespace.sh.
func scriptAttributes(script string) map[string]string {
	attrs := map[string]string{}
	for _, m := range regexp.MustCompile(`--name\s+(\S+)\s+--type\s+(\S+)`).FindAllStringSubmatch(script, -1) {
		attrs[m[1]] = m[2]
	}
	return attrs
}

// codeAttributes are the search attributes types/ declares (temporal.NewSearchAttributeKeyKind("Name") calls), with
// the type names the Temporal CLI takes: the code is the source of truth, so a new attribute there fails this test
// until the script creates it too.
func codeAttributes(t *testing.T) map[string]string {
	t.Helper()
	cliType := map[string]string{
		"Keyword": "Keyword", "KeywordList": "KeywordList", "String": "Text", "Time": "Datetime",
		"Int64": "Int", "Float64": "Double", "Bool": "Bool",
	}
	fset := token.NewFileSet()
	files, err := filepath.Glob(filepath.Join(root, "types", "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	attrs := map[string]string{}
	for _, file := range slices.DeleteFunc(files, func(f string) bool { return strings.HasSuffix(f, "_test.go") }) {
		parsed, err := parser.ParseFile(fset, file, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(parsed, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok || len(call.Args) != 1 {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok || !strings.HasPrefix(sel.Sel.Name, "NewSearchAttributeKey") {
				return true
			}
			lit, ok := call.Args[0].(*ast.BasicLit)
			if !ok {
				t.Errorf("%s: %s with a non-literal name", fset.Position(call.Pos()), sel.Sel.Name)
				return true
			}
			name, _ := strconv.Unquote(lit.Value)
			kind := strings.TrimPrefix(sel.Sel.Name, "NewSearchAttributeKey")
			if cliType[kind] == "" {
				t.Errorf("%s: search attribute %s of kind %s: no Temporal CLI type known", fset.Position(call.Pos()), name, kind)
			}
			attrs[name] = cliType[kind]
			return true
		})
	}
	if len(attrs) == 0 {
		t.Fatal("types/ declares no search attribute")
	}
	return attrs
}
