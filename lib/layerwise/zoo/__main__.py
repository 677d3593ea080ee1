"""``python -m layerwise.zoo list | train NAME… | train --all | check``."""

from __future__ import annotations

import argparse
import time

import torch

from layerwise.zoo import REGISTRY, WEIGHTS, check, manifest, train


def _order(names: list[str]) -> list[str]:
    """``names`` sorted so that each model comes after the ones it requires (which are trained
    only if they are among ``names``: a named retrain never overwrites its dependencies)."""
    wanted, done = set(names), []

    def visit(n: str) -> None:
        for dep in REGISTRY[n].requires:
            if dep in wanted:
                visit(dep)
        if n not in done:
            done.append(n)

    for n in names:
        if n not in REGISTRY:
            raise SystemExit(f"no zoo model named {n!r}; available: {sorted(REGISTRY)}")
        visit(n)
    return done


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m layerwise.zoo", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list")
    p_train = sub.add_parser("train")
    p_train.add_argument("names", nargs="*")
    p_train.add_argument("--all", action="store_true")
    p_train.add_argument("--device", default=None)
    p_train.add_argument("--steps", type=int, default=None,
                         help="smoke run: train every model only this many steps (not the zoo's weights)")
    sub.add_parser("check")
    args = parser.parse_args(argv)
    if args.cmd == "list":
        data = manifest()
        for name, r in REGISTRY.items():
            e = data.get(name, {})
            print(f"{name:28s} {r.steps:6d} steps  {r.metric}={e.get('metric', {}).get('value', '—')}  "
                  f"{e.get('wall_time_s', '—')} s  {r.description}")
    elif args.cmd == "train":
        names = list(REGISTRY) if args.all else args.names
        if not names:
            parser.error("give model names or --all")
        total = time.perf_counter()
        for name in _order(names):
            _, entry = train(name, steps=args.steps, device=args.device, out=WEIGHTS / f"{name}.safetensors",
                             write_manifest=True)
            print(f"{name}: {entry['metric']['name']} = {entry['metric']['value']:.4g} "
                  f"after {entry['steps']} steps, {entry['wall_time_s']} s, {entry['bytes'] / 1e6:.2f} MB", flush=True)
        print(f"zoo: {len(names)} model(s) in {time.perf_counter() - total:.0f} s "
              f"({torch.get_num_threads()} torch threads)")
    elif args.cmd == "check":
        for name in REGISTRY:
            value, limit = check(name)
            print(f"{name}: {value:.4g} (limit {limit:.4g}) {'ok' if value <= limit else 'FAILED'}")


if __name__ == "__main__":
    main()
