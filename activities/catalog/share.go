package catalog

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/google/uuid"

	"vmha/activities"
)

// MarkerFile is the share's identity, <root>/vmha/share.json.
const MarkerFile = "share.json"

// Marker is the share's identity, written once by Init. Its presence says the share itself is mounted, not the
// empty directory a failed mount leaves at the mount point.
type Marker struct {
	ID        string    `json:"id"`
	CreatedAt time.Time `json:"createdAt"`
}

// VMHADir is vmha's directory on the share; CatalogDir, DisksDir, HeartbeatsDir and MarkerPath are below it.
func VMHADir(root string) string       { return filepath.Join(root, "vmha") }
func CatalogDir(root string) string    { return filepath.Join(root, "vmha", "catalog") }
func DisksDir(root string) string      { return filepath.Join(root, "vmha", "disks") }
func HeartbeatsDir(root string) string { return filepath.Join(root, "vmha", "heartbeats") }
func MarkerPath(root string) string    { return filepath.Join(root, "vmha", MarkerFile) }

// Directory modes Init creates. The catalog holds domain XML with secrets: root only. The disks directory and
// vmha's own may be traversed but not listed, so a QEMU running as another user can still open its own disk.
// The heartbeats (one file per host, renewed by its worker, read by the controller) are root only, like the
// catalog: the controller and every hypervisor worker run as root, and nothing else has a reason to read them, let
// alone to forge one (a heartbeat that says "alive" or "watchdog armed" steers fencing and recovery). QEMU never
// needs to traverse it, so 0700 rather than the disks' 0711.
const (
	vmhaDirMode       = 0o711
	catalogDirMode    = 0o700
	disksDirMode      = 0o711
	heartbeatsDirMode = 0o700
	imagesDirMode     = 0o755
)

// Init prepares the share mounted at root (`vmha share init`): vmha's directory, the catalog, disks and
// heartbeats directories, then the marker with a new random ID. It is idempotent: an existing marker is kept
// (created is false) and returned, and a directory missing from a share prepared by an older vmha (heartbeats) is
// added. root itself must already exist: Init never creates a mount point.
func Init(ctx context.Context, root string, timeout time.Duration) (m Marker, created bool, err error) {
	type result struct {
		m       Marker
		created bool
	}
	r, err := activities.Bounded(ctx, timeout, "prepare share "+root, func() (result, error) {
		m, created, err := initShare(root)
		return result{m, created}, err
	})
	return r.m, r.created, err
}

func initShare(root string) (Marker, bool, error) {
	info, err := os.Stat(root)
	if err != nil {
		return Marker{}, false, fmt.Errorf("share mount point: %w", err)
	}
	if !info.IsDir() {
		return Marker{}, false, fmt.Errorf("share mount point %s is not a directory", root)
	}
	for _, d := range []struct {
		path string
		mode os.FileMode
	}{{VMHADir(root), vmhaDirMode}, {CatalogDir(root), catalogDirMode}, {DisksDir(root), disksDirMode},
		{HeartbeatsDir(root), heartbeatsDirMode}, {activities.ImagesDir(root), imagesDirMode}} {
		if err := os.Mkdir(d.path, d.mode); err != nil && !errors.Is(err, fs.ErrExist) {
			return Marker{}, false, err
		}
		if info, err := os.Stat(d.path); err != nil {
			return Marker{}, false, err
		} else if !info.IsDir() {
			return Marker{}, false, fmt.Errorf("%s is not a directory", d.path)
		}
	}
	if m, err := readMarker(root); err == nil {
		return m, false, nil
	} else if _, statErr := os.Lstat(MarkerPath(root)); statErr == nil {
		return Marker{}, false, fmt.Errorf("%w; move it away to give the share a new identity", err)
	}
	m := Marker{ID: uuid.NewString(), CreatedAt: time.Now().UTC()}
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return Marker{}, false, err
	}
	if err := publish(VMHADir(root), MarkerPath(root), append(data, '\n')); errors.Is(err, fs.ErrExist) {
		// Another init won the race: its marker is the share's.
		m, err := readMarker(root)
		return m, false, err
	} else if err != nil {
		return Marker{}, false, fmt.Errorf("write share marker: %w", err)
	}
	return m, true, nil
}

// publish writes data to a temporary file, fsyncs it and links it to path, which must not exist yet (a link,
// unlike a rename, never replaces another writer's marker), then fsyncs the directory.
func publish(dir, path string, data []byte) error {
	tmp, err := WriteTemp(dir, path, data, 0o644)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	if err := os.Link(tmp, path); err != nil {
		return err
	}
	return syncDir(dir)
}

// CheckMarker reads the share's marker at root, like Dir.Check but unbounded: for callers that already run it
// inside their own bounded call (activities.Bounded), as the heartbeat writer and reader do. Any failure wraps
// activities.ErrShareNotMounted and says what to do.
func CheckMarker(root string) (Marker, error) { return readMarker(root) }

// readMarker reads the share's marker. Any failure wraps activities.ErrShareNotMounted with what to do.
func readMarker(root string) (Marker, error) {
	path := MarkerPath(root)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
		return Marker{}, fmt.Errorf("%w: no share marker %s: mount the shared storage at %s on this host, "+
			"or run `vmha share init` once to prepare a new share", activities.ErrShareNotMounted, path, root)
	}
	if err != nil {
		return Marker{}, fmt.Errorf("%w: share marker %s: %v", activities.ErrShareNotMounted, path, err)
	}
	var m Marker
	if err := json.Unmarshal(data, &m); err != nil || m.ID == "" {
		if err == nil {
			err = errors.New("no id")
		}
		return Marker{}, fmt.Errorf("%w: share marker %s is unreadable: %v", activities.ErrShareNotMounted, path, err)
	}
	return m, nil
}
