// Command watchdog is the lab's simulated hardware watchdog of one host (lab-only; lab.sh builds and runs it, one per
// host, outside the host's namespaces like its BMC, so that a hung host cannot freeze it).
//
// It reads the line protocol of activities/watchdog.File from the host's FIFO (the worker's
// VMHA_WATCHDOG_DEVICE=file:PATH) with watchdog.ParseLine, keeps a watchdog.LabTimer, and when the timer expires it
// powers the host off through the same chassis path as the host's BMC (lab.sh _chassis HOST set power 0).
//
// Like a real board's watchdog it loses its state with the host's power: when the host's boot (its init's PID in
// power.pid) is no longer the one that armed it, the timer is reset, so a host powered off and on again is never
// taken down by a timer its previous boot armed.
package main

import (
	"bufio"
	"flag"
	"io"
	"log"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"vmha/activities/watchdog"
)

func main() {
	var host, fifo, bootFile, labSh string
	flag.StringVar(&host, "host", "", "the host's name (hvK)")
	flag.StringVar(&fifo, "fifo", "", "the FIFO the host's worker writes")
	flag.StringVar(&bootFile, "boot", "", "the host's power.pid: its content names the boot")
	flag.StringVar(&labSh, "lab-sh", "", "lab.sh, run as `lab.sh _chassis HOST set power 0` to power the host off")
	flag.Parse()
	if host == "" || fifo == "" || bootFile == "" || labSh == "" {
		flag.Usage()
		os.Exit(2)
	}
	log.SetFlags(log.Ldate | log.Ltime | log.Lmicroseconds)
	log.SetPrefix("lab watchdog " + host + ": ")
	// O_RDWR: the FIFO always has a writer (this process), so a worker that goes away gives no EOF and the timer
	// keeps running, as /dev/watchdog closed without the magic character; and the worker's O_NONBLOCK open finds a
	// reader.
	f, err := os.OpenFile(fifo, os.O_RDWR, 0)
	if err != nil {
		log.Fatalf("open %s: %v", fifo, err)
	}
	if info, err := f.Stat(); err != nil || info.Mode()&os.ModeNamedPipe == 0 {
		log.Fatalf("%s: not a FIFO (%v)", fifo, err)
	}
	type line struct {
		text string
		at   time.Time
	}
	lines := make(chan line, 1024)
	go func() {
		r := bufio.NewReader(f)
		for {
			s, err := r.ReadString('\n')
			if s != "" {
				lines <- line{s, time.Now()}
			}
			if err == io.EOF {
				continue
			}
			if err != nil {
				log.Fatalf("read %s: %v", fifo, err)
			}
		}
	}()
	log.Printf("watching %s (pid %d)", fifo, os.Getpid())
	var (
		t         watchdog.LabTimer
		armedBoot string
		pets      int
	)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case l := <-lines:
			c, err := watchdog.ParseLine(l.text)
			if err != nil {
				log.Printf("refused: %v", err)
				continue
			}
			wasArmed := t.Armed
			t.Apply(c, l.at)
			switch c.Op {
			case watchdog.OpArm:
				armedBoot, pets = boot(bootFile), 0
				log.Printf("armed: %s (boot %s)", t.Timeout, armedBoot)
			case watchdog.OpPet:
				pets++
			case watchdog.OpDisarm:
				if wasArmed {
					log.Printf("disarmed after %d pets", pets)
				}
			}
		case now := <-tick.C:
			if !t.Armed {
				continue
			}
			if b := boot(bootFile); b != armedBoot {
				log.Printf("the host's power went (boot %q, armed in boot %q): timer reset", b, armedBoot)
				t.Fired()
				continue
			}
			if !t.Expired(now) {
				continue
			}
			late := now.Sub(t.Deadline)
			log.Printf("EXPIRED: not petted for %s (%d pets since arm, checked %s late): powering %s off", t.Timeout, pets, late, host)
			start := time.Now()
			cmd := exec.Command("/bin/bash", labSh, "_chassis", host, "set", "power", "0")
			cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
			out, err := cmd.CombinedOutput()
			if err != nil {
				// Still armed: try again in a second rather than leave a host running that vmha may count as off.
				log.Printf("power off failed after %s, again in 1s: %v: %s", time.Since(start), err, strings.TrimSpace(string(out)))
				t.Deadline = time.Now().Add(time.Second)
				continue
			}
			log.Printf("powered off in %s", time.Since(start))
			t.Fired()
		}
	}
}

// boot names the host's current boot: its init's PID, "" while it is off.
func boot(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}
