package catalog

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"vmha/activities"
	"vmha/types"
)

const (
	id1 = "0b0c5a3e-5e4f-4d1c-9d5e-2f7a1b3c4d5e"
	id2 = "6695eb01-f6a4-8304-79aa-97f2502e193f"
)

func entry(id, name string) activities.CatalogEntry {
	return activities.CatalogEntry{
		VMRecord: types.VMRecord{UUID: id, Name: name, Owner: "hv1", Generation: 3, MemoryMiB: 512, VCPUs: 2,
			Policy:    types.HAPolicy{Enabled: true, Priority: 4, Rules: types.Rules{PinLabels: []string{"zone=a"}}},
			UpdatedAt: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)},
		XML: "<domain><name>" + name + "</name></domain>",
	}
}

// share is a prepared share (vmha share init) in a new temporary directory.
func share(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	if _, _, err := Init(context.Background(), root, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	return root
}

func TestPutGetListDelete(t *testing.T) {
	ctx := context.Background()
	root := share(t)
	c := New(root, 5*time.Second)
	if list, err := c.List(ctx); err != nil || len(list.Entries) != 0 || len(list.Unreadable) != 0 {
		t.Fatalf("List of a new catalog = %v, %v", list, err)
	}
	e1, e2 := entry(id1, "a"), entry(id2, "b")
	for _, e := range []activities.CatalogEntry{e2, e1} {
		if err := c.Put(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	got, err := c.Get(ctx, id1)
	if err != nil || !reflect.DeepEqual(got, e1) {
		t.Fatalf("Get = %+v, %v; want %+v", got, err, e1)
	}
	e1.Generation, e1.Owner = 4, "hv2"
	if err := c.Put(ctx, e1); err != nil {
		t.Fatal(err)
	}
	list, err := c.List(ctx)
	if err != nil || !reflect.DeepEqual(list, activities.Listing{Entries: []activities.CatalogEntry{e1, e2}}) {
		t.Fatalf("List = %+v, %v", list, err)
	}
	dir := filepath.Join(root, "vmha", "catalog")
	files, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 2 {
		t.Fatalf("catalog dir holds %v, want just the two entries (no temp files)", files)
	}
	for _, f := range files {
		info, err := f.Info()
		if err != nil {
			t.Fatal(err)
		}
		if info.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", f.Name(), info.Mode().Perm())
		}
	}
	if err := c.Delete(ctx, id1); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get(ctx, id1); !errors.Is(err, activities.ErrNotFound) {
		t.Fatalf("Get after Delete: %v, want ErrNotFound", err)
	}
	if err := c.Delete(ctx, id1); !errors.Is(err, activities.ErrNotFound) {
		t.Fatalf("second Delete: %v, want ErrNotFound", err)
	}
	if list, err := c.List(ctx); err != nil || len(list.Entries) != 1 || list.Entries[0].UUID != id2 {
		t.Fatalf("List after Delete = %+v, %v", list, err)
	}
}

func TestMissingIsNotFound(t *testing.T) {
	_, err := New(share(t), time.Second).Get(context.Background(), id1)
	if !errors.Is(err, activities.ErrNotFound) || !strings.Contains(err.Error(), id1) {
		t.Fatalf("Get of a missing entry: %v, want ErrNotFound naming %s", err, id1)
	}
}

func TestRejectsBadUUID(t *testing.T) {
	c := New(share(t), time.Second)
	for _, id := range []string{"", "../etc/passwd", "a/b", strings.ToUpper(id1)} {
		if _, err := c.Get(context.Background(), id); err == nil || errors.Is(err, activities.ErrNotFound) || !strings.Contains(err.Error(), "UUID") {
			t.Errorf("Get(%q) = %v, want a UUID error", id, err)
		}
		if err := c.Put(context.Background(), entry(id, "x")); err == nil || !strings.Contains(err.Error(), "UUID") {
			t.Errorf("Put(%q) = %v, want a UUID error", id, err)
		}
	}
}

// TestListReportsUnreadable: a truncated entry, a stray .json file and a directory do not hide the readable
// entry, and each is reported by name; temporary files of writes in progress stay skipped.
func TestListReportsUnreadable(t *testing.T) {
	ctx := context.Background()
	root := share(t)
	c := New(root, time.Second)
	good := entry(id1, "a")
	if err := c.Put(ctx, good); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, "vmha", "catalog")
	for name, data := range map[string]string{
		"." + id2 + ".json.123.tmp": "{half",
		id2 + ".json":               `{"uuid": "` + id2 + `", "name": "b", "xml": "<dom`,
		"garbage.json":              `{"uuid": "` + id1 + `"}`,
		"notes.txt":                 "remember the milk",
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "3f0e6c1a-9d4b-4c2e-8f7a-1b2c3d4e5f60.json"), 0o700); err != nil {
		t.Fatal(err)
	}
	list, err := c.List(ctx)
	if err != nil {
		t.Fatalf("List with unreadable files: %v, want the readable entries", err)
	}
	if !reflect.DeepEqual(list.Entries, []activities.CatalogEntry{good}) {
		t.Errorf("Entries = %+v, want just %s", list.Entries, id1)
	}
	var files []string
	for _, u := range list.Unreadable {
		files = append(files, u.File)
		if u.Reason == "" {
			t.Errorf("%s reported without a reason", u.File)
		}
	}
	want := []string{"3f0e6c1a-9d4b-4c2e-8f7a-1b2c3d4e5f60.json", id2 + ".json", "garbage.json", "notes.txt"}
	if !reflect.DeepEqual(files, want) {
		t.Errorf("Unreadable = %+v, want files %v", list.Unreadable, want)
	}
}

