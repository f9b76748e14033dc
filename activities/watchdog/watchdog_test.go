package watchdog

import (
	"bufio"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"vmha/types"
)

func TestNewSelects(t *testing.T) {
	if w := New(""); w != nil {
		t.Errorf("New(\"\") = %#v, want no watchdog", w)
	}
	if w, ok := New("file:/run/vmha/hv1.watchdog").(*File); !ok || w.Path != "/run/vmha/hv1.watchdog" {
		t.Errorf("New(file:...) = %#v, want the lab File at the path", w)
	}
	if w, ok := New("/dev/watchdog0").(*Device); !ok || w.Path != "/dev/watchdog0" {
		t.Errorf("New(/dev/watchdog0) = %#v, want the Linux Device", w)
	}
}

func TestParseLine(t *testing.T) {
	for _, c := range []struct {
		line string
		want Command
		bad  bool
	}{
		{line: "arm 10\n", want: Command{Op: OpArm, Timeout: 10 * time.Second}},
		{line: "arm 2.5", want: Command{Op: OpArm, Timeout: 2500 * time.Millisecond}},
		{line: "arm 0.25\n", want: Command{Op: OpArm, Timeout: 250 * time.Millisecond}},
		{line: "pet\n", want: Command{Op: OpPet}},
		{line: "pet", want: Command{Op: OpPet}},
		{line: "disarm\n", want: Command{Op: OpDisarm}},
		{line: "arm 0\n", bad: true},
		{line: "arm -1\n", bad: true},
		{line: "arm 1e3\n", bad: true},
		{line: "arm 10s\n", bad: true},
		{line: "arm\n", bad: true},
		{line: "arm  10\n", bad: true},
		{line: "PET\n", bad: true},
		{line: "pet \n", bad: true},
		{line: "pet\n\n", bad: true},
		{line: "V", bad: true},
		{line: "", bad: true},
	} {
		got, err := ParseLine(c.line)
		if c.bad {
			if err == nil {
				t.Errorf("ParseLine(%q) = %+v, want an error", c.line, got)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("ParseLine(%q) = %+v, %v; want %+v", c.line, got, err, c.want)
		}
	}
}

// readLines parses every line of the file.
func readLines(t *testing.T, path string) []Command {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []Command
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		c, err := ParseLine(sc.Text())
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
	return out
}

// TestFileRoundTrip: what File writes parses back to the same commands, in order, each a whole line; State
// follows Arm and Disarm.
func TestFileRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "hv1.watchdog")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	w := NewFile(path)
	if err := w.Pet(); err == nil {
		t.Error("Pet before Arm succeeded")
	}
	if s := w.State(); s.Armed || s.Device != "file:"+path {
		t.Errorf("State before Arm = %+v", s)
	}
	if err := w.Arm(2500 * time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if s := w.State(); s != (types.WatchdogState{Armed: true, Timeout: 2500 * time.Millisecond, Device: "file:" + path}) {
		t.Errorf("State armed = %+v", s)
	}
	for range 2 {
		if err := w.Pet(); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Arm(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	if err := w.Disarm(); err != nil {
		t.Fatal(err)
	}
	if s := w.State(); s.Armed {
		t.Errorf("State after Disarm = %+v", s)
	}
	if err := w.Pet(); err == nil {
		t.Error("Pet after Disarm succeeded")
	}
	want := []Command{{OpArm, 2500 * time.Millisecond}, {Op: OpPet}, {Op: OpPet}, {OpArm, 10 * time.Second}, {Op: OpDisarm}}
	got := readLines(t, path)
	if len(got) != len(want) {
		t.Fatalf("lines %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("line %d = %+v, want %+v", i, got[i], want[i])
		}
	}
	data, _ := os.ReadFile(path)
	if string(data) != "arm 2.5\npet\npet\narm 10\ndisarm\n" {
		t.Errorf("file holds %q", data)
	}

	// Abandon closes without "disarm".
	if err := w.Arm(time.Second); err != nil {
		t.Fatal(err)
	}
	if err := w.Abandon(); err != nil {
		t.Fatal(err)
	}
	if data, _ := os.ReadFile(path); !strings.HasSuffix(string(data), "disarm\narm 1\n") {
		t.Errorf("after Abandon the file holds %q, want no disarm after the last arm", data)
	}
}

// TestFileNeverCreates: a missing path, and a FIFO nobody reads, fail Arm at once and create nothing.
func TestFileNeverCreates(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing")
	if err := NewFile(missing).Arm(time.Second); err == nil || !strings.Contains(err.Error(), "the lab creates it") {
		t.Errorf("Arm on a missing file: %v", err)
	}
	if _, err := os.Stat(missing); err == nil {
		t.Error("Arm created the file")
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- NewFile(fifo).Arm(time.Second) }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "nobody reads") {
			t.Errorf("Arm on a FIFO without a reader: %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Arm on a FIFO without a reader blocked")
	}
}

// TestFileOverFIFO: the lines arrive through a FIFO as the lab would read them.
func TestFileOverFIFO(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	r, err := os.OpenFile(fifo, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	w := NewFile(fifo)
	if err := w.Arm(3 * time.Second); err != nil {
		t.Fatal(err)
	}
	if err := w.Pet(); err != nil {
		t.Fatal(err)
	}
	if err := w.Disarm(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 100)
	_ = r.SetReadDeadline(time.Now().Add(2 * time.Second))
	n, err := r.Read(buf)
	if err != nil || string(buf[:n]) != "arm 3\npet\ndisarm\n" {
		t.Fatalf("read %q, %v", buf[:n], err)
	}
}

func TestLabTimer(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var lt LabTimer
	lt.Apply(Command{Op: OpPet}, t0)
	if lt.Expired(t0.Add(time.Hour)) {
		t.Fatal("a pet armed the timer")
	}
	lt.Apply(Command{Op: OpArm, Timeout: 10 * time.Second}, t0)
	if lt.Expired(t0.Add(9 * time.Second)) {
		t.Fatal("expired before the timeout")
	}
	lt.Apply(Command{Op: OpPet}, t0.Add(9*time.Second))
	if lt.Expired(t0.Add(18*time.Second)) || !lt.Expired(t0.Add(19*time.Second)) {
		t.Fatal("a pet did not restart the timer for the armed timeout")
	}
	lt.Fired()
	if lt.Expired(t0.Add(time.Hour)) {
		t.Fatal("expired again after firing")
	}
	lt.Apply(Command{Op: OpArm, Timeout: time.Second}, t0)
	lt.Apply(Command{Op: OpDisarm}, t0)
	if lt.Expired(t0.Add(time.Hour)) {
		t.Fatal("expired after disarm")
	}
}

// TestDeviceWriteProtocol runs Device's writes on a regular file, the ioctls replaced: a keepalive byte at Arm
// and at each Pet, 'V' at Disarm; nothing after Abandon. The ioctls themselves need a real /dev/watchdog.
func TestDeviceWriteProtocol(t *testing.T) {
	path := filepath.Join(t.TempDir(), "watchdog")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	d := NewDevice(path)
	var asked []int
	d.setTimeout = func(_ *os.File, s int) (int, error) {
		asked = append(asked, s)
		return s + 1, nil // a driver that rounds up
	}
	if err := d.Arm(0); err == nil {
		t.Error("Arm(0) accepted")
	}
	if err := d.Arm(1500 * time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if s := d.State(); s != (types.WatchdogState{Armed: true, Timeout: 3 * time.Second, Device: path}) {
		t.Errorf("State = %+v, want the driver's timeout", s)
	}
	if err := d.Pet(); err != nil {
		t.Fatal(err)
	}
	if err := d.Disarm(); err != nil {
		t.Fatal(err)
	}
	if err := d.Pet(); err == nil {
		t.Error("Pet after Disarm succeeded")
	}
	if data, _ := os.ReadFile(path); string(data) != "\n\nV" {
		t.Errorf("device got %q, want keepalive (Arm), keepalive (Pet), V (Disarm)", data)
	}
	if err := os.Truncate(path, 0); err != nil {
		t.Fatal(err)
	}
	if err := d.Arm(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	if err := d.Abandon(); err != nil {
		t.Fatal(err)
	}
	if data, _ := os.ReadFile(path); string(data) != "\n" {
		t.Errorf("device got %q after Arm and Abandon, want one keepalive and no V", data)
	}
	if len(asked) != 2 || asked[0] != 2 || asked[1] != 10 {
		t.Errorf("timeouts asked %v, want [2 10] (whole seconds, rounded up)", asked)
	}
}

// TestIoctlNumbers recomputes the ioctl numbers with the asm-generic _IOC encoding.
func TestIoctlNumbers(t *testing.T) {
	const (
		write, read = 1, 2
		sizeofInt   = 4
	)
	ioc := func(dir, typ, nr, size uintptr) uintptr { return dir<<30 | size<<16 | typ<<8 | nr }
	if got := ioc(read|write, 'W', 6, sizeofInt); got != wdiocSetTimeout {
		t.Errorf("WDIOC_SETTIMEOUT = %#x, want %#x", wdiocSetTimeout, got)
	}
	if got := ioc(read, 'W', 7, sizeofInt); got != wdiocGetTimeout {
		t.Errorf("WDIOC_GETTIMEOUT = %#x, want %#x", wdiocGetTimeout, got)
	}
}

// TestDeviceIoctlRefused: on a file that is not a watchdog, the real ioctl fails and Arm leaves nothing armed.
func TestDeviceIoctlRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "notawatchdog")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	d := NewDevice(path)
	if err := d.Arm(10 * time.Second); err == nil || !strings.Contains(err.Error(), "WDIOC_SETTIMEOUT") {
		t.Fatalf("Arm on a regular file: %v, want the ioctl refused", err)
	}
	if d.State().Armed {
		t.Error("armed after a refused ioctl")
	}
}

// TestArmFailsClean: when the first write fails (/dev/full refuses every write), Arm fails and leaves nothing
// armed or open, since its caller will never pet it.
func TestArmFailsClean(t *testing.T) {
	if _, err := os.Stat("/dev/full"); err != nil {
		t.Skip("no /dev/full")
	}
	d := NewDevice("/dev/full")
	d.setTimeout = func(_ *os.File, s int) (int, error) { return s, nil }
	if err := d.Arm(10 * time.Second); err == nil || d.State().Armed || d.f != nil {
		t.Errorf("Device.Arm on /dev/full: %v, state %+v", err, d.State())
	}
	f := NewFile("/dev/full")
	if err := f.Arm(10 * time.Second); err == nil || f.State().Armed || f.f != nil {
		t.Errorf("File.Arm on /dev/full: %v, state %+v", err, f.State())
	}
}
