// Package notify tells people what vmha did: a structured log line and Prometheus metrics for every event, and,
// when configured, a signed JSON webhook.
//
// Notify runs as a Temporal activity and is retried while the webhook fails. Metrics and the log line are
// therefore recorded before the webhook is tried, so a webhook outage loses no metrics, and a Notifier remembers
// the events it has already recorded, so retries of the same event (same JSON body) in this process do not
// count twice. A retry that lands on another controller replica does count again there: counters are "at
// least once" across replicas.
package notify

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"vmha/types"
)

// Webhook request headers.
const (
	// SignatureHeader carries the time of sending and the HMAC-SHA256 of it and the body, keyed with the webhook
	// secret (Sign, Verify).
	SignatureHeader = "X-Vmha-Signature"
	// EventHeader carries the event kind, so receivers can route without parsing the body.
	EventHeader = "X-Vmha-Event"
)

const signaturePrefix = "sha256="

// rememberedEvents bounds the memory of recorded events; retries come within a minute, long before a busy
// cluster emits this many events.
const rememberedEvents = 4096

// Options configures a Notifier.
type Options struct {
	// WebhookURL receives every event as a JSON POST; empty turns the webhook off.
	WebhookURL string
	// WebhookSecret keys the X-Vmha-Signature HMAC; required when WebhookURL is set.
	WebhookSecret string
	// HTTPClient sends the webhook; nil means a client with a 10 s timeout.
	HTTPClient *http.Client
	// Logger receives one line per event; nil discards.
	Logger *slog.Logger
	// Registry gets the vmha_* metrics; nil means a private registry nobody scrapes.
	Registry prometheus.Registerer
}

// Notifier implements activities.Notifier.
type Notifier struct {
	webhook *url.URL
	secret  string
	http    *http.Client
	logger  *slog.Logger
	m       metrics

	mu sync.Mutex
	// seen and order remember recorded events by body hash, oldest first in order.
	seen  map[[sha256.Size]byte]struct{}
	order [][sha256.Size]byte
	// stateAt is the time of the newest host.state event applied per host: a retried older event arriving
	// after a newer one must not move the vmha_host_state gauge back.
	stateAt map[string]time.Time
}

type metrics struct {
	hostState        *prometheus.GaugeVec
	transitions      *prometheus.CounterVec
	recoveries       *prometheus.CounterVec
	detection        prometheus.Histogram
	vmRecoverySecs   prometheus.Histogram
	hostRecoverySecs prometheus.Histogram
}

// durationBuckets spans a fast loopback failover (0.1 s) to a slow fence plus boot (2 min).
var durationBuckets = []float64{0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 45, 60, 90, 120}

// Recovery outcomes, the values of vmha_vm_recoveries_total's outcome label.
const (
	outcomeStarted = "started"
	outcomeDone    = "done"
	outcomeFailed  = "failed"
)

// New checks the options and registers the metrics.
func New(o Options) (*Notifier, error) {
	n := &Notifier{
		secret:  o.WebhookSecret,
		http:    o.HTTPClient,
		logger:  o.Logger,
		seen:    map[[sha256.Size]byte]struct{}{},
		stateAt: map[string]time.Time{},
	}
	if o.WebhookURL != "" {
		u, err := url.Parse(o.WebhookURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			// The URL itself may embed a token (many chat webhooks do): name only what is safe.
			return nil, errors.New("webhook URL: want http(s)://host/path (the value is not shown: it may hold a token)")
		}
		if o.WebhookSecret == "" {
			return nil, fmt.Errorf("webhook %s: WebhookSecret is empty; receivers could not tell vmha's events from forged ones", redact(u))
		}
		n.webhook = u
	}
	if n.http == nil {
		n.http = &http.Client{Timeout: 10 * time.Second}
	}
	if n.logger == nil {
		n.logger = slog.New(slog.DiscardHandler)
	}
	reg := o.Registry
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	n.m = metrics{
		hostState: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "vmha_host_state",
			Help: "1 for the state each host's monitor is in, 0 for the others.",
		}, []string{"host", "state"}),
		transitions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vmha_host_transitions_total",
			Help: "Host state changes by previous and new state.",
		}, []string{"from", "to"}),
		recoveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vmha_vm_recoveries_total",
			Help: "VM recoveries started, done and failed.",
		}, []string{"outcome"}),
		detection: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "vmha_detection_seconds",
			Help:    "Time from a host's first failed probe to its being declared dead.",
			Buckets: durationBuckets,
		}),
		vmRecoverySecs: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "vmha_vm_recovery_seconds",
			Help:    "Time to recover one VM on another host.",
			Buckets: durationBuckets,
		}),
		hostRecoverySecs: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "vmha_host_recovery_seconds",
			Help:    "Time to handle every HA VM of a dead host.",
			Buckets: durationBuckets,
		}),
	}
	for _, c := range []prometheus.Collector{n.m.hostState, n.m.transitions, n.m.recoveries, n.m.detection, n.m.vmRecoverySecs, n.m.hostRecoverySecs} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register notify metrics: %w", err)
		}
	}
	// Outcomes exist from the start, so rate() and alerts work before the first recovery.
	for _, o := range []string{outcomeStarted, outcomeDone, outcomeFailed} {
		n.m.recoveries.WithLabelValues(o)
	}
	return n, nil
}

