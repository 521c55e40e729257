"""Subcommands this package adds to `streambid`."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from bidder.arguments import non_negative, out_dir_problem, positive

if TYPE_CHECKING:
    from models.snapshot import ModelSnapshot

CTR_HELP = "progressive validation of the CTR learner vs a constant rate and Vowpal Wabbit"
CTR_DESCRIPTION = """\
Progressive validation (predict, then learn, example by example) of three learners:
a constant click rate, Vowpal Wabbit (--ftrl, logistic) and streambid's CTRLearner.

Streams:
  --data DIR       the iPinYou CTR sample (featindex.fm.txt, train.fm.txt, test.fm.txt), train then test
  --synthetic N    N synthetic events with known true CTR and a drift halfway (0 to skip)

Prints log loss, exact AUC, ECE and µs per predict/learn for each learner, the
excess log loss over the true probabilities on the synthetic stream, and the
µs per ModelSnapshot.predict (the per-candidate cost on the bid path).
Writes a reliability plot to OUT/ctr-reliability.png.
"""
CTR_FILES = ("featindex.fm.txt", "train.fm.txt", "test.fm.txt")
EXPORT_HELP = "save the model the workers last published to a file, for `serve --model`"
EXPORT_DESCRIPTION = ("Read the newest CTR model snapshot on the model topic (the one every bidder follows) and write "
                      "it to FILE.  `streambid serve --model FILE` then starts warm from it, with or without a broker.")
EXPORT_TIMEOUT_S = 30.0  # as the campaign commands: a silent broker otherwise holds the command for the client's 40 s
# The learner's tuning flags: (type, help, default).  The defaults are LearnerConfig's (a test holds them equal),
# written out so that `--help` need not import River.
TUNING = {
    "alpha": (positive(float), "FTRL learning-rate scale, > 0", 0.1),
    "beta": (non_negative(float), "FTRL learning-rate smoothing, >= 0", 1.0),
    "l1": (non_negative(float), "L1 regularisation (sparsity), >= 0", 0.2),
    "l2": (non_negative(float), "L2 regularisation, >= 0", 1.0),
    "calibration_prior": (positive(float), "weight holding the online calibration at the identity, > 0", 20.0),
}


def register(groups: dict[str, argparse._SubParsersAction]) -> None:
    """Add this package's subcommands to the command tree."""
    p = groups["bench"].add_parser(
        "ctr", help=CTR_HELP, description=CTR_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", type=Path, metavar="DIR",
                   help="directory of the iPinYou CTR sample (e.g. ../shared/data/ipinyou-ctr)")
    p.add_argument("--synthetic", type=non_negative(int), default=1_000_000, metavar="N",
                   help="synthetic events; 0 skips (default: %(default)s)")
    p.add_argument("--seed", type=int, default=7, help="seed of the synthetic stream (default: %(default)s)")
    p.add_argument("--out", type=Path, default=Path("out"), metavar="DIR",
                   help="directory for the reliability plot (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout instead of tables")
    p.add_argument("--quiet", action="store_true", help="no progress line on stderr")
    tune = p.add_argument_group("learner hyperparameters (defaults: the tuned ones)")
    for name, (kind, text, default) in TUNING.items():
        tune.add_argument(f"--{name.replace('_', '-')}", type=kind, dest=name, metavar="X", help=f"{text} (default: {default:g})")
    tune.add_argument("--blend-impressions", type=non_negative(float), metavar="N",
                      help="creative impressions at which model and prior weigh the same, >= 0 (default: 100)")
    tune.add_argument("--no-calibration", action="store_true", help="turn the online Platt calibration off")
    p.set_defaults(func=run_bench_ctr)

    e = groups["model"].add_parser("export", help=EXPORT_HELP, description=EXPORT_DESCRIPTION)
    e.add_argument("--broker", metavar="HOST:PORT", help="Kafka bootstrap HOST:PORT (default: $KAFKA_BOOTSTRAP)")
    e.add_argument("--out", type=Path, required=True, metavar="FILE",
                   help="where the snapshot goes (written whole, then renamed into place; missing directories are "
                        "created then)")
    e.add_argument("--timeout", type=positive(float), default=EXPORT_TIMEOUT_S, metavar="SECONDS",
                   help="how long the broker has to hand over the model topic; past it the command stops, writes "
                        "nothing and exits 1 (default: %(default)s)")
    e.add_argument("--json", action="store_true", help="print one JSON document: file, version, examples, weights")
    e.set_defaults(func=cmd_model_export)



