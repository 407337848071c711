from datetime import timedelta

from django.core.management.base import BaseCommand
from django.tasks import default_task_backend
from django.utils import timezone

from dq.models import Job
from example.tasks import (
    charge_card,
    export_orders,
    generate_report,
    import_feed,
    rebuild_search_index,
    resize_image,
    send_reminder,
    send_welcome_email,
    simulate_traffic,
    sync_account,
)


class Command(BaseCommand):
    help = (
        "Enqueue a batch of example jobs: welcome emails in bulk, one of each other task, "
        "the flow-control demos (per-account limit, unique job, cancellation), two jobs that "
        "fail for good, and simulated traffic up to the next minute."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--count", type=int, default=20, help="How many welcome emails (default 20)."
        )

    def handle(self, *args, count, **options):
        results = list(send_welcome_email.enqueue_many([((i,), {}) for i in range(1, count + 1)]))
        results.append(generate_report.enqueue(1, seconds=8))
        results.append(charge_card.enqueue(1001, fail_times=2))
        in_10_minutes = timezone.now() + timedelta(minutes=10)
        results.append(send_reminder.using(run_after=in_10_minutes).enqueue(1))
        results.append(resize_image.enqueue(42))

        # Failed for good within about 10 s, to retry in the admin: "prices" then succeeds,
        # "legacy" fails again.
        results.append(import_feed.enqueue("prices"))
        results.append(import_feed.enqueue("legacy"))

        # The recurring task simulate-traffic books each minute's jobs from the next full
        # minute on; this run books the rest of this one.
        results.append(simulate_traffic.enqueue())

        # Concurrency limit: one sync per account at a time; the rest wait as "blocked".
        for batch in range(1, 4):
            for account_id in (1, 2):
                results.append(sync_account.enqueue(account_id, batch))

        # Unique: the second enqueue returns the job the first one made.
        first = rebuild_search_index.enqueue("products")
        again = rebuild_search_index.enqueue("products")
        results.append(first)

        # Cancellation: a long export to cancel while it runs, and one cancelled before.
        long_export = export_orders.enqueue(7)
        results.append(long_export)
        tomorrow = timezone.now() + timedelta(days=1)
        cancelled = default_task_backend.cancel(
            export_orders.using(run_after=tomorrow).enqueue(8).id
        )
        results.append(cancelled)

        # dq's own states: django.tasks says READY for scheduled and blocked jobs too, and
        # FAILED for a cancelled one.
        states = dict(
            Job.objects.filter(pk__in=[int(result.id) for result in results]).values_list(
                "pk", "status"
            )
        )
        for result in results:
            self.stdout.write(f"{result.id}  {result.task.name}  {states[int(result.id)]}")
        self.stdout.write(self.style.SUCCESS(f"Enqueued {len(results)} jobs."))
        self.stdout.write(
            f"rebuild_search_index enqueued twice: job {first.id}, then job {again.id} again.\n"
            f"The export (job {long_export.id}) runs for two minutes once a worker takes it; "
            "cancel it while it runs with:\n"
            f'  python manage.py shell -c "from django.tasks import default_task_backend; '
            f"default_task_backend.cancel('{long_export.id}')\""
        )