// Notify logs and counts e once, then posts it to the webhook if one is configured. A failed delivery is an
// error so that Temporal retries it.
func (n *Notifier) Notify(ctx context.Context, e types.Event) error {
	body, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("encode %s event for host %s: %w", e.Kind, e.Host, err)
	}
	if n.record(body, e) {
		n.logger.Log(ctx, level(e), "vmha event", attrs(e)...)
	}
	if n.webhook == nil {
		return nil
	}
	if err := n.post(ctx, body, e); err != nil {
		n.logger.WarnContext(ctx, "webhook delivery failed", "kind", e.Kind, "host", e.Host, "error", err)
		return err
	}
	return nil
}

// record updates the metrics unless this exact event was already recorded; it says whether it was new.
func (n *Notifier) record(body []byte, e types.Event) bool {
	key := sha256.Sum256(body)
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, dup := n.seen[key]; dup {
		return false
	}
	n.seen[key] = struct{}{}
	n.order = append(n.order, key)
	if len(n.order) > rememberedEvents {
		delete(n.seen, n.order[0])
		n.order = n.order[1:]
	}

	switch e.Kind {
	case types.EventHostState:
		// A monitor's first state has no "from": it is not a transition.
		if e.From != "" {
			n.m.transitions.WithLabelValues(string(e.From), string(e.To)).Inc()
		}
		if last, ok := n.stateAt[e.Host]; e.To != "" && (!ok || !e.At.Before(last)) {
			n.stateAt[e.Host] = e.At
			for _, s := range types.AllHostStates {
				v := 0.0
				if s == e.To {
					v = 1
				}
				n.m.hostState.WithLabelValues(e.Host, string(s)).Set(v)
			}
		}
		// Zero means the monitor could not tell (a host declared dead without failed probes, e.g. by an operator).
		if e.To == types.HostDead && e.Seconds > 0 {
			n.m.detection.Observe(e.Seconds)
		}
	case types.EventRecoveryStarted:
		n.m.recoveries.WithLabelValues(outcomeStarted).Inc()
	case types.EventRecoveryDone:
		n.m.recoveries.WithLabelValues(outcomeDone).Inc()
		if e.Seconds > 0 {
			n.m.vmRecoverySecs.Observe(e.Seconds)
		}
	case types.EventRecoveryFailed:
		n.m.recoveries.WithLabelValues(outcomeFailed).Inc()
	case types.EventHostRecoveryDone:
		if e.Seconds > 0 {
			n.m.hostRecoverySecs.Observe(e.Seconds)
		}
	}
	return true
}

