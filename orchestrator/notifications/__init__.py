"""Failure alerts: channels (Slack, email), the alert policy, deliveries and the failure report.

* :mod:`.base` holds the channel contract and :class:`~.base.NotificationError`;
* :mod:`.registry` maps a channel kind to its class (one module per kind);
* :mod:`.events` holds the data an alert or report carries, :mod:`.messages` its wording;
* :mod:`.delivery` decides, records and sends; :mod:`.receivers` connects it to the dispatcher's
  signals; :mod:`.tasks` is the Celery task that performs a send;
* :mod:`.report` builds the periodic failure report; :mod:`.redact` keeps secrets out of pages,
  errors and logs; :mod:`.validation` checks a channel before it is saved;
* :mod:`.admin` registers channels and the delivery log with the Django admin.
"""
