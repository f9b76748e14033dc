package notify_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"vmha/activities/notify"
	"vmha/types"
)

const secret = "webhook-secret"

// receiver is a webhook endpoint that keeps what it was sent and answers with status.
type receiver struct {
	mu     sync.Mutex
	status int
	got    []delivery
}

type delivery struct {
	body   []byte
	header http.Header
}

func (r *receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, delivery{body: body, header: req.Header.Clone()})
	w.WriteHeader(r.status)
	_, _ = w.Write([]byte("receiver says hi"))
}

func (r *receiver) deliveries() []delivery {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]delivery(nil), r.got...)
}

func startReceiver(t *testing.T, status int) (*receiver, *httptest.Server) {
	r := &receiver{status: status}
	srv := httptest.NewServer(r)
	t.Cleanup(srv.Close)
	return r, srv
}

var at = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func deadEvent() types.Event {
	return types.Event{Kind: types.EventHostState, Host: "hv1", From: types.HostSuspect, To: types.HostDead,
		Reason: "unreachable and power off", WorkflowID: "vmha-monitor-hv1", At: at.Add(2 * time.Second), Seconds: 7.5}
}

func TestWebhookIsSignedAndVerifies(t *testing.T) {
	r, srv := startReceiver(t, http.StatusNoContent)
	n, err := notify.New(notify.Options{WebhookURL: srv.URL + "/hook", WebhookSecret: secret})
	if err != nil {
		t.Fatal(err)
	}
	e := deadEvent()
	if err := n.Notify(context.Background(), e); err != nil {
		t.Fatalf("Notify: %v", err)
	}
	got := r.deliveries()
	if len(got) != 1 {
		t.Fatalf("receiver got %d deliveries, want 1", len(got))
	}
	d := got[0]
	if k := d.header.Get(notify.EventHeader); k != string(types.EventHostState) {
		t.Errorf("%s = %q, want %q", notify.EventHeader, k, types.EventHostState)
	}
	if ct := d.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q", ct)
	}
	sig := d.header.Get(notify.SignatureHeader)
	now := time.Now()
	if err := notify.Verify(secret, d.body, sig, now, notify.MaxSignatureAge); err != nil {
		t.Fatalf("signature %q does not verify for body %s: %v", sig, d.body, err)
	}
	if notify.Verify("other-secret", d.body, sig, now, notify.MaxSignatureAge) == nil {
		t.Error("signature verifies under a wrong secret")
	}
	tampered := bytes.Replace(d.body, []byte(`"hv1"`), []byte(`"hv2"`), 1)
	if notify.Verify(secret, tampered, sig, now, notify.MaxSignatureAge) == nil {
		t.Error("signature verifies for a tampered body")
	}
	var back types.Event
	if err := json.Unmarshal(d.body, &back); err != nil || back != e {
		t.Errorf("body decodes to %+v, %v; want %+v", back, err, e)
	}
}

func TestVerifyRejectsMalformedHeaders(t *testing.T) {
	body := []byte(`{"kind":"host.state"}`)
	now := time.Now()
	good := notify.Sign(secret, body, now)
	ts, sig, _ := strings.Cut(good, ",")
	for _, h := range []string{"", sig, ts, "sha256=" + ts + "," + sig, strings.Replace(good, "sha256=", "sha1=", 1),
		ts + ",sha256=zz", good[:len(good)-2], strings.Replace(good, ts, "t=soon", 1)} {
		if notify.Verify(secret, body, h, now, notify.MaxSignatureAge) == nil {
			t.Errorf("Verify accepted header %q", h)
		}
	}
	if err := notify.Verify(secret, body, good, now, notify.MaxSignatureAge); err != nil {
		t.Errorf("Verify rejected Sign's own header %q: %v", good, err)
	}
}

