package catalog

import (
	"context"
	"errors"
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

func TestPutGetListDelete(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	c := New(root, 5*time.Second)
	if list, err := c.List(ctx); err != nil || len(list) != 0 {
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
	if err != nil || !reflect.DeepEqual(list, []activities.CatalogEntry{e1, e2}) {
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
	if list, err := c.List(ctx); err != nil || len(list) != 1 || list[0].UUID != id2 {
		t.Fatalf("List after Delete = %+v, %v", list, err)
	}
}

func TestMissingIsNotFound(t *testing.T) {
	_, err := New(t.TempDir(), time.Second).Get(context.Background(), id1)
	if !errors.Is(err, activities.ErrNotFound) || !strings.Contains(err.Error(), id1) {
		t.Fatalf("Get of a missing entry: %v, want ErrNotFound naming %s", err, id1)
	}
}

func TestRejectsBadUUID(t *testing.T) {
	c := New(t.TempDir(), time.Second)
	for _, id := range []string{"", "../etc/passwd", "a/b", strings.ToUpper(id1)} {
		if _, err := c.Get(context.Background(), id); err == nil || errors.Is(err, activities.ErrNotFound) || !strings.Contains(err.Error(), "UUID") {
			t.Errorf("Get(%q) = %v, want a UUID error", id, err)
		}
		if err := c.Put(context.Background(), entry(id, "x")); err == nil || !strings.Contains(err.Error(), "UUID") {
			t.Errorf("Put(%q) = %v, want a UUID error", id, err)
		}
	}
}

func TestListSkipsTempAndFailsOnCorrupt(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	c := New(root, time.Second)
	if err := c.Put(ctx, entry(id1, "a")); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, "vmha", "catalog")
	if err := os.WriteFile(filepath.Join(dir, "."+id2+".json.123.tmp"), []byte("{half"), 0o600); err != nil {
		t.Fatal(err)
	}
	if list, err := c.List(ctx); err != nil || len(list) != 1 {
		t.Fatalf("List with a temp file = %+v, %v", list, err)
	}
	if err := os.WriteFile(filepath.Join(dir, id2+".json"), []byte("{half"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := c.List(ctx); err == nil || !strings.Contains(err.Error(), id2) {
		t.Fatalf("List with a corrupt entry: %v, want an error naming %s", err, id2)
	}
}

func TestWritable(t *testing.T) {
	root := t.TempDir()
	c := New(root, time.Second)
	if err := c.Writable(context.Background()); err != nil {
		t.Fatal(err)
	}
	if files, _ := os.ReadDir(filepath.Join(root, "vmha", "catalog")); len(files) != 0 {
		t.Fatalf("probe left %v", files)
	}
	ro := filepath.Join(t.TempDir(), "ro")
	if err := os.WriteFile(ro, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	// A regular file where the share should be: the catalog directory cannot be created under it.
	if err := New(ro, time.Second).Writable(context.Background()); err == nil {
		t.Fatal("Writable succeeded on a share that is a plain file")
	}
}

// TestHungShareTimesOut puts a named pipe where an entry should be: opening it for reading blocks in the kernel
// the way a hung NFS mount does, until someone opens the other end.
func TestHungShareTimesOut(t *testing.T) {
	root := t.TempDir()
	c := New(root, 100*time.Millisecond)
	dir := filepath.Join(root, "vmha", "catalog")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
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
