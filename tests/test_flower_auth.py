"""What `loyale-sync flower` accepts in FLOWER_BASIC_AUTH before it becomes Flower: Flower's own format
(comma-separated user:password, compared whole), no empty user or password, no obvious placeholder. The
processes themselves, refusing and serving, are in tests/integration/test_flower.py."""

from __future__ import annotations

import sys

import pytest

from cli.flower import basic_auth_problem, flower_argv

SOUND = "k3Jq9-vXw2mZ"   # 12 characters, 12 different ones


@pytest.mark.parametrize("value", [
    f"ops:{SOUND}",
    f"ops:{SOUND},viewer:{SOUND[::-1]}",
    f"ops:{SOUND}:with:colons",          # Flower compares the whole entry: a password may hold a colon
    "ops:0123456789abcdef0123456789abcdef",   # `openssl rand -hex 16`
])
def test_sound_values_start_flower(value):
    assert basic_auth_problem(value) is None


@pytest.mark.parametrize(("value", "said"), [
    (None, "FLOWER_BASIC_AUTH is not set"),
    ("", "FLOWER_BASIC_AUTH is not set"),
    ("   ", "FLOWER_BASIC_AUTH is not set"),
    (SOUND, "FLOWER_BASIC_AUTH is not user:password"),
    (f":{SOUND}", "FLOWER_BASIC_AUTH has an empty user name"),
    ("ops:", "FLOWER_BASIC_AUTH has an empty password (user ops)"),
    (f"ops:{SOUND},", "entry 2 of FLOWER_BASIC_AUTH is not user:password"),
    (f"ops:{SOUND},viewer:", "entry 2 of FLOWER_BASIC_AUTH has an empty password (user viewer)"),
    (f"ops:{SOUND}, viewer:{SOUND}", "entry 2 of FLOWER_BASIC_AUTH has spaces around it"),
    (f" ops:{SOUND}", "FLOWER_BASIC_AUTH has spaces around it"),
    ("ops:short-pw", "the password of user ops in FLOWER_BASIC_AUTH is shorter than 12 characters"),
    ("demo:demo", "the password of user demo in FLOWER_BASIC_AUTH is shorter than 12 characters"),
    ("ops:password1234", "the password of user ops in FLOWER_BASIC_AUTH is a placeholder or the user name"),
    ("ops:ChangeMe2024!", "is a placeholder or the user name"),
    ("operator1234:operator1234", "is a placeholder or the user name"),
    ("ops:abababababab", "has fewer than 5 different characters"),
    ("ops:$(openssl rand -hex 16)", "is a command or a placeholder, not a password"),
    ("ops:<generated password>", "is a command or a placeholder, not a password"),
])
def test_missing_malformed_and_placeholder_values_are_refused_with_what_is_wrong(value, said):
    problem = basic_auth_problem(value)
    assert problem is not None and said in problem, problem


@pytest.mark.parametrize("value", [SOUND, "ops:short-pw", "ops:password1234", f"ops:{SOUND}, viewer:{SOUND}x"])
def test_a_refusal_never_shows_a_password(value):
    problem = basic_auth_problem(value)
    assert problem is not None
    passwords = [entry.partition(":")[2] or entry for entry in value.split(",")]
    assert [p for p in passwords if p.strip() in problem] == []


def test_flower_is_this_interpreters_celery_with_the_options_given():
    assert flower_argv(["--port=5555", "--address=127.0.0.1"]) == [
        sys.executable, "-m", "celery", "-A", "worker.app", "flower", "--port=5555", "--address=127.0.0.1"]
