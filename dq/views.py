"""Views a project can route: dq's Prometheus gauges for a web process.

``dq_work --metrics-port`` serves every metric of its processes; a web process, which runs
no jobs, can serve the gauges read from the database (jobs per queue and state, the age
of each queue's oldest ready job, live processes per kind) so that a Prometheus server
that reaches only the web tier sees the queue::

    from dq.views import metrics
    urlpatterns = [path("dq/metrics", metrics)]

It answers whoever asks: route it where only the monitoring reaches, or wrap it (with
``staff_member_required``, say). It needs prometheus_client (``pip install "dq[metrics]"``).
"""

from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from .processes.metrics import DatabaseCollector
from .stats import shown_config


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """The database's gauges in Prometheus's text format, for the TASKS backend the admin
    shows (``dq.stats.shown_config``)."""
    registry = CollectorRegistry()
    registry.register(DatabaseCollector(shown_config()))
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