// A captured post replayed later is refused: the time of sending is signed with the body, so changing it breaks the
// signature, and keeping it makes the post too old.
func TestVerifyRefusesReplays(t *testing.T) {
	body := []byte(`{"kind":"host.state","host":"hv1","to":"dead"}`)
	sent := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	header := notify.Sign(secret, body, sent)
	if err := notify.Verify(secret, body, header, sent.Add(time.Minute), notify.MaxSignatureAge); err != nil {
		t.Fatalf("a post one minute old is refused: %v", err)
	}
	err := notify.Verify(secret, body, header, sent.Add(notify.MaxSignatureAge+time.Second), notify.MaxSignatureAge)
	if err == nil || !strings.Contains(err.Error(), "replayed") {
		t.Fatalf("a post replayed after %s: err = %v, want it refused as too old", notify.MaxSignatureAge, err)
	}
	if notify.Verify(secret, body, header, sent.Add(-notify.MaxSignatureAge-time.Second), notify.MaxSignatureAge) == nil {
		t.Fatal("a post signed far in the future is accepted")
	}
	later := sent.Add(time.Hour)
	forged := strings.Replace(header, fmt.Sprint(sent.Unix()), fmt.Sprint(later.Unix()), 1)
	if notify.Verify(secret, body, forged, later, notify.MaxSignatureAge) == nil {
		t.Fatal("a replay with a fresh timestamp put in the header verifies")
	}
}

func TestReceiverErrorIsAnError(t *testing.T) {
	_, srv := startReceiver(t, http.StatusInternalServerError)
	n, err := notify.New(notify.Options{WebhookURL: srv.URL + "/hook/TOKEN123?key=QUERYSECRET", WebhookSecret: secret})
	if err != nil {
		t.Fatal(err)
	}
	err = n.Notify(context.Background(), deadEvent())
	if err == nil {
		t.Fatal("Notify succeeded although the receiver answered 500")
	}
	for _, leak := range []string{"TOKEN123", "QUERYSECRET", secret} {
		if strings.Contains(err.Error(), leak) {
			t.Errorf("error reveals %q: %v", leak, err)
		}
	}
	if !strings.Contains(err.Error(), "500") {
		t.Errorf("error does not give the status: %v", err)
	}
}

func TestUnreachableReceiverIsAnErrorWithoutTheURLPath(t *testing.T) {
	_, srv := startReceiver(t, http.StatusOK)
	url := srv.URL + "/hook/TOKEN123"
	srv.Close()
	n, err := notify.New(notify.Options{WebhookURL: url, WebhookSecret: secret})
	if err != nil {
		t.Fatal(err)
	}
	err = n.Notify(context.Background(), deadEvent())
	if err == nil || strings.Contains(err.Error(), "TOKEN123") {
		t.Fatalf("Notify to a closed receiver = %v; want an error that does not show the URL path", err)
	}
}

func TestNewRefusesUnsignedOrBadWebhook(t *testing.T) {
	if _, err := notify.New(notify.Options{WebhookURL: "https://example.invalid/hook"}); err == nil {
		t.Error("New accepted a webhook without a secret")
	}
	if _, err := notify.New(notify.Options{WebhookURL: "ftp://example.invalid/TOKEN", WebhookSecret: secret}); err == nil || strings.Contains(err.Error(), "TOKEN") {
		t.Errorf("New with an ftp URL = %v; want an error not showing the URL", err)
	}
}

