// Package monitoring holds vmha's Prometheus alert rules and Grafana dashboard (vmha-alerts.yml,
// vmha-dashboard.json), kept in step by its tests with the metrics activities/notify registers, and exports the
// Temporal SDK's own metrics into the same registry (SDKMetrics). promtool checks and unit-tests the rules
// themselves (make alerts).
package monitoring

import (
	"fmt"
	"io"
	"log/slog"
	"time"
	"unicode"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/uber-go/tally/v4"
	tallyprom "github.com/uber-go/tally/v4/prometheus"
	"go.temporal.io/sdk/client"
	sdktally "go.temporal.io/sdk/contrib/tally"
)

// sdkReportInterval is how often the SDK's counts reach the registry: well under any scrape interval.
const sdkReportInterval = time.Second

// SDKMetrics is a Temporal client metrics handler that exports the SDK's worker metrics into reg, named as
// Prometheus expects (counters end in _total, timers are histograms in _seconds), among them
// temporal_workflow_task_execution_failed_total{failure_reason="NonDeterminismError",workflow_type=...}: the one
// sign that a worker cannot replay a running workflow's history (after an upgrade) and keeps retrying its task.
// Closing it reports the last counts.
func SDKMetrics(reg prometheus.Registerer, logger *slog.Logger) (client.MetricsHandler, io.Closer) {
	reporter := tallyprom.NewReporter(tallyprom.Options{
		Registerer:       reg,
		DefaultTimerType: tallyprom.HistogramTimerType,
		// The reporter panics by default; a metric the registry refuses must not take the controller down.
		OnRegisterError: func(err error) {
			logger.Warn("temporal SDK metric not exported", "error", fmt.Errorf("register with prometheus: %w", err))
		},
	})
	sanitize := sdktally.PrometheusSanitizeOptions
	// A label value may be any text: the task queue stays vmha-controller, as Temporal and vmha name it.
	sanitize.ValueCharacters = tally.ValidCharacters{Ranges: []tally.SanitizeRange{{0, unicode.MaxRune}}}
	scope, closer := tally.NewRootScope(tally.ScopeOptions{
		CachedReporter:  reporter,
		Separator:       tallyprom.DefaultSeparator,
		SanitizeOptions: &sanitize,
	}, sdkReportInterval)
	return sdktally.NewMetricsHandler(sdktally.NewPrometheusNamingScope(scope)), closer
}
