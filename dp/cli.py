"""``python -m dp``: epsilon and noise planning for DP-SGD and DP-FedAvg, like TF Privacy's.

    python -m dp epsilon --sampling-rate Q --noise-multiplier Z --steps S --delta D
                         [--accountant rdp|prv|pld] [--json]
    python -m dp noise --target-epsilon E --sampling-rate Q --steps S --delta D
                       [--accountant rdp|prv|pld] [--json]

A bad value prints one line on stderr and exits with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence, TextIO

from dp.accounting import AccountantKind, privacy_spent
from dp.calibration import calibrate_noise_multiplier
from dp.errors import DPError

__all__ = ["main", "build_parser"]

_PROG = "python -m dp"
_FLAGS = {"sampling_rate", "noise_multiplier", "steps", "delta", "target_epsilon"}


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage and exiting, so errors are one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(f"{self.prog}: error: {message}")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sampling-rate", type=float, required=True, metavar="Q",
                   help="Poisson sampling rate q in (0, 1] (batch size / dataset size)")
    p.add_argument("--steps", type=int, required=True, metavar="S",
                   help="number of steps (DP-SGD) or rounds (DP-FedAvg)")
    p.add_argument("--delta", type=float, required=True, metavar="D", help="delta in (0, 1)")
    p.add_argument("--accountant", choices=[k.value for k in AccountantKind], default="rdp",
                   help="privacy accountant (default: rdp)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=_PROG, description="Plan (epsilon, delta) budgets for DP-SGD/FedAvg.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    eps = sub.add_parser("epsilon", help="epsilon spent by S Poisson-sampled Gaussian steps")
    eps.add_argument("--noise-multiplier", type=float, required=True, metavar="Z",
                     help="noise std / clip norm")
    _add_common(eps)
    noise = sub.add_parser("noise", help="smallest noise multiplier meeting a target epsilon")
    noise.add_argument("--target-epsilon", type=float, required=True, metavar="E")
    _add_common(noise)
    return parser


def _run(args: argparse.Namespace) -> dict[str, object]:
    kind = AccountantKind(args.accountant)
    common = dict(sampling_rate=args.sampling_rate, steps=args.steps, delta=args.delta)
    out: dict[str, object] = {}
    if args.command == "noise":
        z = calibrate_noise_multiplier(
            target_epsilon=args.target_epsilon, accountant=kind, **common
        )
        out["target_epsilon"] = args.target_epsilon
    else:
        z = args.noise_multiplier
    res = privacy_spent(noise_multiplier=z, accountant=kind, **common)
    out.update(
        epsilon=res.epsilon,
        delta=args.delta,
        noise_multiplier=z,
        sampling_rate=args.sampling_rate,
        steps=args.steps,
        accountant=res.accountant.value,  # the one that produced epsilon (a PLD/PRV may fall back)
    )
    if res.accountant is not kind:
        out["accountant_requested"] = kind.value
    if res.note:
        out["note"] = res.note
    return out


def main(argv: Sequence[str] | None = None, *, stdout: TextIO | None = None,
         stderr: TextIO | None = None) -> int:
    """Run the command; returns the exit status (0, or 2 for a bad value)."""
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    try:
        args = build_parser().parse_args(argv)
        result = _run(args)
    except _UsageError as exc:
        print(str(exc), file=stderr)
        return 2
    except DPError as exc:
        message = str(exc)
        name = message.split(" ", 1)[0]
        if name in _FLAGS:  # name the flag the user typed, not the Python parameter
            message = "--" + name.replace("_", "-") + message[len(name):]
        print(f"{_PROG}: error: {message}", file=stderr)
        return 2
    if args.json:
        print(json.dumps(result), file=stdout)
    elif args.command == "noise":
        print(
            f"noise multiplier {result['noise_multiplier']:.6g} gives epsilon "
            f"{result['epsilon']:.6g} <= {result['target_epsilon']:g} at delta {args.delta:g} "
            f"(sampling rate {args.sampling_rate:g}, {args.steps} steps, {result['accountant']})"
            + (f"; {result['note']}" if "accountant_requested" in result else ""),
            file=stdout,
        )
    else:
        print(
            f"epsilon {result['epsilon']:.6g} at delta {args.delta:g} "
            f"(noise multiplier {args.noise_multiplier:g}, sampling rate {args.sampling_rate:g}, "
            f"{args.steps} steps, {result['accountant']})"
            + (f"; {result['note']}" if "accountant_requested" in result else ""),
            file=stdout,
        )
    return 0
