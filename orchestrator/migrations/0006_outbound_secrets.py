from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("orchestrator", "0005_watchdog")]

    operations = [
        migrations.AlterField(
            model_name="notificationdelivery",
            name="event",
            field=models.CharField(
                choices=[
                    ("retry", "Retry scheduled"),
                    ("failure", "Final failure"),
                    ("recovery", "Recovery"),
                    ("report", "Failure report"),
                    ("paused", "Paused by the circuit breaker"),
                    ("missed", "Missed runs"),
                    ("scheduler", "Scheduler stopped or back"),
                    ("test", "Test notification"),
                ],
                max_length=20,
            ),
        ),
    ]