func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	n, err := notify.New(notify.Options{Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	events := []types.Event{
		{Kind: types.EventHostState, Host: "hv1", To: types.HostHealthy, At: at},
		{Kind: types.EventHostState, Host: "hv1", From: types.HostHealthy, To: types.HostSuspect, At: at.Add(time.Second)},
		deadEvent(),
		{Kind: types.EventRecoveryStarted, Host: "hv1", VM: "a", At: at.Add(3 * time.Second)},
		{Kind: types.EventRecoveryStarted, Host: "hv1", VM: "b", At: at.Add(3 * time.Second)},
		{Kind: types.EventRecoveryDone, Host: "hv1", VM: "a", Target: "hv2", At: at.Add(4 * time.Second), Seconds: 1.5},
		{Kind: types.EventRecoveryFailed, Host: "hv1", VM: "b", Reason: "no host fits", At: at.Add(4 * time.Second)},
		{Kind: types.EventHostRecoveryDone, Host: "hv1", At: at.Add(5 * time.Second), Seconds: 3},
		{Kind: types.EventHostState, Host: "hv2", To: types.HostHealthy, At: at},
	}
	for _, e := range events {
		if err := n.Notify(ctx, e); err != nil {
			t.Fatalf("Notify %s: %v", e.Kind, err)
		}
	}
	// Temporal retries of events already recorded must not count again; an older host.state event retried late
	// must not move the state gauge back.
	for _, e := range events[1:4] {
		if err := n.Notify(ctx, e); err != nil {
			t.Fatal(err)
		}
	}

	expected := `
# HELP vmha_host_transitions_total Host state changes by previous and new state.
# TYPE vmha_host_transitions_total counter
vmha_host_transitions_total{from="healthy",to="suspect"} 1
vmha_host_transitions_total{from="suspect",to="dead"} 1
# HELP vmha_vm_recoveries_total VM recoveries started, done and failed.
# TYPE vmha_vm_recoveries_total counter
vmha_vm_recoveries_total{outcome="done"} 1
vmha_vm_recoveries_total{outcome="failed"} 1
vmha_vm_recoveries_total{outcome="started"} 2
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(expected), "vmha_host_transitions_total", "vmha_vm_recoveries_total"); err != nil {
		t.Error(err)
	}

	states := map[string]types.HostState{"hv1": types.HostDead, "hv2": types.HostHealthy}
	var want strings.Builder
	want.WriteString("# HELP vmha_host_state 1 for the state each host's monitor is in, 0 for the others.\n# TYPE vmha_host_state gauge\n")
	for _, h := range []string{"hv1", "hv2"} {
		for _, s := range types.AllHostStates {
			v := 0
			if s == states[h] {
				v = 1
			}
			fmt.Fprintf(&want, "vmha_host_state{host=%q,state=%q} %d\n", h, s, v)
		}
	}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want.String()), "vmha_host_state"); err != nil {
		t.Error(err)
	}

	for name, wantSum := range map[string]float64{"vmha_detection_seconds": 7.5, "vmha_vm_recovery_seconds": 1.5, "vmha_host_recovery_seconds": 3} {
		count, sum := histogram(t, reg, name)
		if count != 1 || sum != wantSum {
			t.Errorf("%s: count %d sum %g, want 1 observation of %g", name, count, sum, wantSum)
		}
	}
}

func TestLateOlderStateDoesNotMoveGauge(t *testing.T) {
	reg := prometheus.NewRegistry()
	n, err := notify.New(notify.Options{Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	newer := types.Event{Kind: types.EventHostState, Host: "hv1", From: types.HostDead, To: types.HostRecovering, At: at.Add(time.Minute)}
	older := deadEvent()
	for _, e := range []types.Event{newer, older} {
		if err := n.Notify(context.Background(), e); err != nil {
			t.Fatal(err)
		}
	}
	if got := gauge(t, reg, "hv1", types.HostRecovering); got != 1 {
		t.Errorf("vmha_host_state{hv1,recovering} = %g after a late older event, want 1", got)
	}
	if got := gauge(t, reg, "hv1", types.HostDead); got != 0 {
		t.Errorf("vmha_host_state{hv1,dead} = %g after a late older event, want 0", got)
	}
}

func TestMetricsRecordedEvenWhenWebhookFails(t *testing.T) {
	_, srv := startReceiver(t, http.StatusBadGateway)
	reg := prometheus.NewRegistry()
	n, err := notify.New(notify.Options{WebhookURL: srv.URL, WebhookSecret: secret, Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	e := types.Event{Kind: types.EventRecoveryStarted, Host: "hv1", VM: "a", At: at}
	for range 3 { // the activity and two retries
		if err := n.Notify(context.Background(), e); err == nil {
			t.Fatal("Notify succeeded against a 502 receiver")
		}
	}
	expected := `
# HELP vmha_vm_recoveries_total VM recoveries started, done and failed.
# TYPE vmha_vm_recoveries_total counter
vmha_vm_recoveries_total{outcome="done"} 0
vmha_vm_recoveries_total{outcome="failed"} 0
vmha_vm_recoveries_total{outcome="started"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(expected), "vmha_vm_recoveries_total"); err != nil {
		t.Error(err)
	}
}

func TestEventIsLoggedWithFields(t *testing.T) {
	var buf bytes.Buffer
	n, err := notify.New(notify.Options{Logger: slog.New(slog.NewJSONHandler(&buf, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Notify(context.Background(), deadEvent()); err != nil {
		t.Fatal(err)
	}
	var line map[string]any
	if err := json.Unmarshal(buf.Bytes(), &line); err != nil {
		t.Fatalf("log line %q: %v", buf.String(), err)
	}
	for k, v := range map[string]any{"level": "WARN", "kind": "host.state", "host": "hv1", "from": "suspect", "to": "dead", "seconds": 7.5} {
		if line[k] != v {
			t.Errorf("log field %s = %v, want %v (line %s)", k, line[k], v, buf.String())
		}
	}
}

func TestHandlerServesMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	n, err := notify.New(notify.Options{Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Notify(context.Background(), deadEvent()); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(notify.Handler(reg))
	t.Cleanup(srv.Close)
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `vmha_host_state{host="hv1",state="dead"} 1`) {
		t.Fatalf("GET /metrics = %s:\n%s", resp.Status, body)
	}
}

func TestNewTwiceOnOneRegistryFails(t *testing.T) {
	reg := prometheus.NewRegistry()
	if _, err := notify.New(notify.Options{Registry: reg}); err != nil {
		t.Fatal(err)
	}
	if _, err := notify.New(notify.Options{Registry: reg}); err == nil {
		t.Fatal("second Notifier registered the same metrics without error")
	}
}

func histogram(t *testing.T, g prometheus.Gatherer, name string) (uint64, float64) {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			h := mf.GetMetric()[0].GetHistogram()
			return h.GetSampleCount(), h.GetSampleSum()
		}
	}
	t.Fatalf("metric %s not gathered", name)
	return 0, 0
}

func gauge(t *testing.T, g prometheus.Gatherer, host string, state types.HostState) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "vmha_host_state" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["host"] == host && labels["state"] == string(state) {
				return m.GetGauge().GetValue()
			}
		}
	}
	t.Fatalf("vmha_host_state{host=%q,state=%q} not gathered", host, state)
	return 0
}

