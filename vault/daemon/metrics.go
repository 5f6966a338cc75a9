package daemon

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are the daemon's Prometheus series, on a registry of its own (so
// tests can run several daemons in one process).
type metrics struct {
	reg *prometheus.Registry

	vaulted       prometheus.Counter
	vaultedBytes  prometheus.Counter
	shredded      prometheus.Counter
	stage         *prometheus.HistogramVec
	failures      *prometheus.CounterVec
	rejected      *prometheus.CounterVec
	abandoned     prometheus.Counter
	orphans       prometheus.Counter
	queueDepth    prometheus.Gauge
	inFlight      prometheus.Gauge
	oldestPending prometheus.Gauge
	admitLatency  prometheus.Histogram
}

func newMetrics() *metrics {
	m := &metrics{reg: prometheus.NewRegistry()}
	m.vaulted = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "ckvault_vaulted_total", Help: "Archives proven complete in the store."})
	m.vaultedBytes = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "ckvault_vaulted_bytes_total", Help: "Plaintext bytes of archives proven complete in the store."})
	m.shredded = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "ckvault_shredded_total", Help: "Local archives destroyed after vaulting."})
	m.stage = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "ckvault_stage_duration_seconds",
		Help:    "Duration of each pipeline stage (admit, prescan, seal_upload, sign_upload, prove, shred, total).",
		Buckets: prometheus.ExponentialBuckets(0.001, 2.5, 16),
	}, []string{"stage"})
	m.failures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ckvault_failures_total", Help: "Failed vaulting attempts by reason (retried)."}, []string{"reason"})
	m.abandoned = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "ckvault_abandoned_attempts_total", Help: "Upload attempts given up after a failure or restart; the archive is retried under a new object key."})
	m.orphans = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "ckvault_orphaned_objects_total", Help: "Objects of abandoned or rejected attempts the store would not delete (Object Lock); each is named in an audit record and removed by GC."})
	m.rejected = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ckvault_rejected_total", Help: "Files rejected by admission or inspection, by reason (left in place)."}, []string{"reason"})
	m.queueDepth = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "ckvault_queue_depth", Help: "Archives waiting to be vaulted (backlog), including those retrying."})
	m.inFlight = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "ckvault_in_flight", Help: "Archives being processed by a worker."})
	m.oldestPending = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "ckvault_oldest_pending_seconds", Help: "Age of the oldest archive still waiting to be vaulted."})
	m.admitLatency = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "ckvault_detect_to_admit_seconds",
		Help:    "Time from the first event for a file version to its admission.",
		Buckets: prometheus.ExponentialBuckets(0.005, 2, 14),
	})
	m.reg.MustRegister(m.vaulted, m.vaultedBytes, m.shredded, m.stage, m.failures, m.rejected, m.abandoned, m.orphans,
		m.queueDepth, m.inFlight, m.oldestPending, m.admitLatency,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}
