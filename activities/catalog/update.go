package catalog

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/uuid"

	"vmha/activities"
)

// minLockStale is the least age at which a lock file counts as left by a writer that died: longer than any write
// under the share timeout, so a live writer's lock is never broken.
const minLockStale = 15 * time.Second

// Update changes one entry as one step across every host: it takes the entry's lock file (created with O_EXCL,
// which NFS honours across clients), reads the entry, lets change decide, and writes or removes it, all within
// the share timeout. A writer that times out gives its write up before the rename that would publish it, and
// renames only while its lock is still its own, so a late write cannot roll back a newer one (the window left is
// the instant between that check and the rename). This is the only way entries are written.
func (d *Dir) Update(ctx context.Context, id string, change activities.ChangeFunc) (activities.CatalogEntry, error) {
	path, err := d.path(id)
	if err != nil {
		return activities.CatalogEntry{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	return bounded(ctx, d, "update catalog entry "+id, func() (activities.CatalogEntry, error) {
		if _, err := readMarker(d.root); err != nil {
			return activities.CatalogEntry{}, err
		}
		l, err := d.lock(ctx, id)
		if err != nil {
			return activities.CatalogEntry{}, err
		}
		defer l.release()
		e, err := readEntry(path, id)
		exists := err == nil
		if err != nil && !errors.Is(err, activities.ErrNotFound) {
			return activities.CatalogEntry{}, err
		}
		op, err := change(&e, exists)
		if err != nil {
			return e, err
		}
		switch op {
		case activities.Keep:
			if !exists {
				return e, activities.ErrNotFound
			}
			return e, nil
		case activities.Remove:
			if !exists {
				return e, activities.ErrNotFound
			}
			if err := l.publish(ctx, func() error { return os.Remove(path) }); err != nil {
				return e, err
			}
			return e, syncDir(d.dir)
		}
		if e.UUID != id {
			return e, fmt.Errorf("catalog entry %s: change made it uuid %q", id, e.UUID)
		}
		data, err := json.MarshalIndent(e, "", "  ")
		if err != nil {
			return e, fmt.Errorf("encode catalog entry %s: %w", id, err)
		}
		return e, d.write(ctx, l, path, data)
	})
}

// write publishes data as the entry: a temporary file in the same directory, fsynced, renamed over the entry
// while the lock is still held, then the directory fsynced so the rename survives a crash. 0600: the XML may hold
// secrets.
func (d *Dir) write(ctx context.Context, l *entryLock, path string, data []byte) error {
	tmp, err := WriteTemp(d.dir, path, data, 0o600)
	if err != nil {
		return err
	}
	if err := l.publish(ctx, func() error { return os.Rename(tmp, path) }); err != nil {
		os.Remove(tmp)
		return err
	}
	return syncDir(d.dir)
}

// WriteTemp writes data to a new temporary file beside path (its name starts with a dot, so listings skip it),
// with mode, fsynced and closed, and returns its name: the first half of every atomic write on the share, whose
// second half is a rename or a link, so no reader ever sees the final name with data not yet on the server.
func WriteTemp(dir, path string, data []byte, mode os.FileMode) (string, error) {
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return "", err
	}
	err = errors.Join(write(f, data, mode), f.Close())
	if err != nil {
		os.Remove(f.Name())
		return "", err
	}
	return f.Name(), nil
}

func write(f *os.File, data []byte, mode os.FileMode) error {
	if _, err := f.Write(data); err != nil {
		return err
	}
	if err := f.Chmod(mode); err != nil {
		return err
	}
	return f.Sync()
}

// entryLock is one writer's hold on one entry: a lock file holding the writer's token.
type entryLock struct {
	path  string
	token string
}

// lock takes the entry's lock file, waiting while another writer holds it, and breaking a lock older than the
// stale age (its writer died mid-update).
func (d *Dir) lock(ctx context.Context, id string) (*entryLock, error) {
	l := &entryLock{path: filepath.Join(d.dir, "."+id+".lock"), token: uuid.NewString()}
	stale := max(3*d.timeout, minLockStale)
	for {
		f, err := os.OpenFile(l.path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
		if err == nil {
			_, werr := fmt.Fprintf(f, "%s\n", l.token)
			cerr := f.Close()
			if err := errors.Join(werr, cerr); err != nil {
				os.Remove(l.path)
				return nil, fmt.Errorf("lock %s: %w", l.path, err)
			}
			return l, nil
		}
		if !errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("lock %s: %w", l.path, err)
		}
		if info, err := os.Stat(l.path); err == nil && time.Since(info.ModTime()) > stale {
			// Renaming is atomic: of two hosts breaking the same stale lock, one succeeds.
			_ = os.Rename(l.path, l.path+".broken-"+l.token)
			_ = os.Remove(l.path + ".broken-" + l.token)
			continue
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("lock %s held by another writer: %w", l.path, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// publish makes a change visible only if the update has not been given up and the lock is still this writer's.
func (l *entryLock) publish(ctx context.Context, change func() error) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("update given up before it was published: %w", err)
	}
	if !l.held() {
		return fmt.Errorf("lock %s was broken by another writer: update not published", l.path)
	}
	return change()
}

func (l *entryLock) held() bool {
	b, err := os.ReadFile(l.path)
	return err == nil && strings.TrimSpace(string(b)) == l.token
}

// release removes the lock file if it is still this writer's.
func (l *entryLock) release() {
	if l.held() {
		os.Remove(l.path)
	}
}

// Put writes an entry whatever the catalog held, and Delete removes one: set-up for tests and benchmarks. vmha
// itself changes entries only with Update, deciding on what it finds.
func (d *Dir) Put(ctx context.Context, e activities.CatalogEntry) error {
	_, err := d.Update(ctx, e.UUID, func(cur *activities.CatalogEntry, _ bool) (activities.Change, error) {
		*cur = e
		return activities.Write, nil
	})
	return err
}

// Delete removes an entry; an unknown VM is an error wrapping activities.ErrNotFound.
func (d *Dir) Delete(ctx context.Context, id string) error {
	_, err := d.Update(ctx, id, func(*activities.CatalogEntry, bool) (activities.Change, error) {
		return activities.Remove, nil
	})
	return err
}
