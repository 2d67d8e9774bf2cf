"""Prometheus text for GET /metrics, read from the store at scrape time, so the numbers are
the same whichever process dispatched the jobs.

    vae_jobs{state="queued"}                 jobs per state (gauge; `preempting`: being stopped
                                             for a higher-priority job, `preempted`: stopped, going
                                             back in the queue)
    vae_job_preemptions_total                times jobs were preempted (counter)
    vae_dispatch_latency_seconds_bucket{le}  created → handed to Ray (histogram)
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from vae_service.queue.store import Store


class StoreCollector:
    def __init__(self, store: Store):
        self.store = store

    def collect(self):
        jobs = GaugeMetricFamily("vae_jobs", "Jobs in the store, by state.", labels=["state"])
        for state, count in self.store.counts().items():
            jobs.add_metric([state], count)
        yield jobs
        yield CounterMetricFamily("vae_job_preemptions", "Times a running job was stopped for a higher-priority one.",
                                  value=self.store.preemptions())
        buckets, count, total = self.store.latency_histogram()
        histogram = HistogramMetricFamily(
            "vae_dispatch_latency_seconds", "Time from a job's submission to the API until it was handed to Ray.")
        histogram.add_metric([], [(repr(float(b)), n) for b, n in buckets] + [("+Inf", count)], sum_value=total)
        yield histogram


def registry_for(store: Store) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
