"""The loop's OpenTelemetry traces and metrics, with the exporter off unless asked for.

One span per reconcile pass, with a child span per phase (fetch, plan, sign, apply), and these
instruments: reconcile, apply and rollback durations (histograms, seconds); batches committed,
promotions, rollbacks, drift events and gate verdicts by verdict (counters); the canary step
being judged (a gauge, percent). The SDK providers always run, so the values exist for a
test's in-memory reader; nothing leaves the process unless an exporter is chosen with
`rtt controller run --otel otlp|console` or `RTT_OTEL=otlp|console`. OTLP goes over HTTP to the
endpoint the standard `OTEL_EXPORTER_OTLP_ENDPOINT` names (default http://localhost:4318).
"""

from __future__ import annotations

import contextlib
import enum
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

ENV = "RTT_OTEL"


class Exporter(enum.StrEnum):
    OFF = "off"
    CONSOLE = "console"
    OTLP = "otlp"


def chosen(flag: str | None, environ: Mapping[str, str] = os.environ) -> Exporter:
    """The flag wins over the environment; neither means off. ValueError names a bad value."""
    value = flag or environ.get(ENV) or Exporter.OFF.value
    try:
        return Exporter(value)
    except ValueError:
        raise ValueError(f"{value!r}: the exporter must be one of "
                         f"{', '.join(e.value for e in Exporter)}") from None


class Telemetry:
    """The tracer and instruments of one controller process."""

    def __init__(self, exporter: Exporter = Exporter.OFF, *,
                 span_processors: Sequence[SpanProcessor] = (),
                 metric_readers: Sequence[MetricReader] = ()) -> None:
        resource = Resource.create({"service.name": "rtt-controller"})
        processors, readers = list(span_processors), list(metric_readers)
        if exporter is Exporter.CONSOLE:
            processors.append(BatchSpanProcessor(ConsoleSpanExporter()))
            readers.append(PeriodicExportingMetricReader(ConsoleMetricExporter()))
        elif exporter is Exporter.OTLP:
            # Imported only when chosen: it pulls in protobuf.
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import (  # noqa: PLC0415
                OTLPMetricExporter,
            )
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
                OTLPSpanExporter,
            )
            processors.append(BatchSpanProcessor(OTLPSpanExporter()))
            readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
        # Providers of our own, not the global ones: two controllers in one test process must
        # not share instruments, and a library user's global setup is left alone.
        self._tracers = TracerProvider(resource=resource)
        for processor in processors:
            self._tracers.add_span_processor(processor)
        self._meters = MeterProvider(resource=resource, metric_readers=readers)
        self.tracer = self._tracers.get_tracer("rtt.controller")
        meter = self._meters.get_meter("rtt.controller")
        self.reconcile_s = meter.create_histogram(
            "rtt.reconcile.duration", unit="s", description="one reconcile pass, end to end")
        self.apply_s = meter.create_histogram(
            "rtt.apply.duration", unit="s", description="one plan's 2PC apply and verify")
        self.batches = meter.create_counter(
            "rtt.batches", description="forward batches committed")
        self.rollbacks = meter.create_counter(
            "rtt.rollbacks", description="plans rolled back (a NACK or a failed verify)")
        self.drift = meter.create_counter(
            "rtt.drift", description="drift events: the fabric left the last applied graph")
        self.promotions = meter.create_counter(
            "rtt.promotions", description="plans promoted (every canary step passed)")
        self.rollback_s = meter.create_histogram(
            "rtt.rollback.duration", unit="s", description="an apply that ended rolled back")
        self.verdicts = meter.create_counter(
            "rtt.gate.verdicts", description="canary windows judged, by verdict")
        self.canary_step = meter.create_gauge(
            "rtt.canary.step", unit="%", description="the canary step being judged: the share "
                                                     "of the plan's route changes applied")

    @contextlib.contextmanager
    def phase(self, name: str, **attributes: Any) -> Iterator[trace.Span]:
        with self.tracer.start_as_current_span(
                name, attributes={f"rtt.{k}": v for k, v in attributes.items()}) as span:
            yield span

    def shutdown(self) -> None:
        """Flush and stop the exporters (the last spans and metrics go out)."""
        self._tracers.shutdown()
        self._meters.shutdown()

