// Package catalog keeps vmha's catalog on the shared storage: one JSON file per HA VM under <root>/vmha/catalog,
// readable by every host, so the domain XML of a dead host's VMs survives it.
package catalog

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/google/uuid"

	"vmha/activities"
)

// Dir is the catalog in a directory of the shared storage. It implements activities.Catalog.
type Dir struct {
	dir     string
	timeout time.Duration
}

var _ activities.Catalog = (*Dir)(nil)

// New returns the catalog under root (the share's mount point). Every call gives up after timeout.
func New(root string, timeout time.Duration) *Dir {
	return &Dir{dir: filepath.Join(root, "vmha", "catalog"), timeout: timeout}
}

// Get reads one VM's entry. An unknown VM is an error wrapping activities.ErrNotFound.
func (d *Dir) Get(ctx context.Context, id string) (activities.CatalogEntry, error) {
	path, err := d.path(id)
	if err != nil {
		return activities.CatalogEntry{}, err
	}
	return bounded(ctx, d, "read catalog entry "+id, func() (activities.CatalogEntry, error) {
		return readEntry(path, id)
	})
}

// Put writes one VM's entry atomically: a temporary file in the same directory, fsynced, renamed over the entry,
// then the directory fsynced so the rename itself survives a crash. The file is 0600: the XML may hold secrets.
func (d *Dir) Put(ctx context.Context, e activities.CatalogEntry) error {
	path, err := d.path(e.UUID)
	if err != nil {
		return err
	}
	data, err := json.MarshalIndent(e, "", "  ")
	if err != nil {
		return fmt.Errorf("encode catalog entry %s: %w", e.UUID, err)
	}
	_, err = bounded(ctx, d, "write catalog entry "+e.UUID, func() (struct{}, error) {
		return struct{}{}, d.write(path, data)
	})
	return err
}

// List reads every entry, ordered by UUID. An unreadable entry fails the whole list rather than hiding a VM
// from recovery.
func (d *Dir) List(ctx context.Context) ([]activities.CatalogEntry, error) {
	return bounded(ctx, d, "list catalog", func() ([]activities.CatalogEntry, error) {
		files, err := os.ReadDir(d.dir)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		var entries []activities.CatalogEntry
		for _, f := range files {
			id, ok := strings.CutSuffix(f.Name(), ".json")
			// Temporary files of writes in progress start with a dot.
			if !ok || strings.HasPrefix(f.Name(), ".") {
				continue
			}
			e, err := readEntry(filepath.Join(d.dir, f.Name()), id)
			if err != nil {
				return nil, err
			}
			entries = append(entries, e)
		}
		sort.Slice(entries, func(i, j int) bool { return entries[i].UUID < entries[j].UUID })
		return entries, nil
	})
}

// Delete removes one VM's entry. An unknown VM is an error wrapping activities.ErrNotFound.
func (d *Dir) Delete(ctx context.Context, id string) error {
	path, err := d.path(id)
	if err != nil {
		return err
	}
	_, err = bounded(ctx, d, "delete catalog entry "+id, func() (struct{}, error) {
		if err := os.Remove(path); errors.Is(err, fs.ErrNotExist) {
			return struct{}{}, activities.ErrNotFound
		} else if err != nil {
			return struct{}{}, err
		}
		return struct{}{}, syncDir(d.dir)
	})
	return err
}

// Writable creates and removes a probe file in the catalog directory.
func (d *Dir) Writable(ctx context.Context) error {
	_, err := bounded(ctx, d, "probe catalog "+d.dir, func() (struct{}, error) {
		if err := os.MkdirAll(d.dir, 0o700); err != nil {
			return struct{}{}, err
		}
		f, err := os.CreateTemp(d.dir, ".probe-*")
		if err != nil {
			return struct{}{}, err
		}
		_, werr := f.WriteString("vmha\n")
		cerr := f.Close()
		rerr := os.Remove(f.Name())
		return struct{}{}, errors.Join(werr, cerr, rerr)
	})
	return err
}

// path checks a VM's UUID before it becomes a file name: anything else could escape the catalog directory.
func (d *Dir) path(id string) (string, error) {
	if u, err := uuid.Parse(id); err != nil || u.String() != id {
		return "", fmt.Errorf("catalog entry %q: want a canonical lowercase UUID", id)
	}
	return filepath.Join(d.dir, id+".json"), nil
}

func (d *Dir) write(path string, data []byte) (err error) {
	if err := os.MkdirAll(d.dir, 0o700); err != nil {
		return err
	}
	// CreateTemp makes the file 0600.
	f, err := os.CreateTemp(d.dir, "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if _, err := f.Write(data); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return err
	}
	return syncDir(d.dir)
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

func readEntry(path, id string) (activities.CatalogEntry, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return activities.CatalogEntry{}, activities.ErrNotFound
	}
	if err != nil {
		return activities.CatalogEntry{}, err
	}
	var e activities.CatalogEntry
	if err := json.Unmarshal(data, &e); err != nil {
		return activities.CatalogEntry{}, fmt.Errorf("catalog entry %s: %w", path, err)
	}
	if e.UUID != id {
		return activities.CatalogEntry{}, fmt.Errorf("catalog entry %s: holds uuid %q", path, e.UUID)
	}
	return e, nil
}

func bounded[T any](ctx context.Context, d *Dir, what string, op func() (T, error)) (T, error) {
	return activities.Bounded(ctx, d.timeout, what+" (share "+d.dir+")", op)
}
