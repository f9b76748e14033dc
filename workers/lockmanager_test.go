package workers

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLockManagerSetting(t *testing.T) {
	for _, c := range []struct {
		name, conf string
		value      string
		set        bool
		err        bool
	}{
		{"debian default", "# The lock manager\n#\n#lock_manager = \"lockd\"\n#\n", "", false, false},
		{"empty", "", "", false, false},
		{"set", "user = \"root\"\nlock_manager = \"lockd\"\n", "lockd", true, false},
		{"spacing", "  lock_manager=\t\"sanlock\"   \n", "sanlock", true, false},
		{"single quotes", "lock_manager = 'lockd'\n", "lockd", true, false},
		{"comment after", "lock_manager = \"lockd\"  # leases on the share\n", "lockd", true, false},
		{"commented with spaces", "   # lock_manager = \"lockd\"\n", "", false, false},
		{"other name", "lock_manager_extra = \"x\"\nmy_lock_manager = \"lockd\"\n", "", false, false},
		{"other value", "lock_manager = \"nop\"\n", "nop", true, false},
		{"same twice", "lock_manager = \"lockd\"\nlock_manager = 'lockd'\n", "lockd", true, false},
		{"different twice", "lock_manager = \"lockd\"\nlock_manager = \"nop\"\n", "", false, true},
		{"unquoted", "lock_manager = lockd\n", "", false, true},
		{"unterminated", "lock_manager = \"lockd\n", "", false, true},
		{"junk after", "lock_manager = \"lockd\" x\n", "", false, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			v, set, err := lockManagerSetting(strings.NewReader(c.conf))
			if (err != nil) != c.err || v != c.value || set != c.set {
				t.Fatalf("lockManagerSetting(%q) = %q, %v, %v; want %q, %v, error %v", c.conf, v, set, err, c.value, c.set, c.err)
			}
		})
	}
}

func TestCheckLockManager(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		name, conf string // conf "-" means no file
		on         bool
		level      string
		msg        string
	}{
		{"lockd", "lock_manager = \"lockd\"\n", true, "INFO", "disk leases are on"},
		{"sanlock", "lock_manager = \"sanlock\"\n", true, "INFO", "disk leases are on"},
		{"commented out", "#lock_manager = \"lockd\"\n", false, "ERROR", "disk leases are off: lock_manager is not set in"},
		{"nop", "lock_manager = \"nop\"\n", false, "ERROR", `disk leases are off: lock_manager is \"nop\"`},
		{"missing file", "-", false, "ERROR", "disk leases unknown"},
		{"unreadable value", "lock_manager = lockd\n", false, "ERROR", "disk leases unknown"},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(dir, c.name+".conf")
			if c.conf != "-" {
				if err := os.WriteFile(path, []byte(c.conf), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			var buf bytes.Buffer
			on := checkLockManager(path, slog.New(slog.NewTextHandler(&buf, nil)))
			out := buf.String()
			if on != c.on || !strings.Contains(out, "level="+c.level) || !strings.Contains(out, c.msg) || !strings.Contains(out, path) {
				t.Fatalf("checkLockManager = %v, logged %q; want %v at %s with %q and the path", on, out, c.on, c.level, c.msg)
			}
		})
	}
}
