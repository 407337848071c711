from django.db import migrations, models


class Migration(migrations.Migration):
    """The unique key as a unique constraint rather than a unique field: the same
    uniqueness, without the second index for LIKE that PostgreSQL gives a unique varchar
    field and every job's insert and end wrote."""

    dependencies = [
        ("dq", "0007_claim_ahead"),
    ]

    operations = [
        migrations.AlterField(
            model_name="job",
            name="unique_key",
            field=models.CharField(blank=True, max_length=255, null=True),
        ),
        migrations.AddConstraint(
            model_name="job",
            constraint=models.UniqueConstraint(fields=("unique_key",), name="dq_job_unique_key"),
        ),
    ]
