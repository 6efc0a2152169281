import logging

import pytest

from orchestrator.notifications.redact import (
    MASK,
    RedactingFilter,
    mask_secret,
    mask_url,
    redact,
    sdk_logger,
)


def test_webhook_urls_keep_only_scheme_host_and_last_four_characters():
    assert mask_url("https://hooks.slack.com/services/T0/B0/abcd1234") == (
        "https://hooks.slack.com/…1234"
    )
    assert mask_url("http://127.0.0.1:8080/services/x/y/zzzz9876/") == "http://127.0.0.1:8080/…9876"


@pytest.mark.parametrize(
    ("target", "shown"),
    [
        ("https://hooks.slack.com/services/T0/B0/abcdefgh1234", "https://hooks.slack.com/…1234"),
        ("https://user:secret@example.com:8443/hook?token=abc", "https://example.com:8443/…"),
        ("https://hooks.slack.com:99999/services/T0/B0/abcd1234", "https://hooks.slack.com/…1234"),
        ("https://hooks.slack.com:xx/services/T0/B0/abcd1234", "https://hooks.slack.com/…1234"),
    ],
)
def test_urls_lose_user_info_query_and_all_but_the_tail_of_their_path(target, shown):
    assert mask_url(target) == shown


def test_short_secrets_are_masked_entirely():
    assert mask_secret("short") == MASK
    assert mask_secret("xoxb-1234567890-abcdef") == "…cdef"


def test_redact_masks_given_secrets_and_slack_shaped_ones():
    text = (
        "posting to https://hooks.slack.com/services/T0/B0/verysecret with xoxb-123-456-abc "
        "and header Authorization: Bearer xoxp-999 and token hunter2hunter2"
    )
    cleaned = redact(text, ["hunter2hunter2"])
    assert "verysecret" not in cleaned
    assert "xoxb-123" not in cleaned
    assert "xoxp-999" not in cleaned
    assert "hunter2hunter2" not in cleaned
    assert "https://hooks.slack.com/services/********" in cleaned


def test_redacting_filter_rewrites_the_record(caplog):
    logger = logging.getLogger("tests.redact")
    logger.addFilter(RedactingFilter())
    try:
        with caplog.at_level(logging.INFO, logger="tests.redact"):
            logger.info("url: %s", "https://hooks.slack.com/services/T0/B0/verysecret")
    finally:
        logger.filters.clear()
    assert caplog.records[0].getMessage() == "url: https://hooks.slack.com/services/********"


def test_the_sdk_logger_skips_debug_lines_by_default():
    logger = sdk_logger()
    # slack-sdk formats its URL-bearing lines only when ``logger.level <= DEBUG``.
    assert logger.level == logging.INFO
    assert any(isinstance(f, RedactingFilter) for f in logger.filters)
    assert sdk_logger() is logger
    assert len(logger.filters) == 1
