"""The Redis URL forms (redis_url.py): a Sentinel URL read into its parts, a plain one passed on
as given, a malformed one refused at start with what is wrong and never the URL itself."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from dockguard.redis_url import (
    SENTINEL_PORT,
    RedisUrlError,
    SentinelUrl,
    ServerUrl,
    parse_redis_url,
)
from dockguard.settings import Settings


def test_a_sentinel_url_names_the_sentinels_the_master_and_the_database() -> None:
    parsed = parse_redis_url(
        "redis+sentinel://:s%40cret@10.0.0.1:26380,sentinel-b,[::1]:26381/jobs/2"
    )
    assert parsed == SentinelUrl(
        sentinels=(("10.0.0.1", 26380), ("sentinel-b", SENTINEL_PORT), ("::1", 26381)),
        master="jobs",
        db=2,
        username=None,
        password="s@cret",
    )
    assert "s@cret" not in repr(parsed)


def test_a_sentinel_url_defaults_to_database_0_and_no_credentials() -> None:
    parsed = parse_redis_url("REDIS+SENTINEL://127.0.0.1:26379/mymaster/")
    assert parsed == SentinelUrl(sentinels=(("127.0.0.1", 26379),), master="mymaster")
    assert parse_redis_url("redis+sentinel://app:pw@h:1/m") == SentinelUrl(
        sentinels=(("h", 1),), master="m", username="app", password="pw"
    )


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "redis://:pw@redis",
        "rediss://user:pw@redis.example:6380/15",
        "unix:///run/redis/redis.sock?db=3",
        "redis://127.0.0.1:6379?db=1",
    ],
)
def test_a_server_url_is_passed_on_as_given(url: str) -> None:
    assert parse_redis_url(url) == ServerUrl(url)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("", "not a Redis URL"),
        ("127.0.0.1:6379", "not a Redis URL"),
        ("http://:secret@127.0.0.1:6379", "not a Redis URL"),
        ("rediss+sentinel://:secret@h:26379/m", "not a Redis URL"),
        ("redis://:secret@127.0.0.1:port/0", "the port is not a number"),
        ("redis://:secret@127.0.0.1:6379/zero", "the path must be a database number"),
        ("redis://:secret@127.0.0.1:6379?db=x", "?db= must be a database number"),
        ("unix://", "needs the socket's path"),
        ("redis+sentinel://:secret@/m", "needs at least one Sentinel"),
        ("redis+sentinel://:secret@h1:26379,,h3/m", "Sentinel 2 of 3 has no host"),
        ("redis+sentinel://:secret@h1:26379,:26380/m", "Sentinel 2 of 2 has no host"),
        ("redis+sentinel://:secret@h1:70000/m", "Sentinel 1 of 1: the port is not a number"),
        ("redis+sentinel://:secret@h1:/m", "Sentinel 1 of 1: the port is not a number"),
        ("redis+sentinel://:secret@h1:²/m", "Sentinel 1 of 1: the port is not a number"),
        ("redis+sentinel://:secret@[::1/m", "unmatched [ or ]"),
        ("redis://:secret@[::1:6379/0", "unmatched [ or ]"),
        ("redis+sentinel://:secret@h1,x[::1]:2/m", "Sentinel 2 of 2 has no host"),
        ("redis+sentinel://:secret@h1:26379", "needs the master's name"),
        ("redis+sentinel://:secret@h1:26379/", "needs the master's name"),
        ("redis+sentinel://:secret@h1:26379/m/x", "only a database number may follow"),
        ("redis+sentinel://:secret@h1:26379/m/0/1", "only a database number may follow"),
        ("redis+sentinel://:secret@h1:26379/m?db=1", "takes no ?options"),
    ],
)
def test_a_malformed_url_is_refused_with_what_is_wrong(url: str, problem: str) -> None:
    with pytest.raises(RedisUrlError) as refused:
        parse_redis_url(url)
    assert problem in str(refused.value)
    assert "secret" not in str(refused.value)


@pytest.mark.parametrize("field", ["redis_url", "dockerfile_redis_url"])
def test_settings_refuse_a_malformed_redis_url_at_start_without_showing_it(field: str) -> None:
    with pytest.raises(ValidationError) as invalid:
        Settings.model_validate({field: "redis+sentinel://:secret@h1:26379,h2:x/m"})
    assert "Sentinel 2 of 2: the port is not a number" in str(invalid.value)
    assert "secret" not in str(invalid.value)
    sentinel = "redis+sentinel://127.0.0.1:26379/m"
    assert getattr(Settings.model_validate({field: sentinel}), field) == sentinel
