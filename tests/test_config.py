from __future__ import annotations

import pytest

from tests.conftest import CLIENT_TOKEN, INSTANCE_ID, INSTANCE_TOKEN, WEBHOOK_TOKEN, channel_block
from zapi_channel.config import ChannelConfig, ZApiCredentials
from zapi_channel.errors import ConfigError


def test_pasted_whitespace_and_line_breaks_are_stripped_from_every_credential() -> None:
    config = ChannelConfig.from_mapping(
        {
            "instance_id": f"  {INSTANCE_ID}\n",
            "instance_token": f"\t{INSTANCE_TOKEN} \r\n",
            "client_token": f"\n{CLIENT_TOKEN}  ",
            "webhook_token": f" {WEBHOOK_TOKEN}\n",
        }
    )
    assert config.credentials.instance_id == INSTANCE_ID
    assert config.credentials.instance_token == INSTANCE_TOKEN
    assert config.credentials.client_token == CLIENT_TOKEN
    assert config.webhook_token == WEBHOOK_TOKEN


def test_one_error_names_every_missing_or_empty_key() -> None:
    with pytest.raises(ConfigError) as caught:
        ChannelConfig.from_mapping({"instance_id": "X", "client_token": "   "})
    message = str(caught.value)
    for key in ("instance_token", "client_token", "webhook_token"):
        assert key in message
    assert "instance_id" not in message


def test_no_credentials_at_all_names_every_key() -> None:
    with pytest.raises(
        ConfigError, match="instance_id, instance_token, client_token, webhook_token"
    ):
        ChannelConfig.from_mapping(None)


def test_url_for_builds_zapi_layout_with_default_base_url(credentials: ZApiCredentials) -> None:
    assert credentials.url_for("send-text") == (
        f"https://api.z-api.io/instances/{INSTANCE_ID}/token/{INSTANCE_TOKEN}/send-text"
    )


def test_base_url_trailing_slash_is_ignored() -> None:
    creds = ZApiCredentials.from_mapping(channel_block(base_url="http://127.0.0.1:8300/ "))
    assert creds.url_for("status").startswith("http://127.0.0.1:8300/instances/")


def test_base_url_must_be_http() -> None:
    with pytest.raises(ConfigError, match="base_url"):
        ZApiCredentials.from_mapping(channel_block(base_url="ftp://example.com"))


def test_repr_and_str_never_show_a_secret(credentials: ZApiCredentials) -> None:
    config = ChannelConfig.from_mapping(channel_block())
    for text in (repr(credentials), str(credentials), repr(config), str(config)):
        for secret in (INSTANCE_TOKEN, CLIENT_TOKEN, WEBHOOK_TOKEN):
            assert secret not in text
    assert INSTANCE_ID not in repr(credentials)


def test_active_reads_env_style_strings() -> None:
    assert ChannelConfig.from_mapping(channel_block(active="false")).active is False
    assert ChannelConfig.from_mapping(channel_block(active="True")).active is True
    assert ChannelConfig.from_mapping(channel_block()).active is True
    with pytest.raises(ConfigError, match="active"):
        ChannelConfig.from_mapping(channel_block(active="maybe"))


def test_options_have_the_documented_defaults() -> None:
    config = ChannelConfig.from_mapping(channel_block())
    assert config.credentials.base_url == "https://api.z-api.io"
    assert (config.allow_groups, config.allow_reactions, config.mark_read) == (False, False, False)
    assert config.buttons_as == "text"
    assert config.delay_typing is None


def test_queue_when_disconnected_is_unset_unless_written() -> None:
    assert ChannelConfig.from_mapping(channel_block()).queue_when_disconnected is None
    # An unset ${VAR} is "the default" too: the instance's own setting is left alone.
    assert (
        ChannelConfig.from_mapping(
            channel_block(queue_when_disconnected="")
        ).queue_when_disconnected
        is None
    )
    written = ChannelConfig.from_mapping(channel_block(queue_when_disconnected="false"))
    assert written.queue_when_disconnected is False
    with pytest.raises(ConfigError, match="queue_when_disconnected"):
        ChannelConfig.from_mapping(channel_block(queue_when_disconnected="sometimes"))


def test_metrics_token_is_a_secret_of_some_length() -> None:
    token = "m" * 16
    config = ChannelConfig.from_mapping(channel_block(metrics_token=f"  {token}\n"))
    assert config.metrics_token == token
    assert token in config.secrets() and token not in repr(config)
    assert ChannelConfig.from_mapping(channel_block()).metrics_token is None
    with pytest.raises(ConfigError, match="at least 16"):
        ChannelConfig.from_mapping(channel_block(metrics_token="short"))


def test_delay_typing_is_bounded_like_zapi_documents() -> None:
    assert ChannelConfig.from_mapping(channel_block(delay_typing="3")).delay_typing == 3
    with pytest.raises(ConfigError, match="delay_typing"):
        ChannelConfig.from_mapping(channel_block(delay_typing=30))


