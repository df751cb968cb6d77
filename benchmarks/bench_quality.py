"""Recommendation quality on real data: the streaming protocol over several seeds, as ranges.

Runs ``recicl experiment streaming`` (the library call) once per seed with ``train.seed`` set
(the seed also draws the evaluated samples of each period, so a range covers both the tuning and
the evaluation sample), then prints one table: AUC and UAUC per variant and period as
min–max over the seeds, the facts the pretrained-LLM issue asks about (RecICL ≥ 0.80 on every
period; above zero-shot and TALLRec on every period; the margin over the classical model), the
taste-switch shift of every model (``recicl.experiments.taste``: does the new taste of a scripted
user lift its candidates, with no update?) and how long each variant took. Numbers are measured,
never asserted.

    python benchmarks/bench_quality.py --config ray_jobs/configs/gemma3-270m-cpu.yaml \
        --seeds 0,1 [--few-shot 16,64,256,0.1] [--add-variants demo-rate] \
        [--set train.max_steps=40 ...] [--output recicl-work/quality]

Each seed's run is kept in ``<output>/seed-<s>/streaming.json``; rerunning reuses finished seeds
and runs only the variants they lack (delete the folder to measure again). Samples are built
first when the config's folder has none.
On 2 CPU cores with the Gemma CPU config, one seed takes about an hour.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import yaml

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def run_seed(
    config: Path,
    seed: int,
    output: Path,
    few_shot: list[float] | None,
    extra: list[str],
    settings: dict[str, Any],
) -> dict:
    """One seed's streaming run; a finished seed is reused, and only the variants it lacks
    (e.g. few-shot sizes or reference rows asked for later) are run and merged in."""
    from recicl.config import load_config, with_overrides
    from recicl.data.pipeline import build_samples
    from recicl.data.samples_folder import SamplesFolder, configured_samples_dir
    from recicl.experiments.streaming import few_shot_name, run_streaming

    overrides: dict[str, Any] = {
        **settings,
        "train.seed": seed,
        "experiment.output": str(output),
    }
    cfg = with_overrides(load_config(config), overrides)
    variants = list(dict.fromkeys([*cfg.experiment.variants, *extra]))
    sizes = cfg.experiment.few_shot if few_shot is None else few_shot
    wanted = {*variants, *(few_shot_name(cfg.experiment.few_shot_format, n) for n in sizes)}
    done = output / "streaming.json"
    previous = json.loads(done.read_text()) if done.is_file() else None
    have = {row["variant"] for row in previous["rows"]} if previous else set()
    if previous and wanted <= have:
        print(f"[quality] seed {seed}: reusing {done}", flush=True)
        return previous
    part = output / f"part-{len(list(output.glob('part-*')))}" if previous else output
    cfg = with_overrides(
        cfg,
        {
            "experiment.output": str(part),
            "experiment.variants": [v for v in variants if v not in have],
            "experiment.few_shot": [
                n for n in sizes if few_shot_name(cfg.experiment.few_shot_format, n) not in have
            ],
        },
    )
    samples = SamplesFolder(Path(configured_samples_dir(cfg) or "").expanduser().resolve())
    if not samples.manifest():
        from recicl.embeddings import embedder_for

        build_samples(cfg, embedder=embedder_for(cfg))
    started = time.perf_counter()
    result = run_streaming(cfg)
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    if previous:  # merge the new rows into the seed's record
        previous["rows"] += result["rows"]
        previous["variants"].update(result["variants"])
        previous.setdefault("parts", []).append(
            {"variants": sorted(result["variants"]), "wall_seconds": result["wall_seconds"]}
        )
        result = previous
    output.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(result, indent=2) + "\n")
    return result


def add_taste_shifts(
    config: Path, seed: int, result: dict, output: Path, settings: dict[str, Any]
) -> None:
    """The taste-switch probe (recicl.experiments.taste) for every variant with a model: how far a
    user's new taste lifts its candidates relative to the old taste's, with no update."""
    from recicl.config import load_config, with_overrides
    from recicl.data.samples_folder import configured_samples_dir
    from recicl.experiments.taste import taste_switch_shift

    cfg = with_overrides(load_config(config), {**settings, "train.seed": seed})
    samples = Path(configured_samples_dir(cfg) or "")
    recicl_prompt = cfg.prompt.model_copy(update={"format": "recicl"})
    taste = result.setdefault("taste", {})
    for variant, facts in result.get("variants", {}).items():
        if variant in taste:
            continue
        if variant == "zero-shot":
            base = facts.get("base") or cfg.model.name_or_path  # a run's tiny model, if built
            if not base:
                continue
            taste[variant] = taste_switch_shift(
                base, samples, prompt=recicl_prompt, model_cfg=cfg.model
            )
        elif variant == "tallrec+demos" and "model_dir" in result["variants"].get("tallrec", {}):
            taste[variant] = taste_switch_shift(
                result["variants"]["tallrec"]["model_dir"],
                samples,
                prompt=recicl_prompt,
                force_prompt=True,
            )
        elif facts.get("model_dir"):
            taste[variant] = taste_switch_shift(facts["model_dir"], samples)
        else:
            continue
        print(f"[quality] seed {seed} {variant}: taste shift {taste[variant]['shift']:+.4f}")
        if "shift_no_blend" in taste[variant]:  # train.blend: the row of the LLM alone
            taste[f"{variant}~no-blend"] = {"shift": taste[variant]["shift_no_blend"]}
        (output / "streaming.json").write_text(json.dumps(result, indent=2) + "\n")


def _span(values: list[float | None], fmt: str = "{:.3f}") -> str:
    known = [v for v in values if v is not None]
    if not known:
        return "-"
    low, high = min(known), max(known)
    if abs(high - low) < 5e-4:
        return fmt.format(low)
    return f"{fmt.format(low)}–{fmt.format(high)}"


def _uauc_means(cells: dict[int, dict[str, list]], periods: list[int], seeds: int) -> list:
    """Each seed's UAUC averaged over the periods (a range over seeds is then one span)."""
    means = []
    for i in range(seeds):
        values = [cells[p]["uauc"][i] for p in periods if p in cells and
                  i < len(cells[p]["uauc"]) and cells[p]["uauc"][i] is not None]  # fmt: skip
        if values:
            means.append(sum(values) / len(values))
    return means


