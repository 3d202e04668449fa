"""`python -m fakes.klaviyo --port N [--key pk_...[=scope,scope]] [--account-id X] [--seed N] [knobs]`

Serves the fake with uvicorn and prints `FAKE_KLAVIYO_URL=...`, `FAKE_KLAVIYO_ACCOUNT=...` and
`FAKE_KLAVIYO_KEY=...` lines (one per key). Every knob of `Knobs` has a flag: `--rate-limit-scale 0.1`,
`--omit-retry-after`, `--error-statuses 500,503`, `--unsupported-phone-regions IT,ES`, ...
`--realistic [--time-scale S]` starts with the realistic preset (knob flags given as well win).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

import uvicorn

from fakes.klaviyo.app import create_app
from fakes.klaviyo.config import AccountSpec, FakeKlaviyoConfig, KeySpec, Knobs, realistic_knobs


def _key(value: str) -> KeySpec:
    key, sep, scopes = value.partition("=")
    return KeySpec(key, [s for s in scopes.split(",") if s] if sep else None)


def _statuses(value: str) -> list[int]:
    return [int(s) for s in value.split(",") if s.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m fakes.klaviyo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--key", action="append", type=_key, default=[],
                        help="private key of the account, optionally with scopes: pk_abc=profiles:read,...")
    parser.add_argument("--account-id", help="6-character account id / public key (generated if omitted)")
    parser.add_argument("--spec", help="path of Klaviyo's stable.json (default: $FAKE_KLAVIYO_SPEC or shared/)")
    parser.add_argument("--validate-spec", action="store_true", default=None,
                        help="validate every /api request against the spec (GET /_fake/spec-violations)")
    parser.add_argument("--realistic", action="store_true",
                        help="start with Klaviyo's unkind behaviour (POST /_fake/realistic); knob flags win")
    parser.add_argument("--time-scale", type=float, default=None,
                        help="with --realistic: multiply its durations (1 = Klaviyo's, 0.03 = tests)")
    for f in dataclasses.fields(Knobs):
        flag = "--" + f.name.replace("_", "-")
        default = Knobs().as_dict()[f.name]
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        elif f.name == "error_statuses":
            parser.add_argument(flag, type=_statuses, default=None)
        elif isinstance(default, list):
            parser.add_argument(flag, default=None, help="comma-separated")
        elif f.name == "seed" or isinstance(default, int):
            parser.add_argument(flag, type=int, default=None)
        else:
            parser.add_argument(flag, type=float, default=None)
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> FakeKlaviyoConfig:
    changes = realistic_knobs(1.0 if args.time_scale is None else args.time_scale) if (
        args.realistic or args.time_scale is not None) else {}
    changes.update({f.name: getattr(args, f.name) for f in dataclasses.fields(Knobs)
                    if getattr(args, f.name) is not None})
    config = FakeKlaviyoConfig(
        accounts=[AccountSpec(args.account_id, list(args.key))],
        knobs=Knobs().updated(changes),
        spec_path=args.spec,
    )
    if args.validate_spec:
        config.validate_requests_against_spec = True
    return config


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app = create_app(config_from_args(args))
    fake = app.state.fake
    print(f"FAKE_KLAVIYO_URL=http://{args.host}:{args.port}", flush=True)
    for account in fake.accounts.values():
        print(f"FAKE_KLAVIYO_ACCOUNT={account.id}", flush=True)
    for record in fake.keys.values():
        print(f"FAKE_KLAVIYO_KEY={record.key}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    sys.exit(main())
