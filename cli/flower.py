"""`loyale-sync flower`: Flower on the workers, never served without basic auth.

Started without FLOWER_BASIC_AUTH, Flower refuses its API but serves its web UI (every worker and task) to
anyone who reaches the port. This command checks the variable first, then becomes `celery -A worker.app
flower` with the options it was given (exec: the same process, so a supervisor's signals reach Flower).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import typer

from cli import context as ctx

VARIABLE = "FLOWER_BASIC_AUTH"
MIN_PASSWORD_CHARS = 12
MIN_DISTINCT_CHARS = 5
#: Passwords of examples and defaults (compared in lower case, trailing digits and ! dropped).
PLACEHOLDERS = frozenset({
    "admin", "celery", "changeme", "change-me", "change_me", "default", "demo", "example", "flower", "guest",
    "letmein", "pass", "passw0rd", "password", "qwerty", "secret", "test", "user",
})
HOW_TO_SET = (f"set {VARIABLE}=user:password in .env or the environment (several users: "
              f"user1:password1,user2:password2) with a password of at least {MIN_PASSWORD_CHARS} characters, "
              "e.g. the output of `openssl rand -hex 16`")
#: Flower's options that would put the password on the command line, where `ps` shows it to every user.
COMMAND_LINE_AUTH = ("--basic-auth", "--basic_auth")


def password_weakness(user: str, password: str) -> str | None:
    """Why a password is obviously weak (a placeholder, the user name, too short), or None."""
    if password.startswith(("$(", "${", "`")) or (password.startswith("<") and password.endswith(">")):
        return "is a command or a placeholder, not a password: put the generated password itself there"
    if len(password) < MIN_PASSWORD_CHARS:
        return f"is shorter than {MIN_PASSWORD_CHARS} characters"
    stem = password.lower().rstrip("0123456789!")
    if stem in PLACEHOLDERS or stem == user.lower() or password.lower() == user.lower():
        return "is a placeholder or the user name"
    if len(set(password)) < MIN_DISTINCT_CHARS:
        return f"has fewer than {MIN_DISTINCT_CHARS} different characters"
    return None


def basic_auth_problem(value: str | None) -> str | None:
    """What is wrong with a FLOWER_BASIC_AUTH value, or None when Flower may start with it. Flower splits the
    value on commas and compares each entry, whole, with the `user:password` a browser sends: a password may
    hold a colon, never a comma, and spaces around an entry become part of it. Messages never show a password."""
    if value is None or not value.strip():
        return f"{VARIABLE} is not set: Flower would show every worker and task to anyone who reaches its port"
    entries = value.split(",")
    for n, entry in enumerate(entries, 1):
        where = f"entry {n} of {VARIABLE}" if len(entries) > 1 else VARIABLE
        user, colon, password = entry.partition(":")
        if not colon:
            return f"{where} is not user:password"
        if entry != entry.strip():
            return f"{where} has spaces around it, which Flower keeps as part of the user or the password"
        if not user:
            return f"{where} has an empty user name"
        if not password:
            return f"{where} has an empty password (user {user})"
        weakness = password_weakness(user, password)
        if weakness:
            return f"the password of user {user} in {VARIABLE} {weakness}"
    return None


def flower_argv(args: Sequence[str]) -> list[str]:
    """`celery -A worker.app flower ARGS` with this interpreter (the same environment as this command)."""
    return [sys.executable, "-m", "celery", "-A", "worker.app", "flower", *args]


def register(app: typer.Typer) -> None:
    @app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def flower(context: typer.Context) -> None:
        """Serve Flower (workers and tasks in a browser), only with basic auth from FLOWER_BASIC_AUTH. Every
        other option goes to `celery -A worker.app flower` as given, e.g. --port=5555 --address=127.0.0.1
        (Flower's options: `celery -A worker.app flower --help`)."""
        given = [a for a in context.args if a.partition("=")[0] in COMMAND_LINE_AUTH]
        if given:
            raise ctx.fail(f"{given[0].partition('=')[0]} puts the password on the command line, where every "
                           f"user of the host sees it: {HOW_TO_SET}")
        problem = basic_auth_problem(os.environ.get(VARIABLE))
        if problem:
            raise ctx.fail(f"{problem}. Flower is never served without auth: {HOW_TO_SET}")
        argv = flower_argv(context.args)
        os.execv(argv[0], argv)