async def read_latest_model(broker: str) -> bytes | None:
    """The last record of the model topic: one partition, one key, so the newest snapshot; None before the first."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from streams import topics

    c = AIOKafkaConsumer(bootstrap_servers=broker, enable_auto_commit=False)
    try:
        await c.start()
        if topics.MODEL.name not in await c.topics():
            return None
        tp = TopicPartition(topics.MODEL.name, 0)
        c.assign([tp])
        first, end = (await c.beginning_offsets([tp]))[tp], (await c.end_offsets([tp]))[tp]
        latest = None
        c.seek(tp, max(first, end - 1))
        while await c.position(tp) < end:
            for msg in (await c.getmany(tp, timeout_ms=1000)).get(tp, []):
                if msg.offset < end and msg.value:
                    latest = msg.value
        return latest
    finally:
        await c.stop()


def _export_problem(out: Path) -> str | None:
    """Why the snapshot cannot be written at `out` (None: it can), found before the broker is asked and without
    creating anything: a run that then finds no broker or no model must leave the disk as it was."""
    if out.is_dir():
        return f"--out {out}: is a directory; give a file name (e.g. {out / 'model.snap'})"
    base = next(d for d in (out.parent, *out.parent.parents) if d.exists())  # the nearest existing ancestor
    if not base.is_dir():
        return f"--out {out}: {base} is not a directory; give a file name under a directory (missing ones are created)"
    if not os.access(base, os.W_OK | os.X_OK):
        return f"--out {out}: {base} is not writable; give a file name under a directory you can write to"
    return None


def _write_snapshot(snap: ModelSnapshot, out: Path) -> str | None:
    """Write `snap` at `out`, creating its directory now that there is something to put in it; why not, if it fails."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        snap.save(out)
    except OSError as e:
        return f"--out {out}: cannot write the snapshot ({e.strerror or e}); give a file name you can write to"
    return None


def cmd_model_export(args: argparse.Namespace) -> int:
    from models.snapshot import ModelSnapshot
    from streams import topics
    from streams.commands import broker_of, on_broker

    if problem := _export_problem(args.out):
        print(f"streambid model export: {problem}", file=sys.stderr)
        return 2
    data = on_broker(args, read_latest_model(broker_of(args)), args.timeout, announce=True)
    if data is None:
        print(f"streambid model export: no model on {topics.MODEL.name} yet; a worker publishes one once it has learned "
              "examples (a click, or a click window closing): run `streambid worker` and export again", file=sys.stderr)
        return 1
    try:
        snap = ModelSnapshot.from_bytes(data)
    except ValueError as e:
        print(f"streambid model export: the last record on {topics.MODEL.name} is {e}; check what else writes to that "
              "topic", file=sys.stderr)
        return 1
    if problem := _write_snapshot(snap, args.out):
        print(f"streambid model export: {problem}", file=sys.stderr)
        return 1
    doc = {"file": str(args.out), "version": snap.version, "examples": snap.n_seen, "weights": len(snap.weights)}
    if args.json:
        print(orjson.dumps(doc).decode())
    else:
        print(f"wrote {args.out}: model version {snap.version}, {snap.n_seen:,} examples learned, "
              f"{len(snap.weights):,} weights; start a bidder warm with: streambid serve --model {args.out}")
    return 0


def _config(args: argparse.Namespace):
    from models.learner import LearnerConfig

    cfg = LearnerConfig()
    changes = {k: getattr(args, k) for k in TUNING if getattr(args, k) is not None}
    if args.no_calibration:
        changes["calibrate"] = False
    if args.blend_impressions is not None:
        changes["prior"] = dataclasses.replace(cfg.prior, blend_impressions=args.blend_impressions)
    return dataclasses.replace(cfg, **changes)