def summarize(results: dict[int, dict]) -> dict[str, Any]:
    """Ranges per variant and period, and the issue's comparisons per seed."""
    table: dict[str, dict[int, dict[str, list]]] = {}
    for result in results.values():
        for row in result["rows"]:
            cell = table.setdefault(row["variant"], {}).setdefault(row["period"], {})
            for key in ("auc", "uauc", "count"):
                cell.setdefault(key, []).append(row[key])
    periods = sorted({p for cells in table.values() for p in cells})
    checks: dict[str, list[bool]] = {}

    def auc(result: dict, variant: str, period: int) -> float | None:
        for row in result["rows"]:
            if row["variant"] == variant and row["period"] == period:
                return row["auc"]
        return None

    for result in results.values():
        mine = [auc(result, "recicl", p) for p in periods]
        if None in mine:
            continue
        checks.setdefault("recicl AUC >= 0.80 on every period", []).append(
            all(a >= 0.80 for a in mine)  # type: ignore[operator]
        )
        for other in ("zero-shot", "tallrec", "tallrec+demos"):
            theirs = [auc(result, other, p) for p in periods]
            if None not in theirs:
                checks.setdefault(f"recicl > {other} on every period", []).append(
                    all(a > b for a, b in zip(mine, theirs, strict=True))  # type: ignore[operator]
                )
        classical = [auc(result, "classical", p) for p in periods]
        if None not in classical:
            margin = min(a - b for a, b in zip(mine, classical, strict=True))  # type: ignore[operator]
            checks.setdefault("recicl - classical >= 0.10 on every period", []).append(
                margin >= 0.10
            )
    return {"table": table, "periods": periods, "checks": checks}