def test_buttons_as_must_be_a_known_mode() -> None:
    assert ChannelConfig.from_mapping(channel_block(buttons_as="list")).buttons_as == "list"
    with pytest.raises(ConfigError, match="buttons_as"):
        ChannelConfig.from_mapping(channel_block(buttons_as="carousel"))


def test_media_texts_can_be_overridden_per_kind_only_for_known_kinds() -> None:
    config = ChannelConfig.from_mapping(channel_block(media_texts={"audio": "/voice_note"}))
    assert config.media_texts["audio"] == "/voice_note"
    assert config.media_texts["sticker"] == "/zapi_sticker"
    with pytest.raises(ConfigError, match="unknown kind"):
        ChannelConfig.from_mapping(channel_block(media_texts={"hologram": "x"}))


def test_numeric_instance_id_from_yaml_becomes_a_string() -> None:
    creds = ZApiCredentials.from_mapping(channel_block(instance_id=12345))
    assert creds.instance_id == "12345"


@pytest.mark.parametrize("blank", ["", "  ", None])
def test_a_blank_media_text_is_refused(blank: object) -> None:
    with pytest.raises(ConfigError, match="must not be empty"):
        ChannelConfig.from_mapping(channel_block(media_texts={"audio": blank}))


def test_an_unknown_key_is_refused_naming_the_closest_known_one() -> None:
    with pytest.raises(ConfigError) as refused:
        ChannelConfig.from_mapping(channel_block(redis_ur="redis://127.0.0.1:6379/0"))
    assert "'redis_ur' (did you mean 'redis_url'?)" in str(refused.value)


def test_a_key_nothing_resembles_is_named_with_every_known_key() -> None:
    with pytest.raises(ConfigError) as refused:
        ChannelConfig.from_mapping(channel_block(colour="blue"))
    message = str(refused.value)
    assert "'colour'" in message and "did you mean" not in message
    assert "state_path" in message and "lock_lifetime" not in message


@pytest.mark.parametrize("old", ["pending_inbox_path", "failed_sends_path"])
def test_a_removed_key_says_what_replaced_it(old: str) -> None:
    with pytest.raises(ConfigError, match="state_path"):
        ChannelConfig.from_mapping(channel_block(**{old: "x.jsonl"}))


def test_the_state_file_and_dedup_window_have_defaults_and_bounds() -> None:
    block = channel_block()
    del block["state_path"]
    config = ChannelConfig.from_mapping(block)
    assert (config.state_path, config.dedup_ttl_seconds) == ("zapi-channel.db", 86400.0)
    assert (
        ChannelConfig.from_mapping(channel_block(dedup_ttl_seconds="3600")).dedup_ttl_seconds
        == 3600
    )
    with pytest.raises(ConfigError, match="at least 60"):
        ChannelConfig.from_mapping(channel_block(dedup_ttl_seconds=5))


def test_an_empty_placeholder_means_the_default() -> None:
    config = ChannelConfig.from_mapping(channel_block(max_concurrency="", redis_url=" "))
    assert (config.max_concurrency, config.redis_url) == (8, None)


def test_answer_shaping_keys_have_safe_defaults() -> None:
    config = ChannelConfig.from_mapping(channel_block())
    assert (config.quote_replies, config.merge_window_ms, config.link_preview_image) == (
        "never",
        0,
        None,
    )


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("quote_replies", "sometimes", "'quote_replies' must be one of never, groups, always"),
        ("merge_window_ms", "-1", "merge_window_ms"),
        ("merge_window_ms", "61000", "merge_window_ms"),
        ("link_preview_image", "logo.png", "'link_preview_image' must be an http"),
    ],
)
def test_answer_shaping_keys_refuse_bad_values(key: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ChannelConfig.from_mapping(channel_block(**{key: value}))


def test_answer_shaping_keys_are_read() -> None:
    config = ChannelConfig.from_mapping(
        channel_block(
            quote_replies="groups",
            merge_window_ms="1500",
            link_preview_image=" https://cdn.test/logo.png ",
        )
    )
    assert (config.quote_replies, config.merge_window_ms, config.link_preview_image) == (
        "groups",
        1500,
        "https://cdn.test/logo.png",
    )


def test_http_transport_defaults_to_aiohttp_and_refuses_others() -> None:
    block = channel_block()
    del block["http_transport"]
    assert ChannelConfig.from_mapping(block).http_transport == "aiohttp"
    assert ChannelConfig.from_mapping(channel_block(http_transport="httpx")).http_transport == (
        "httpx"
    )
    with pytest.raises(ConfigError, match="'http_transport' must be one of httpx, aiohttp"):
        ChannelConfig.from_mapping(channel_block(http_transport="requests"))
