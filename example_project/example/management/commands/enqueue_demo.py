from datetime import timedelta

from django.core.management.base import BaseCommand
from django.utils import timezone

from example.tasks import (
    charge_card,
    generate_report,
    resize_image,
    send_reminder,
    send_welcome_email,
)


class Command(BaseCommand):
    help = "Enqueue a batch of example jobs: welcome emails in bulk plus one of each other task."

    def add_arguments(self, parser):
        parser.add_argument(
            "--count", type=int, default=20, help="How many welcome emails (default 20)."
        )

    def handle(self, *args, count, **options):
        results = list(send_welcome_email.enqueue_many([((i,), {}) for i in range(1, count + 1)]))
        results.append(generate_report.enqueue(1, seconds=2))
        results.append(charge_card.enqueue(1001, fail_times=2))
        in_30s = timezone.now() + timedelta(seconds=30)
        results.append(send_reminder.using(run_after=in_30s).enqueue(1))
        results.append(resize_image.enqueue(42))

        for result in results:
            self.stdout.write(f"{result.id}  {result.task.name}")
        self.stdout.write(self.style.SUCCESS(f"Enqueued {len(results)} jobs."))