def print_summary(summary: dict[str, Any], results: dict[int, dict], command: str) -> None:
    periods = summary["periods"]
    seeds = sorted(results)
    print(f"\nstreaming protocol, seeds {seeds} (min–max over seeds); reproduce: {command}")
    header = f"{'variant':<16}" + "".join(f"{'AUC D' + str(p):>15}" for p in periods)
    print(header + f"{'UAUC (mean of periods)':>26}{'taste shift':>17}")
    for variant, cells in summary["table"].items():
        aucs = "".join(f"{_span(cells[p]['auc']):>15}" if p in cells else f"{'-':>15}"
                       for p in periods)  # fmt: skip
        uauc_means = _uauc_means(cells, periods, len(seeds))
        shifts = [r.get("taste", {}).get(variant, {}).get("shift") for r in results.values()]
        print(f"{variant:<16}{aucs}{_span(uauc_means):>26}{_span(shifts, '{:+.3f}'):>17}")
    counts = {c for cells in summary["table"].values() for p in cells for c in cells[p]["count"]}
    print(f"samples per period: {sorted(counts)}")
    for name, outcomes in summary["checks"].items():
        print(f"  {name}: {sum(outcomes)} of {len(outcomes)} seeds")
    for seed in seeds:
        facts = results[seed].get("variants", {})
        timing = ", ".join(f"{v} {f.get('seconds', 0):.0f}s" for v, f in facts.items())
        print(f"  seed {seed}: {results[seed].get('wall_seconds', '?')}s in all ({timing})")


def markdown_table(summary: dict[str, Any], results: dict[int, dict]) -> str:
    """The printed table as Markdown (``<output>/table.md``), for docs/results/."""
    periods = summary["periods"]
    seeds = sorted(results)
    lines = [
        "| variant | "
        + " | ".join(f"AUC D{p}" for p in periods)
        + " | UAUC (mean) | taste shift |",
        "|---" * (len(periods) + 3) + "|",
    ]
    for variant, cells in summary["table"].items():
        aucs = [_span(cells[p]["auc"]) if p in cells else "-" for p in periods]
        uauc_means = _uauc_means(cells, periods, len(seeds))
        shifts = [r.get("taste", {}).get(variant, {}).get("shift") for r in results.values()]
        shift = _span(shifts, "{:+.3f}")
        lines.append(f"| {variant} | " + " | ".join(aucs) + f" | {_span(uauc_means)} | {shift} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument(
        "--few-shot",
        default=None,
        help="comma-separated few-shot sizes (counts or fractions), e.g. 16,64,256,0.1",
    )
    parser.add_argument(
        "--add-variants",
        default="",
        help="variants besides the config's, e.g. demo-rate (a finished seed runs only these)",
    )
    parser.add_argument("--output", type=Path, default=Path("recicl-work/quality"))
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override (dotted key, YAML value), e.g. train.max_steps=40; repeatable",
    )
    args = parser.parse_args()
    settings = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set {item!r}: expected KEY=VALUE, e.g. train.max_steps=40")
        settings[key.strip()] = yaml.safe_load(value)
    if settings:  # a mistyped key or value is a clear error now, not a traceback an hour in
        from recicl.config import ConfigError, load_config, with_overrides

        try:
            with_overrides(load_config(args.config), settings)
        except ConfigError as error:
            parser.error(f"--set: {error}")
    few_shot = None
    if args.few_shot:
        few_shot = [float(x) if "." in x else int(x) for x in args.few_shot.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    results = {}
    for seed in seeds:
        extra = [v.strip() for v in args.add_variants.split(",") if v.strip()]
        folder = args.output / f"seed-{seed}"
        results[seed] = run_seed(args.config, seed, folder, few_shot, extra, settings)
        add_taste_shifts(args.config, seed, results[seed], folder, settings)
    summary = summarize(results)
    command = "python benchmarks/bench_quality.py " + shlex.join(sys.argv[1:])
    print_summary(summary, results, command)
    (args.output / "table.md").write_text(markdown_table(summary, results))
    (args.output / "summary.json").write_text(
        json.dumps({"command": command, **summary}, indent=2, default=str) + "\n"
    )


if __name__ == "__main__":
    main()
