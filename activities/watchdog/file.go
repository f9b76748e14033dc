package watchdog

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"vmha/types"
)

// File is the lab's simulated hardware watchdog (VMHA_WATCHDOG_DEVICE=file:PATH). It writes a line protocol to
// PATH, which the lab creates beforehand (File never creates it) as a FIFO or a regular file, and the lab's
// per-host watchdog process reads it and powers the host off through the chassis path (as its BMC's power-off
// would) when the timer expires.
//
// # Line protocol
//
// ASCII lines, each ended by one "\n", each written with a single write(2) (atomic on a FIFO: shorter than
// PIPE_BUF; appended whole to a regular file, which File opens with O_APPEND):
//
//	arm <seconds>\n   start the timer, or restart it with a new timeout. <seconds> is a decimal number > 0,
//	                  digits with an optional fraction ("10", "2.5"; no sign, no exponent, no unit), as written
//	                  by strconv.FormatFloat(timeout.Seconds(), 'f', -1, 64). The deadline is now + seconds.
//	pet\n             restart the timer: deadline = now + the armed timeout. Ignored while disarmed.
//	disarm\n          stop the timer (the magic close of /dev/watchdog). Nothing happens until the next arm.
//
// The lab side (LabTimer does this):
//   - powers the host off when the deadline passes while armed, then counts itself disarmed (the host is off; its
//     next boot's worker arms again);
//   - keeps the timer running when the writer goes away without "disarm" (EOF on the FIFO, the worker killed or
//     frozen): like /dev/watchdog closed without the magic character;
//   - refuses any other line (ParseLine returns an error): it neither pets nor disarms, it is logged;
//   - reads the lines in order; with a regular file it follows the file as it grows (from its size when the lab
//     starts watching, or from 0 if the lab truncates it first).
//
// A FIFO without a reader makes Arm fail at once (ENXIO: File opens with O_NONBLOCK, never waiting for a reader).
// A write that cannot complete within a second (a FIFO whose reader stopped reading) fails: that pet is lost,
// which only brings the power-off closer, the safe side.
type File struct {
	Path string

	mu      sync.Mutex
	f       *os.File
	timeout time.Duration
}

var _ Watchdog = (*File)(nil)

// NewFile returns the lab watchdog writing to path, not armed.
func NewFile(path string) *File { return &File{Path: path} }

// Op is one command of the line protocol.
type Op string

const (
	OpArm    Op = "arm"
	OpPet    Op = "pet"
	OpDisarm Op = "disarm"
)

// Command is one parsed line; Timeout is set for OpArm only.
type Command struct {
	Op      Op
	Timeout time.Duration
}

// Line formats c as the protocol line written to the file, "\n" included.
func (c Command) Line() string {
	if c.Op == OpArm {
		return "arm " + strconv.FormatFloat(c.Timeout.Seconds(), 'f', -1, 64) + "\n"
	}
	return string(c.Op) + "\n"
}

var secondsRE = regexp.MustCompile(`^[0-9]+(\.[0-9]+)?$`)

// ParseLine parses one protocol line, with or without its "\n". Anything else than the three commands, exactly as
// documented on File, is an error.
func ParseLine(line string) (Command, error) {
	l := strings.TrimSuffix(line, "\n")
	switch {
	case l == string(OpPet):
		return Command{Op: OpPet}, nil
	case l == string(OpDisarm):
		return Command{Op: OpDisarm}, nil
	case strings.HasPrefix(l, string(OpArm)+" "):
		arg := strings.TrimPrefix(l, string(OpArm)+" ")
		if !secondsRE.MatchString(arg) {
			return Command{}, fmt.Errorf("watchdog line %q: want arm <seconds>, a decimal number", line)
		}
		s, err := strconv.ParseFloat(arg, 64)
		if err != nil || s <= 0 || s > 1e6 {
			return Command{}, fmt.Errorf("watchdog line %q: want 0 < seconds <= 1e6", line)
		}
		return Command{Op: OpArm, Timeout: time.Duration(s * float64(time.Second))}, nil
	}
	return Command{}, fmt.Errorf("watchdog line %q: want \"arm <seconds>\", \"pet\" or \"disarm\"", line)
}

