// Package catalog keeps vmha's catalog on the shared storage: one JSON file per HA VM under <root>/vmha/catalog,
// readable by every host, so the domain XML of a dead host's VMs survives it.
//
// The share carries a marker, <root>/vmha/share.json, written once by Init (`vmha share init`). Every catalog call
// checks it first and fails with activities.ErrShareNotMounted without it: a host whose NFS mount failed sees an
// empty local directory at the mount point, and must neither answer "no VMs" for everybody nor write its own VMs
// where nobody else sees them. Nothing in this package ever creates a directory except Init.
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
	"vmha/types"
)

// Dir is the catalog in a directory of the shared storage. It implements activities.Catalog.
type Dir struct {
	root    string
	dir     string
	timeout time.Duration
}

var _ activities.Catalog = (*Dir)(nil)

// New returns the catalog under root (the share's mount point). Every call gives up after timeout.
func New(root string, timeout time.Duration) *Dir {
	return &Dir{root: root, dir: CatalogDir(root), timeout: timeout}
}

// Check reads the share's marker: an error wrapping activities.ErrShareNotMounted when it is missing.
func (d *Dir) Check(ctx context.Context) (Marker, error) {
	return bounded(ctx, d, "check share marker", func() (Marker, error) { return readMarker(d.root) })
}

// Get reads one VM's entry. An unknown VM is an error wrapping activities.ErrNotFound.
func (d *Dir) Get(ctx context.Context, id string) (activities.CatalogEntry, error) {
	path, err := d.path(id)
	if err != nil {
		return activities.CatalogEntry{}, err
	}
	return bounded(ctx, d, "read catalog entry "+id, func() (activities.CatalogEntry, error) {
		if _, err := readMarker(d.root); err != nil {
			return activities.CatalogEntry{}, err
		}
		return readEntry(path, id)
	})
}

// List reads every entry, ordered by UUID. A file it cannot read as an entry (truncated, not JSON, holding another
// UUID, a name that is not <uuid>.json) does not hide the others: it is reported in Unreadable, by file name, so
// the caller can tell that a VM may be missing. Files whose name starts with a dot (writes in progress, probes)
// are vmha's own and skipped. A catalog directory that cannot be listed at all fails the whole list.
func (d *Dir) List(ctx context.Context) (activities.Listing, error) {
	return bounded(ctx, d, "list catalog", func() (activities.Listing, error) {
		if _, err := readMarker(d.root); err != nil {
			return activities.Listing{}, err
		}
		files, err := os.ReadDir(d.dir)
		if err != nil {
			return activities.Listing{}, err
		}
		var l activities.Listing
		for _, f := range files {
			name := f.Name()
			if strings.HasPrefix(name, ".") {
				continue
			}
			e, err := d.listed(f)
			switch {
			case errors.Is(err, activities.ErrNotFound):
				// Deleted between ReadDir and the read.
			case err != nil:
				l.Unreadable = append(l.Unreadable, types.UnreadableEntry{File: name, Reason: err.Error()})
			default:
				l.Entries = append(l.Entries, e)
			}
		}
		sort.Slice(l.Entries, func(i, j int) bool { return l.Entries[i].UUID < l.Entries[j].UUID })
		sort.Slice(l.Unreadable, func(i, j int) bool { return l.Unreadable[i].File < l.Unreadable[j].File })
		return l, nil
	})
}

// listed reads one directory entry of the catalog as a VM entry.
func (d *Dir) listed(f fs.DirEntry) (activities.CatalogEntry, error) {
	id, ok := strings.CutSuffix(f.Name(), ".json")
	if !ok {
		return activities.CatalogEntry{}, errors.New("not a catalog entry: want <uuid>.json")
	}
	if _, err := d.path(id); err != nil {
		return activities.CatalogEntry{}, errors.New("not a catalog entry: the name is not a canonical lowercase UUID")
	}
	if f.IsDir() {
		return activities.CatalogEntry{}, errors.New("a directory, not a catalog entry")
	}
	return readEntry(filepath.Join(d.dir, f.Name()), id)
}

// Writable checks the share's marker, then creates and removes a probe file in the catalog directory.
func (d *Dir) Writable(ctx context.Context) error {
	_, err := bounded(ctx, d, "probe catalog", func() (struct{}, error) {
		if _, err := readMarker(d.root); err != nil {
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
