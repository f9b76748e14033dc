// Command vmha is high availability for libvirt/KVM virtual machines on Temporal. One binary plays every role:
// the embedded Temporal server with its Web UI and the controller, a controller alone, the worker on each
// hypervisor, and the operator's commands.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"os/user"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.temporal.io/sdk/client"

	"vmha/activities/catalog"
	"vmha/infra/config"
	"vmha/infra/temporalclient"
	"vmha/infra/temporalserver"
	"vmha/starter"
	"vmha/types"
	"vmha/workers"
)

const usage = `vmha: high availability for libvirt/KVM virtual machines, on Temporal.

Roles (long-running):
  vmha server        embedded Temporal server (SQLite in VMHA_DATA_DIR) + Web UI + controller worker;
                     with VMHA_PERSISTENCE=postgres a node of a Temporal cluster on PostgreSQL (run two or three)
  vmha controller    controller worker only, against VMHA_TEMPORAL_ADDRESS (run several for redundancy)
  vmha hypervisor    worker for one hypervisor (run on each host, VMHA_HOST_NAME=<inventory name>)

Operator commands:
  vmha apply -f hosts.yaml          register hosts (idempotent; hosts left out of the file stop being watched)
  vmha hosts                        list hosts and their states
  vmha status [--recent 10]         the whole cluster on one screen: each host's state and why, HA VMs down,
                                    recent recoveries, what needs a person; exit code 0: all well,
                                    1: something needs a person, 2: vmha could not be asked
  vmha check-replay                 before upgrading the controllers, with the NEW binary: replay every running
                                    workflow's history with its workflow code (exit 1: some would stall)
  vmha create-vm --name web1 --image /share/images/debian.qcow2 --vcpus 1 --memory-mib 512
                                    create an HA VM on the host the scheduler picks
  vmha failover --host hv1 [--fence] [--confirm-powered-off] [--reason TEXT]
                                    move a host's VMs away; --fence powers a running host off first (IPMI);
                                    --confirm-powered-off: its BMC cannot be asked and you made sure it is off
  vmha maintenance --host hv1 on|off
                                    pause or resume watching a host (nothing is recovered while paused)
  vmha recoveries [--host hv1] [--limit 20]
                                    recent recoveries and where each VM went
  vmha share init                   prepare the shared storage at VMHA_SHARE_PATH once (catalog, disks and the
                                    share marker every host checks); idempotent, prints the share's ID
  vmha certs ca --dir DIR           create a CA for a lab or small site (DIR/ca.pem, DIR/ca-key.pem)
  vmha certs issue --dir DIR --role ROLE --name NAME [--dns NAMES] [--ip ADDRESSES]
                                    issue a certificate signed by that CA: role server (with the names clients
                                    dial it by), controller, hypervisor (NAME: its inventory host name), operator
                                    or viewer
  vmha help env                     every VMHA_* setting with its default

Every command reads its connection from the environment (VMHA_TEMPORAL_ADDRESS, VMHA_NAMESPACE, VMHA_TLS_*).
Run "vmha COMMAND --help" for a command's flags.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "help" || args[0] == "--help" || args[0] == "-h" {
		if len(args) > 1 && args[1] == "env" {
			fmt.Fprintln(stdout, "Settings (environment variables):")
			if err := config.Usage(); err != nil {
				fmt.Fprintln(stderr, err)
				return 1
			}
			return 0
		}
		fmt.Fprint(stdout, usage)
		return 0
	}
	s, err := config.Load()
	if err != nil {
		fmt.Fprintln(stderr, "vmha:", err)
		return 2
	}
	logger := newLogger(s.LogLevel, stderr)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cmd, rest := args[0], args[1:]
	if err := dispatch(ctx, cmd, rest, s, logger, stdout); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		var exit starter.ExitError
		if errors.As(err, &exit) {
			if exit.Err != nil {
				fmt.Fprintf(stderr, "vmha %s: %v\n", cmd, exit.Err)
			}
			return exit.Code
		}
		fmt.Fprintf(stderr, "vmha %s: %v\n", cmd, err)
		return 1
	}
	return 0
}

func dispatch(ctx context.Context, cmd string, args []string, s config.Settings, logger *slog.Logger, out io.Writer) error {
	switch cmd {
	case "server":
		return serve(ctx, s, logger, out)
	case "controller":
		return withClient(ctx, s, logger, func(c client.Client) error { return workers.RunController(ctx, s, c, logger) })
	case "hypervisor":
		return withClient(ctx, s, logger, func(c client.Client) error { return workers.RunHypervisor(ctx, s, c, logger) })
	case "apply", "hosts", "create-vm", "failover", "maintenance", "recoveries":
		return operate(ctx, cmd, args, s, logger, out)
	case "share":
		return share(ctx, args, s, out)
	case "certs":
		return certsCommand(args, out)
	case "status":
		return status(ctx, args, s, logger, out)
	case "check-replay":
		return checkReplay(ctx, args, s, logger, out)
	}
	return fmt.Errorf("unknown command %q (see vmha help)", cmd)
}

// serve runs the embedded Temporal server on VMHA_TEMPORAL_ADDRESS with its Web UI, and the controller in-process.
func serve(ctx context.Context, s config.Settings, logger *slog.Logger, out io.Writer) error {
	host, portText, err := net.SplitHostPort(s.TemporalAddress)
	if err != nil {
		return fmt.Errorf("%s_TEMPORAL_ADDRESS=%q: want host:port: %w", config.Prefix, s.TemporalAddress, err)
	}
	port, err := strconv.Atoi(portText)
	if err != nil {
		return fmt.Errorf("%s_TEMPORAL_ADDRESS=%q: port %q: %w", config.Prefix, s.TemporalAddress, portText, err)
	}
	var tlsFiles *temporalserver.TLSFiles
	if s.ServerTLSCert != "" {
		tlsFiles = &temporalserver.TLSFiles{Cert: s.ServerTLSCert, Key: s.ServerTLSKey, ClientCA: s.ServerTLSClientCA}
	}
	var srv *temporalserver.Server
	if s.Persistence == config.PersistencePostgres {
		srv, err = startClusterNode(ctx, s, host, port, tlsFiles, logger)
	} else {
		srv, err = temporalserver.Start(ctx, temporalserver.Options{
			DataDir: s.DataDir, ListenAddress: host, FrontendPort: port, UIPort: s.UIPort, Namespace: s.Namespace, Logger: logger,
			TLS: tlsFiles, AllowPlaintext: s.ServerPlaintext, UIAddress: s.UIAddress, UIWriteActions: s.UIWriteActions,
		})
	}
	if err != nil {
		return err
	}
	defer srv.Stop()
	fmt.Fprintf(out, "Temporal frontend: %s (namespace %s)\n", srv.FrontendAddress(), s.Namespace)
	if ui := srv.UIAddress(); ui != "" {
		fmt.Fprintf(out, "Temporal Web UI:   http://%s/namespaces/%s/workflows\n", ui, s.Namespace)
	}
	if !s.EmbeddedController {
		<-ctx.Done()
		return nil
	}
	tlsConf := srv.ClientTLS()
	if tlsConf == nil || s.TLSCert != "" {
		return withClient(ctx, s, logger, func(c client.Client) error { return workers.RunController(ctx, s, c, logger) })
	}
	// Without a certificate of its own, the embedded controller presents the server's.
	c, err := temporalclient.DialTLS(ctx, s, tlsConf, logger)
	if err != nil {
		return err
	}
	defer c.Close()
	return workers.RunController(ctx, s, c, logger)
}

func withClient(ctx context.Context, s config.Settings, logger *slog.Logger, fn func(client.Client) error) error {
	c, err := temporalclient.Dial(ctx, s, logger)
	if err != nil {
		return err
	}
	defer c.Close()
	return fn(c)
}

// share runs `vmha share init`: it prepares the share mounted at VMHA_SHARE_PATH (catalog.Init). Run it once,
// where the share is really mounted: the marker it writes is what every host checks before using the catalog.
func share(ctx context.Context, args []string, s config.Settings, out io.Writer) error {
	if len(args) != 1 || args[0] != "init" {
		return fmt.Errorf("want `vmha share init`, got %q", args)
	}
	m, created, err := catalog.Init(ctx, s.SharePath, s.ShareTimeout)
	if err != nil {
		return fmt.Errorf("%s_SHARE_PATH=%s: %w", config.Prefix, s.SharePath, err)
	}
	verb := "already prepared"
	if created {
		verb = "prepared"
	}
	fmt.Fprintf(out, "share %s %s: id %s, created %s (marker %s)\n", s.SharePath, verb, m.ID,
		m.CreatedAt.Format(time.RFC3339), catalog.MarkerPath(s.SharePath))
	return nil
}

// status runs `vmha status`; its exit code tells a script whether all is well (starter.StatusAllWell), something
// needs a person (StatusNeedsPerson), or vmha could not be asked (StatusUnavailable, also for a bad flag).
func status(ctx context.Context, args []string, s config.Settings, logger *slog.Logger, out io.Writer) error {
	fs := flag.NewFlagSet("vmha status", flag.ContinueOnError)
	fs.SetOutput(out)
	recent := fs.Int("recent", 10, "how many recent recoveries to show")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return starter.ExitError{Code: starter.StatusUnavailable, Err: err}
	}
	c, err := temporalclient.Dial(ctx, s, logger)
	if err != nil {
		return starter.ExitError{Code: starter.StatusUnavailable, Err: err}
	}
	defer c.Close()
	_, code, err := starter.Starter{Client: c, Out: out}.Status(ctx, *recent)
	if err != nil {
		return err
	}
	if code != starter.StatusAllWell {
		return starter.ExitError{Code: code}
	}
	return nil
}

// checkReplay runs `vmha check-replay`: this binary's workflow code replays every running workflow's history, before
// its controllers replace the running ones (exit 1 when any cannot: they would stall).
func checkReplay(ctx context.Context, args []string, s config.Settings, logger *slog.Logger, out io.Writer) error {
	if len(args) > 0 {
		return starter.ExitError{Code: starter.StatusUnavailable, Err: fmt.Errorf("takes no arguments, got %q", args)}
	}
	c, err := temporalclient.Dial(ctx, s, logger)
	if err != nil {
		return starter.ExitError{Code: starter.StatusUnavailable, Err: err}
	}
	defer c.Close()
	return starter.Starter{Client: c, Out: out}.CheckReplay(ctx)
}

// operate runs one operator command.
func operate(ctx context.Context, cmd string, args []string, s config.Settings, logger *slog.Logger, out io.Writer) error {
	fs := flag.NewFlagSet("vmha "+cmd, flag.ContinueOnError)
	fs.SetOutput(out)
	var (
		file, host, reason, name, image, pinHosts, pinLabels, avoidHosts, avoidLabels, group string
		fence, confirmOff                                                                    bool
		vcpus, priority, limit                                                               int
		memory                                                                               int64
	)
	switch cmd {
	case "apply":
		fs.StringVar(&file, "f", "", "inventory file (YAML or JSON) listing every host to watch")
	case "failover":
		fs.StringVar(&host, "host", "", "host to fail over (its inventory name)")
		fs.BoolVar(&fence, "fence", false, "power the host off over IPMI first if it is on (required for a running host)")
		fs.BoolVar(&confirmOff, "confirm-powered-off", false, "the BMC cannot be asked and you made sure the host is off (needs --reason)")
		fs.StringVar(&reason, "reason", "", "why, for the history and the notifications")
	case "maintenance":
		fs.StringVar(&host, "host", "", "host to pause (on) or resume (off)")
	case "recoveries":
		fs.StringVar(&host, "host", "", "only recoveries of this host")
		fs.IntVar(&limit, "limit", 20, "how many to show")
	case "create-vm":
		fs.StringVar(&name, "name", "", "VM name (unique)")
		fs.StringVar(&image, "image", "", "base image on the shared storage (the VM gets its own qcow2 overlay)")
		fs.IntVar(&vcpus, "vcpus", 1, "virtual CPUs")
		fs.Int64Var(&memory, "memory-mib", 256, "memory in MiB")
		fs.IntVar(&priority, "priority", 0, "recovery priority (higher first)")
		fs.StringVar(&pinHosts, "pin-host", "", "comma-separated hosts the VM may run on")
		fs.StringVar(&pinLabels, "pin-label", "", "comma-separated key=value labels a host must have")
		fs.StringVar(&avoidHosts, "avoid-host", "", "comma-separated hosts the VM must not run on")
		fs.StringVar(&avoidLabels, "avoid-label", "", "comma-separated key=value labels a host must not have")
		fs.StringVar(&group, "anti-affinity", "", "anti-affinity group: no two VMs of a group on one host")
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	return withClient(ctx, s, logger, func(c client.Client) error {
		st := starter.Starter{Client: c, Out: out}
		switch cmd {
		case "apply":
			if file == "" {
				return errors.New("-f: missing inventory file")
			}
			inv, err := starter.ReadInventory(file)
			if err != nil {
				return err
			}
			_, err = st.Apply(ctx, inv)
			return err
		case "hosts":
			_, err := st.Hosts(ctx)
			return err
		case "failover":
			_, err := st.Failover(ctx, types.FailoverRequest{Host: host, Fence: fence, Reason: reason, ConfirmPoweredOff: confirmOff,
				By: operatorName()})
			return err
		case "maintenance":
			on, err := onOff(fs.Args())
			if err != nil {
				return err
			}
			return st.Maintenance(ctx, host, on)
		case "recoveries":
			_, err := st.Recoveries(ctx, host, limit)
			return err
		default:
			_, err := st.CreateVM(ctx, types.CreateVMRequest{Name: name, Image: image, VCPUs: vcpus, MemoryMiB: memory,
				Policy: types.HAPolicy{Enabled: true, Priority: priority, Rules: types.Rules{
					PinHosts: split(pinHosts), PinLabels: split(pinLabels), AvoidHosts: split(avoidHosts),
					AvoidLabels: split(avoidLabels), AntiAffinityGroup: group,
				}}})
			return err
		}
	})
}

func onOff(args []string) (bool, error) {
	if len(args) == 1 && (args[0] == "on" || args[0] == "off") {
		return args[0] == "on", nil
	}
	return false, fmt.Errorf("want on or off after the flags, got %q", args)
}

func split(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}

func newLogger(level string, w io.Writer) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(level)) // config.Validate accepted it
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l}))
}

// operatorName is who runs the command, as user@machine, for the history of what an operator confirmed.
func operatorName() string {
	name := "unknown"
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	if h, err := os.Hostname(); err == nil {
		name += "@" + h
	}
	return name
}
