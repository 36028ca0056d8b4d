from __future__ import annotations

import logging

import pytest

from zapi_channel.redaction import install_log_redaction, redact, redact_url


def test_redact_url_hides_the_token_in_the_path() -> None:
    url = "https://api.z-api.io/instances/ABC/token/SECRET123/send-text"
    assert redact_url(url) == "https://api.z-api.io/instances/ABC/token/***/send-text"


def test_redact_hides_given_secrets_anywhere() -> None:
    assert redact("Client-Token CT-1 not allowed", ["CT-1"]) == "Client-Token *** not allowed"


def test_httpx_style_log_record_is_redacted(caplog: pytest.LogCaptureFixture) -> None:
    install_log_redaction()
    logger = logging.getLogger("httpx")
    with caplog.at_level(logging.INFO, logger="httpx"):
        logger.info(
            'HTTP Request: %s %s "%s %d %s"',
            "POST",
            "https://api.z-api.io/instances/ABC/token/SECRET123/send-text",
            "HTTP/1.1",
            200,
            "OK",
        )
    assert "SECRET123" not in caplog.text
    assert "send-text" in caplog.text
