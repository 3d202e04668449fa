"""`python -m fakes.loyale --port N [...]`: serve the fake Loyale with uvicorn and print how to use it."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import uvicorn

from fakes.loyale.app import create_app
from fakes.loyale.state import DEFAULT_ADMIN_EMAIL, FakeLoyaleConfig, Knobs, SchemeConfig


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m fakes.loyale", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--customers", type=int, default=0, help="synthetic customers in the scheme")
    parser.add_argument("--scheme-id", default=None, help="scheme GUID (default: a random one)")
    parser.add_argument("--scheme-name", default="Fake Scheme")
    parser.add_argument("--admin-email", default=DEFAULT_ADMIN_EMAIL)
    parser.add_argument("--admin-password", default=None, help="default: a random one, printed")
    parser.add_argument("--seed", type=int, default=0, help="seeds the synthetic data and the fault RNG")
    parser.add_argument("--latency-s", type=float, default=0.0)
    parser.add_argument("--error-rate", type=float, default=0.0)
    parser.add_argument("--throttle-rate", type=float, default=0.0)
    parser.add_argument("--token-ttl-s", type=float, default=3600.0)
    parser.add_argument("--webhook-retry-base-s", type=float, default=1.0)
    parser.add_argument("--strict-filters", action="store_true", help="400 on unknown filter names")
    parser.add_argument("--knob", action="append", default=[], metavar="NAME=JSON",
                        help="any other knob, e.g. --knob 'fail_next=[429,500]' (repeatable)")
    return parser.parse_args(argv)


def build_config(args: argparse.Namespace) -> FakeLoyaleConfig:
    scheme = SchemeConfig(customers=args.customers, seed=args.seed, admin_email=args.admin_email,
                          name=args.scheme_name)
    if args.scheme_id:
        scheme.scheme_id = args.scheme_id
    if args.admin_password:
        scheme.admin_password = args.admin_password
    knobs = Knobs()
    knobs.update({"latency_s": args.latency_s, "error_rate": args.error_rate, "throttle_rate": args.throttle_rate,
                  "token_ttl_s": args.token_ttl_s, "webhook_retry_base_s": args.webhook_retry_base_s,
                  "seed": args.seed, "ignore_unknown_filters": not args.strict_filters})
    extra = {}
    for item in args.knob:
        name, _, raw = item.partition("=")
        try:
            extra[name.strip()] = json.loads(raw)
        except ValueError:
            extra[name.strip()] = raw
    knobs.update(extra)
    return FakeLoyaleConfig(schemes=[scheme], knobs=knobs)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        config = build_config(args)
        app = create_app(config)
    except Exception as exc:  # a bad knob or scheme id: say so, no traceback
        print(f"fake loyale: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    scheme = next(iter(app.state.fake.schemes.values()))
    url = f"http://{args.host}:{args.port}"
    print(f"Fake Loyale on {url} ({len(scheme.customers)} customers)", flush=True)
    print(f"LOYALE_BASE_URL={url}", flush=True)
    print(f"LOYALE_SCHEME_ID={scheme.id}", flush=True)
    print(f"LOYALE_ADMIN_EMAIL={scheme.admin_email}", flush=True)
    print(f"LOYALE_ADMIN_PASSWORD={scheme.admin_password}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