// tree lists every path under root with its mode, to show a call created nothing.
func tree(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		out = append(out, p+" "+info.Mode().String())
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestWithoutMarker: on an empty mount point (a share that did not mount) and on a share whose catalog
// directory exists but has no marker, every call fails with ErrShareNotMounted, names the marker and the
// command, and creates nothing. After Init, the same calls work.
func TestWithoutMarker(t *testing.T) {
	ctx := context.Background()
	empty := t.TempDir()
	unmarked := t.TempDir()
	if err := os.MkdirAll(filepath.Join(unmarked, "vmha", "catalog"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(unmarked, "vmha", "catalog", id2+".json"), []byte("{}"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, root := range []string{empty, unmarked} {
		before := tree(t, root)
		c := New(root, time.Second)
		check := func(what string, err error) {
			t.Helper()
			if !errors.Is(err, activities.ErrShareNotMounted) || !strings.Contains(err.Error(), MarkerPath(root)) ||
				!strings.Contains(err.Error(), "vmha share init") {
				t.Errorf("%s on %s without a marker: %v, want ErrShareNotMounted naming the marker and `vmha share init`", what, root, err)
			}
		}
		_, err := c.Get(ctx, id1)
		check("Get", err)
		check("Put", c.Put(ctx, entry(id1, "a")))
		list, err := c.List(ctx)
		check("List", err)
		if len(list.Entries)+len(list.Unreadable) != 0 {
			t.Errorf("List without a marker returned %+v", list)
		}
		check("Delete", c.Delete(ctx, id2))
		check("Writable", c.Writable(ctx))
		_, err = c.Check(ctx)
		check("Check", err)
		if after := tree(t, root); !reflect.DeepEqual(after, before) {
			t.Errorf("calls without a marker changed %s:\nbefore %v\nafter  %v", root, before, after)
		}

		if _, _, err := Init(ctx, root, time.Second); err != nil {
			t.Fatal(err)
		}
		if err := c.Writable(ctx); err != nil {
			t.Errorf("Writable after Init: %v", err)
		}
		if err := c.Put(ctx, entry(id1, "a")); err != nil {
			t.Errorf("Put after Init: %v", err)
		}
		if _, err := c.Get(ctx, id1); err != nil {
			t.Errorf("Get after Init: %v", err)
		}
		if list, err := c.List(ctx); err != nil || len(list.Entries) != 1 {
			t.Errorf("List after Init = %+v, %v", list, err)
		}
	}
}

// TestInit: the catalog (0700), disks (0711) and heartbeats (0700) directories and the marker are made once; a
// second Init keeps the ID, and adds the heartbeats directory to a share prepared without it.
func TestInit(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	m, created, err := Init(ctx, root, time.Second)
	if err != nil || !created || m.ID == "" || m.CreatedAt.IsZero() {
		t.Fatalf("Init = %+v, %v, %v", m, created, err)
	}
	for dir, mode := range map[string]os.FileMode{CatalogDir(root): 0o700, DisksDir(root): 0o711, HeartbeatsDir(root): 0o700} {
		info, err := os.Stat(dir)
		if err != nil || !info.IsDir() || info.Mode().Perm() != mode {
			t.Errorf("%s: %v, %v; want a directory with mode %v", dir, info, err, mode)
		}
	}
	again, created, err := Init(ctx, root, time.Second)
	if err != nil || created || again.ID != m.ID || !again.CreatedAt.Equal(m.CreatedAt) {
		t.Fatalf("second Init = %+v, %v, %v; want the first marker %+v kept", again, created, err, m)
	}
	if got, err := New(root, time.Second).Check(ctx); err != nil || got.ID != m.ID {
		t.Fatalf("Check = %+v, %v", got, err)
	}
	if entries, _ := os.ReadDir(VMHADir(root)); len(entries) != 4 {
		t.Errorf("vmha dir holds %v, want catalog, disks, heartbeats and the marker (no temp files)", entries)
	}
	// A share prepared before the heartbeats existed: Init again adds the directory and keeps the marker.
	if err := os.Remove(HeartbeatsDir(root)); err != nil {
		t.Fatal(err)
	}
	if again, created, err := Init(ctx, root, time.Second); err != nil || created || again.ID != m.ID {
		t.Fatalf("Init of a share without heartbeats = %+v, %v, %v", again, created, err)
	}
	if info, err := os.Stat(HeartbeatsDir(root)); err != nil || !info.IsDir() || info.Mode().Perm() != 0o700 {
		t.Errorf("heartbeats dir after a second Init: %v, %v", info, err)
	}
	if _, _, err := Init(ctx, filepath.Join(root, "missing"), time.Second); err == nil {
		t.Error("Init created a missing mount point")
	}
}

func TestWritable(t *testing.T) {
	root := share(t)
	c := New(root, time.Second)
	if err := c.Writable(context.Background()); err != nil {
		t.Fatal(err)
	}
	if files, _ := os.ReadDir(filepath.Join(root, "vmha", "catalog")); len(files) != 0 {
		t.Fatalf("probe left %v", files)
	}
	if err := os.Chmod(CatalogDir(root), 0o500); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Chmod(CatalogDir(root), 0o700) })
	if os.Geteuid() != 0 {
		if err := c.Writable(context.Background()); err == nil {
			t.Fatal("Writable succeeded on a read-only catalog")
		}
	}
	if err := os.RemoveAll(CatalogDir(root)); err != nil {
		t.Fatal(err)
	}
	if err := c.Writable(context.Background()); err == nil {
		t.Fatal("Writable succeeded without a catalog directory")
	}
	if _, err := os.Stat(CatalogDir(root)); err == nil {
		t.Fatal("Writable created the catalog directory")
	}
}

// TestHungShareTimesOut puts a named pipe where an entry should be: opening it for reading blocks in the kernel
// the way a hung NFS mount does, until someone opens the other end.
func TestHungShareTimesOut(t *testing.T) {
	root := share(t)
	c := New(root, 100*time.Millisecond)
	dir := filepath.Join(root, "vmha", "catalog")
	fifo := filepath.Join(dir, id1+".json")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	// Release the blocked readers so the test leaves no goroutine behind: opening read-write never blocks and
	// lets every pending open through; with the path gone and the writer closed, they read EOF and end.
	t.Cleanup(func() {
		w, err := os.OpenFile(fifo, os.O_RDWR, 0)
		if err != nil {
			t.Error(err)
			return
		}
		os.Remove(fifo)
		w.Close()
	})
	_, err := c.Get(context.Background(), id1)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Get of a hung entry: %v, want a deadline error", err)
	}
	if _, err := c.List(context.Background()); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("List with a hung entry: %v, want a deadline error", err)
	}
}