func (n *Notifier) post(ctx context.Context, body []byte, e types.Event) error {
	where := fmt.Sprintf("webhook %s: %s event for host %s", redact(n.webhook), e.Kind, e.Host)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, n.webhook.String(), bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("%s: %w", where, err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(EventHeader, string(e.Kind))
	req.Header.Set(SignatureHeader, Sign(n.secret, body, time.Now()))
	resp, err := n.http.Do(req)
	if err != nil {
		// *url.Error repeats the whole URL, which may hold a token: keep only the cause.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return fmt.Errorf("%s: %w", where, err)
	}
	defer resp.Body.Close()
	// Read a little of the answer for the error, and drain the rest so the connection can be reused.
	snippet, _ := io.ReadAll(io.LimitReader(resp.Body, 256))
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("%s: receiver answered %s: %q", where, resp.Status, strings.TrimSpace(string(snippet)))
	}
	return nil
}

// Sign returns the X-Vmha-Signature value of body sent at t: "t=<unix seconds>,sha256=<hex HMAC-SHA256 of
// "<unix seconds>.<body>">" keyed with secret. The time is signed with the body, so a receiver can refuse a
// captured post replayed later (Verify).
func Sign(secret string, body []byte, t time.Time) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	return "t=" + ts + "," + signaturePrefix + hex.EncodeToString(mac(secret, ts, body))
}

// MaxSignatureAge is how old a signed post a receiver should accept: deliveries are retried for about a minute, each
// signed afresh. Within it a receiver that must refuse every replay remembers the signatures it accepted.
const MaxSignatureAge = 5 * time.Minute

// Verify checks that header is body's X-Vmha-Signature under secret, signed at most maxAge before now (and not
// more than maxAge after it: clocks differ a little, not by minutes). The comparison takes constant time, so a
// receiver does not leak how much of a forged signature was right.
func Verify(secret string, body []byte, header string, now time.Time, maxAge time.Duration) error {
	ts, sigHex, ok := strings.Cut(strings.TrimPrefix(header, "t="), ","+signaturePrefix)
	if !ok || !strings.HasPrefix(header, "t=") {
		return fmt.Errorf("%s %q: want t=<unix seconds>,%s<hex>", SignatureHeader, header, signaturePrefix)
	}
	unix, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return fmt.Errorf("%s timestamp %q: %w", SignatureHeader, ts, err)
	}
	sig, err := hex.DecodeString(sigHex)
	if err != nil || !hmac.Equal(sig, mac(secret, ts, body)) {
		return fmt.Errorf("%s: signature does not match the body", SignatureHeader)
	}
	if age := now.Sub(time.Unix(unix, 0)); age > maxAge || age < -maxAge {
		return fmt.Errorf("%s: signed at %s, %s from now: outside %s (a replayed post?)", SignatureHeader,
			time.Unix(unix, 0).UTC().Format(time.RFC3339), age.Round(time.Second), maxAge)
	}
	return nil
}

func mac(secret, ts string, body []byte) []byte {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(ts + "."))
	m.Write(body)
	return m.Sum(nil)
}

// Handler serves reg's metrics in the Prometheus exposition format, for /metrics.
func Handler(reg prometheus.Gatherer) http.Handler {
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
}

// redact names a webhook by scheme and host only: paths and queries of webhook URLs often are the credential.
func redact(u *url.URL) string {
	return u.Scheme + "://" + u.Host
}

// level makes the events someone must act on stand out in the log.
func level(e types.Event) slog.Level {
	switch {
	case e.Kind == types.EventRecoveryFailed || e.Kind == types.EventHostAlert || e.Kind == types.EventCatalogUnreadable,
		e.Kind == types.EventHostState && e.To == types.HostRecoveryFailed:
		return slog.LevelError
	case e.Kind == types.EventHostState && (e.To == types.HostDead || e.To == types.HostIsolated || e.To == types.HostUnknown):
		return slog.LevelWarn
	default:
		return slog.LevelInfo
	}
}

func attrs(e types.Event) []any {
	a := []any{"kind", string(e.Kind), "host", e.Host}
	add := func(k, v string) {
		if v != "" {
			a = append(a, k, v)
		}
	}
	add("from", string(e.From))
	add("to", string(e.To))
	add("vm", e.VM)
	add("vm_uuid", e.VMUUID)
	add("target", e.Target)
	add("reason", e.Reason)
	add("workflow_id", e.WorkflowID)
	if !e.At.IsZero() {
		a = append(a, "at", e.At)
	}
	if e.Seconds > 0 {
		a = append(a, "seconds", e.Seconds)
	}
	return a
}
