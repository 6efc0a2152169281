"""Pure policy code: retry/backoff, alert throttling and priority mapping.

Nothing in this package imports Django or Celery, so every decision can be tested with plain
values and exact tables.
"""

from orchestrator.policies.retry import (
    BackoffKind,
    RetryDecision,
    RetryPolicy,
    exception_names,
    match_rule,
)

__all__ = ["BackoffKind", "RetryDecision", "RetryPolicy", "exception_names", "match_rule"]