def _first_bad_line(path: Path, ok: Callable[[str], bool]) -> int | None:
    """The number of the first line of `path` that `ok` refuses or raises ValueError on; None if there is none."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            try:
                if not ok(line):
                    return n
            except ValueError:
                return n
    return None


def ctr_sample_problem(data: Path) -> str | None:
    """What in the --data directory `read_ipinyou` would trip on, found before any learner runs (None: nothing)."""
    if missing := [name for name in CTR_FILES if not (data / name).is_file()]:
        return f"--data {data} has no {', '.join(missing)}; give the directory of the iPinYou CTR sample"
    known: set[int] = set()

    def index_line(line: str) -> bool:
        known.add(int(line.rstrip("\n").rpartition("\t")[2]))
        return True

    def example_line(line: str) -> bool:
        parts = line.split()
        # a token without ':' is refused: in a `label price index:value ...` file the market price would be read as an
        # index, a feature learned from the auction's outcome
        return not parts or parts[0] in ("0", "1") and all(":" in t and int(t.partition(":")[0]) in known
                                                           for t in parts[1:])

    example = "label(0|1) index:value ..., each index in featindex.fm.txt"
    for name, ok, form in zip(CTR_FILES, (index_line, example_line, example_line),
                              ("field:value<TAB>index", example, example), strict=True):
        path = data / name
        try:
            bad = _first_bad_line(path, ok)
        except UnicodeDecodeError:
            return f"{path} is not UTF-8 text; give the directory of the iPinYou CTR sample"
        except OSError as e:
            return f"cannot read {path}: {e.strerror or e}; make it readable, or give another copy of the iPinYou CTR sample"
        if bad is not None:
            return f"{path} line {bad} is not `{form}`; fix or remove it"
        if name != CTR_FILES[0] and not _has_example(path):  # nothing to learn from, or to score
            return f"{path} holds no examples (an interrupted download?); give the directory of the iPinYou CTR sample"
    return None


def _has_example(path: Path) -> bool:
    with open(path, encoding="utf-8") as f:
        return any(line.strip() for line in f)


def _clean(v):
    """JSON-safe: NaN becomes null."""
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_clean(x) for x in v]
    return v


def run_bench_ctr(args: argparse.Namespace) -> int:
    if args.data is None and args.synthetic <= 0:
        print("streambid bench ctr: nothing to do: give --data DIR and/or --synthetic N", file=sys.stderr)
        return 2
    for problem in (ctr_sample_problem(args.data) if args.data is not None else None, out_dir_problem(args.out)):
        if problem:
            print(f"streambid bench ctr: {problem}", file=sys.stderr)
            return 2
    from models import bench_ctr as b  # River takes a while to import: only once the arguments are known good

    config = _config(args)
    progress = b.Progress(enabled=not args.quiet)
    ipinyou = b.bench_ipinyou(args.data, config, progress) if args.data is not None else None
    synthetic = b.bench_synthetic(args.synthetic, config, progress, args.seed) if args.synthetic > 0 else None
    progress.update("writing the reliability plot", force=True)
    panels = {}
    if ipinyou:
        panels["iPinYou (train+test)"] = ipinyou
    if synthetic:
        panels[f"synthetic ({args.synthetic:,} events)"] = synthetic
    plot = b.plot_reliability(panels, args.out / "ctr-reliability.png")
    progress.done()
    targets = b.check_targets(ipinyou, synthetic)
    cfg = config.to_dict()
    if args.json:
        doc = {
            "config": cfg,
            "ipinyou": {"rows": ipinyou["rows"], "snapshot": ipinyou["snapshot"]} if ipinyou else None,
            "synthetic": (
                {"rows": synthetic["rows"], "drift_at": synthetic["drift_at"], "n": args.synthetic} if synthetic else None
            ),
            "targets": targets,
            "plot": str(plot),
        }
        sys.stdout.write(orjson.dumps(_clean(doc), option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    print("CTR learner: progressive validation (predict, then learn, in order)")
    print(
        f"streambid config: alpha={config.alpha} beta={config.beta} l1={config.l1} l2={config.l2} "
        f"calibration={'on' if config.calibrate else 'off'} blend_impressions={config.prior.blend_impressions}"
    )
    if ipinyou:
        n = ipinyou["rows"][0]["n"]
        clicks = ipinyou["rows"][0]["clicks"]
        print(f"\niPinYou CTR sample: {n:,} impressions, {clicks} clicks (train then test)")
        print(b.format_table(ipinyou["rows"], b.COLUMNS))
        s = ipinyou["snapshot"]
        if s:
            print(
                f"\nModelSnapshot: {s['us_predict']:.2f} µs per predict (per candidate), {s['us_base_score']:.2f} µs per "
                f"base_score (per request); {s['weights']:,} weights, {s['bytes']:,} bytes serialised; "
                f"max |snapshot - learner| = {s['max_abs_diff_vs_learner']:.1e}"
            )
            print(
                f"Features: {s['us_request_features']:.2f} µs per request_features (per impression), "
                f"{s['us_candidate_features']:.2f} µs per candidate_features (per candidate)"
            )
    if synthetic:
        print(f"\nSynthetic stream: {args.synthetic:,} events, drift at {synthetic['drift_at']:,}")
        print("(excess: expected log loss over that of the true probabilities, minus 1)")
        print(b.format_table(synthetic["rows"], b.SYNTH_COLUMNS))
    print("\nTargets:")
    for t in targets:
        print(f"  [{'met' if t['met'] else 'NOT met'}] {t['target']}")
    print(f"\nReliability plot: {plot}")
    return 0