// LabTimer is the lab side's state machine: feed it every parsed line with Apply, and power the host off once
// Expired says so.
type LabTimer struct {
	Armed    bool
	Timeout  time.Duration
	Deadline time.Time
}

// Apply takes one command received at now.
func (t *LabTimer) Apply(c Command, now time.Time) {
	switch c.Op {
	case OpArm:
		t.Armed, t.Timeout, t.Deadline = true, c.Timeout, now.Add(c.Timeout)
	case OpPet:
		if t.Armed {
			t.Deadline = now.Add(t.Timeout)
		}
	case OpDisarm:
		t.Armed, t.Deadline = false, time.Time{}
	}
}

// Expired reports whether the host must be powered off now. The caller powers it off and then calls Fired.
func (t *LabTimer) Expired(now time.Time) bool { return t.Armed && !now.Before(t.Deadline) }

// Fired records the power-off: disarmed until the next arm.
func (t *LabTimer) Fired() { t.Armed, t.Deadline = false, time.Time{} }

// Arm opens the file (without creating it) and writes "arm <seconds>".
func (w *File) Arm(timeout time.Duration) error {
	if timeout <= 0 {
		return fmt.Errorf("lab watchdog %s: timeout %s: want > 0", w.Path, timeout)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.f == nil {
		f, err := os.OpenFile(w.Path, os.O_WRONLY|os.O_APPEND|syscall.O_NONBLOCK, 0)
		switch {
		case errors.Is(err, syscall.ENXIO):
			return fmt.Errorf("lab watchdog %s: nobody reads this FIFO (is the lab's watchdog running?): %w", w.Path, err)
		case errors.Is(err, fs.ErrNotExist):
			return fmt.Errorf("lab watchdog %s: missing (the lab creates it): %w", w.Path, err)
		case err != nil:
			return fmt.Errorf("lab watchdog: %w", err)
		}
		w.f = f
	}
	if err := w.write(Command{Op: OpArm, Timeout: timeout}); err != nil {
		// A caller that sees Arm fail runs without the watchdog and never pets it: stop it (if the lab got
		// anything of an earlier arm) and close.
		_ = w.write(Command{Op: OpDisarm})
		cerr := w.f.Close()
		w.f, w.timeout = nil, 0
		return errors.Join(err, cerr)
	}
	w.timeout = timeout
	return nil
}

// Pet writes "pet".
func (w *File) Pet() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.f == nil {
		return fmt.Errorf("lab watchdog %s: not armed", w.Path)
	}
	return w.write(Command{Op: OpPet})
}

// Disarm writes "disarm" and closes.
func (w *File) Disarm() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.f == nil {
		return nil
	}
	werr := w.write(Command{Op: OpDisarm})
	cerr := w.f.Close()
	w.f, w.timeout = nil, 0
	return errors.Join(werr, cerr)
}

// Abandon closes without "disarm": the lab's timer keeps running.
func (w *File) Abandon() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.f == nil {
		return nil
	}
	err := w.f.Close()
	w.f, w.timeout = nil, 0
	return err
}

// State reports the device as "file:PATH", and the timeout while armed.
func (w *File) State() types.WatchdogState {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := types.WatchdogState{Device: FilePrefix + w.Path}
	if w.f != nil {
		s.Armed, s.Timeout = true, w.timeout
	}
	return s
}

// write sends one line with one write(2). A FIFO is pollable, so a full one fails after a second instead of
// blocking; a regular file has no deadlines (SetWriteDeadline fails, ignored) and does not block.
func (w *File) write(c Command) error {
	_ = w.f.SetWriteDeadline(time.Now().Add(time.Second))
	if _, err := w.f.Write([]byte(c.Line())); err != nil {
		return fmt.Errorf("lab watchdog %s: %s: %w", w.Path, c.Op, err)
	}
	return nil
}