// TestEventsSomeoneMustActOnAreErrors: a host whose recovery left VMs down, a contradicted fence and an unreadable
// catalog file are logged at error level, where on-call alerting looks.
func TestEventsSomeoneMustActOnAreErrors(t *testing.T) {
	for _, e := range []types.Event{
		{Kind: types.EventHostState, Host: "hv1", From: types.HostRecovering, To: types.HostRecoveryFailed, Reason: "0 of 1 VMs recovered"},
		{Kind: types.EventHostAlert, Host: "hv1", Reason: "fenced signal ignored"},
		{Kind: types.EventCatalogUnreadable, Host: "hv1", Reason: "garbage.json: not a VM entry"},
	} {
		var buf bytes.Buffer
		n, err := notify.New(notify.Options{Logger: slog.New(slog.NewJSONHandler(&buf, nil))})
		if err != nil {
			t.Fatal(err)
		}
		if err := n.Notify(context.Background(), e); err != nil {
			t.Fatal(err)
		}
		var line map[string]any
		if err := json.Unmarshal(buf.Bytes(), &line); err != nil {
			t.Fatalf("log line %q: %v", buf.String(), err)
		}
		if line["level"] != "ERROR" {
			t.Errorf("%s %s logged at %v, want ERROR", e.Kind, e.To, line["level"])
		}
	}
}
