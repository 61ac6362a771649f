"""The ``bench`` command line (also ``python -m cxrbench``).

Every argument is validated before anything is written: bad input gives one line naming the
bad value and the valid choices, exit code 2, and no files.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from cxrbench.benchmark.errors import StoredEncoderError
from cxrbench.benchmark.pretraining.lease import PretrainingInProgressError
from cxrbench.records.layout import ResultsFolder

if TYPE_CHECKING:  # torch and the registries load only when a command needs them (``--help`` stays fast)
    from cxrbench.benchmark.config import RunConfig

EXIT_USAGE = 2


class CliError(Exception):
    """Bad input: reported as one line, exit code 2."""


def _csv(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _check_choices(kind: str, requested: list[str], valid: list[str]) -> None:
    from cxrbench.benchmark.protocols.registry import KNOWN_PLUGINS

    for item in requested:
        if item not in valid:
            hint = f"; {item!r} is provided by {KNOWN_PLUGINS[item]}" if item in KNOWN_PLUGINS else ""
            raise CliError(f"unknown {kind} {item!r}{hint}; valid: {', '.join(valid)}")


def _parse_fractions(text: str) -> list[float]:
    fractions = []
    for item in _csv(text):
        try:
            value = float(item)
        except ValueError:
            raise CliError(f"label fraction {item!r} is not a number; expected percentages in (0, 100], e.g. 1,10,100") from None
        if not 0 < value <= 100:
            raise CliError(f"label fraction {item} is outside (0, 100]; expected percentages such as 1,10,100")
        fractions.append(value)
    if not fractions:
        raise CliError("--fractions is empty; expected percentages in (0, 100], e.g. 1,10,100")
    return fractions


def _from_profile(parse, key: str, values) -> list:
    """A profile's (or a --set) list checked by the same rules as the flag's."""
    if not isinstance(values, list):
        raise CliError(f"{key} is {values!r}; expected a list such as [0, 1]")
    try:
        return parse(",".join(str(value) for value in values))
    except CliError as error:
        raise CliError(f"{key} (profile or --set): {error}") from None


MAX_SEED = 999_999


def _parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(item) for item in _csv(text)]
    except ValueError:
        raise CliError(f"--seeds {text!r}: expected comma-separated integers, e.g. 0,1") from None
    if not seeds:
        raise CliError("--seeds is empty; expected comma-separated integers, e.g. 0,1")
    for seed in seeds:
        # label subsets draw with numpy seed * 1000 + step, which must stay below 2**32
        if not 0 <= seed <= MAX_SEED:
            raise CliError(f"--seeds: seed {seed} is outside 0..{MAX_SEED}; expected non-negative integers, e.g. 0,1")
    return seeds


def _check_writable(path: Path, flag: str) -> None:
    """Fail early if ``path`` cannot be created or written, without creating anything."""
    if path.exists() and not path.is_dir():
        raise CliError(f"{flag} {path}: exists and is not a directory")
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise CliError(f"{flag} {path}: not writable ({probe} does not accept new files)")
    # os.access answers for permissions only: root "may" write to /sys or a read-only mount,
    # and creating a file there still fails. Try, with a file that is removed at once.
    import tempfile

    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as error:
        raise CliError(f"{flag} {path}: not writable ({probe}: {error.strerror or error})") from None


def _check_device_name(name: str) -> None:
    import re

    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", name):
        raise CliError(f"--device {name!r}: unknown device; valid: auto, cpu, cuda, cuda:N")


def _device(name: str):
    """``--device`` as a ``torch.device``, resolved in this process (``config.resolve_device``)."""
    import torch

    from cxrbench.benchmark.config import resolve_device

    _check_device_name(name)
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CliError(f"--device {name}: CUDA is not available on this machine; valid: auto, cpu")
    return resolve_device(name)


def command_list(args) -> int:
    from cxrbench.benchmark.profiles import available_profiles, load_profile
    from cxrbench.benchmark.protocols.registry import PROTOCOL_ORIGINS, PROTOCOLS
    from cxrbench.datasets import DATASET_ORIGINS, DATASETS, available_datasets
    from cxrbench.methods import METHOD_ORIGINS, available_methods, get_method

    if args.details is not None:
        return _print_method_details(args.details)
    rows = []
    if args.what in ("methods", "all"):
        for name in available_methods():
            cls = get_method(name)
            rows.append(("method", name, cls.description, METHOD_ORIGINS.get(name, "?")))
    if args.what in ("datasets", "all"):
        for name in available_datasets():
            rows.append(("dataset", name, DATASETS.get(name)().description, DATASET_ORIGINS.get(name, "?")))
    if args.what in ("profiles", "all"):
        for name in available_profiles():
            rows.append(("profile", name, load_profile(name)["description"], "built-in"))
    if args.what in ("protocols", "all"):
        for name, protocol in PROTOCOLS.items():
            rows.append(("protocol", name, protocol.description, PROTOCOL_ORIGINS.get(name, "?")))
    from tabulate import tabulate

    headers = ["kind", "name", "description", "origin"] if args.what == "all" else ["name", "description", "origin"]
    print(tabulate([row if args.what == "all" else row[1:] for row in rows], headers=headers, tablefmt="simple"))
    return 0


def _print_method_details(name: str) -> int:
    """Every hyperparameter of one method as each profile resolves it, read from the profile
    files: the per-profile half of a method's faithfulness record, which therefore cannot drift."""
    import dataclasses

    from tabulate import tabulate

    from cxrbench.benchmark.profiles import available_profiles, load_profile
    from cxrbench.benchmark.profiles import method_hyperparameters
    from cxrbench.methods import available_methods, get_method

    if name not in available_methods():
        print(f"bench list: unknown method {name!r}; known: {', '.join(available_methods())}", file=sys.stderr)
        return 2
    cls = get_method(name)
    profiles = {profile: load_profile(profile) for profile in available_profiles()}
    resolved = {profile: method_hyperparameters(settings, name) for profile, settings in profiles.items()}
    default = cls.Hyperparameters() if cls.Hyperparameters is not None else None
    rows = []
    for field in dataclasses.fields(default) if default is not None else ():
        values = [getattr(resolved[profile], field.name) for profile in profiles]
        marks = ["" if value == getattr(default, field.name) else " *" for value in values]
        rows.append([field.name, getattr(default, field.name)] + [f"{value}{mark}" for value, mark in zip(values, marks)])
    for key, label in (("batch_size", "pretrain.batch_size"), ("epochs", "pretrain.epochs"), ("max_steps", "pretrain.max_steps")):
        rows.append([label, ""] + [settings["pretrain"].get(key) for settings in profiles.values()])
    rows.append(["data.image_size", ""] + [settings["data"]["image_size"] for settings in profiles.values()])
    print(f"{name} ({cls.display_name}): default = the method's official value or recorded choice "
          f"(see its faithfulness record: python -c 'import {cls.__module__} as m; print(m.__doc__)'); "
          f"* = set by the profile")
    print(tabulate(rows, headers=["hyperparameter", "default"] + list(profiles), tablefmt="simple"))
    return 0


def _encoder_rows(specs: list[str]) -> dict[str, str]:
    """``--encoder NAME=PATH`` values as {NAME: absolute PATH}, each file read and registered as a
    row now, so that a bad file is one line before anything is written."""
    from cxrbench.methods.checkpoints import CheckpointError
    from cxrbench.methods.external import register_encoder_rows

    rows = {}
    for spec in specs:
        name, separator, path = spec.partition("=")
        if not separator or not name or not path:
            raise CliError(f"--encoder {spec!r}: expected NAME=PATH, e.g. --encoder mine=checkpoints/last.ckpt")
        if name in rows:
            raise CliError(f"--encoder {name}: given twice; each row needs its own name")
        rows[name] = str(Path(path).expanduser().resolve())
    try:
        register_encoder_rows(rows)
    except CheckpointError as error:
        raise CliError(f"--encoder: {error}") from None
    return rows


@dataclasses.dataclass
class ResolvedRun:
    """Everything a ``bench run`` was asked for, resolved and checked before anything is written."""

    config: RunConfig  # the resolved, checked settings; its profile is stored whole in run.json and every record
    methods: list[str]
    datasets_by_protocol: dict[str, list[str]]
    fractions: list[float]
    seeds: list[int]
    out_dir: Path
    dispatch_options: dict


def command_run(args) -> int:
    """Resolve, plan, execute, summarise."""
    from cxrbench.distributed import process_group_from_environment
    from cxrbench.distributed import world as current_world

    _check_device_name(args.device)  # before anything is printed or written
    run = _resolve_run(args)
    if args.executor == "slurm":
        # this process only submits; each job resolves --device on its own node
        return _plan_and_execute(args, run, current_world(), _device("cpu"))
    with process_group_from_environment(_device(args.device)) as (world, device):
        return _plan_and_execute(args, run, world, device)


def _plan_and_execute(args, run: ResolvedRun, world, device) -> int:
    """The cells planned, announced and run; rank 0 alone writes the plan and the summary."""
    from cxrbench.benchmark.plan import RunPlan, grid_cells
    from cxrbench.benchmark.runner import Runner

    cells = [cell for protocol, datasets in run.datasets_by_protocol.items()
             for cell in grid_cells(run.methods, datasets, [protocol], run.fractions, run.seeds)]
    plan = RunPlan.for_cells(cells, run.config)
    if world.is_main:
        _announce(args, run, plan, world)
    started = time.perf_counter()
    runner = Runner(run.config, run.out_dir, device)
    if world.is_main:  # what `bench status OUT` compares the folder against
        from cxrbench.benchmark.status import write_plan

        write_plan(run.out_dir, plan.cells, plan.cannot_run, plan.pretraining_methods(), ["bench", *sys.argv[1:]])
    written, missing, failures = _execute(args, run, plan, runner)
    if not world.is_main:
        return 0
    return _summarise(run, written, missing, failures, time.perf_counter() - started)


def _resolve_run(args) -> ResolvedRun:
    """The run's RunConfig (the profile with every --set and flag applied, checked), the methods,
    datasets, fractions and seeds, and the output folder; each checked, one line per problem (CliError)."""
    from cxrbench.benchmark.protocols.registry import BUILT_IN, PROTOCOLS
    from cxrbench.benchmark.runner import Runner

    encoder_rows = _encoder_rows(args.encoder or [])
    methods = _resolve_methods(args, encoder_rows)
    protocols = list(BUILT_IN) if args.protocol == "all" else _csv(args.protocol)
    _check_choices("protocol", protocols, list(PROTOCOLS) + ["all"])
    config = _resolve_config(args, encoder_rows)
    datasets_by_protocol = _resolve_datasets(args, config, protocols)
    evaluation = config.profile["evaluation"]
    # an empty --fractions '' or --seeds '' is an error, not the profile's whole grid
    fractions = _parse_fractions(args.fractions) if args.fractions is not None else \
        _from_profile(_parse_fractions, "evaluation.fractions", evaluation["fractions"])
    seeds = _parse_seeds(args.seeds) if args.seeds is not None else _from_profile(_parse_seeds, "evaluation.seeds", evaluation["seeds"])
    dispatch_options = _dispatch_options(args)
    _check_available(config, methods, datasets_by_protocol)
    out_dir = Path(args.out) if args.out else Path("results") / args.profile
    _check_writable(out_dir, "--out")
    conflict = Runner.configuration_conflict(out_dir, config.profile)
    if conflict:
        raise CliError(f"--out {out_dir} holds records made with another configuration ({conflict}); "
                       f"use a new --out, or the same profile and --set values")
    return ResolvedRun(config, methods, datasets_by_protocol, fractions, seeds, out_dir, dispatch_options)


def _resolve_config(args, encoder_rows: dict[str, str]) -> RunConfig:
    """The profile file, then --set, then --encoder rows and the flags that set profile values,
    built once into a RunConfig that checks every value (CliError naming the key)."""
    from cxrbench.benchmark.config import ConfigError, RunConfig
    from cxrbench.benchmark.profiles import apply_overrides, available_profiles, load_profile

    _check_choices("profile", [args.profile], available_profiles())
    profile = load_profile(args.profile)
    try:
        apply_overrides(profile, args.set or [])
    except ValueError as error:
        raise CliError(str(error)) from None
    if encoder_rows:  # stored with the profile: run.json, every record and every grid job read them there
        profile["encoders"] = {**(profile.get("encoders") or {}), **encoder_rows}
    _apply_run_flags(args, profile)
    try:
        return RunConfig.from_profile(profile)
    except ConfigError as error:
        raise CliError(str(error)) from None


def _resolve_methods(args, encoder_rows: dict[str, str]) -> list[str]:
    """--methods (``all``: every method listed in it; groups expanded) plus a row per --encoder."""
    from cxrbench.methods import METHOD_GROUPS, available_methods, expand_methods, get_method

    methods_known = available_methods()
    in_all = [name for name in methods_known if get_method(name).listed_in_all]
    methods = in_all if args.methods == "all" else _csv(args.methods)
    methods += [name for name in encoder_rows if name not in methods]  # each --encoder adds its row
    if not methods:
        raise CliError(f"--methods is empty; valid: all, {', '.join(list(METHOD_GROUPS) + methods_known)}")
    _check_choices("method", methods, list(METHOD_GROUPS) + methods_known)
    return expand_methods(methods)


def _resolve_datasets(args, config: RunConfig, protocols: list[str]) -> dict[str, list[str]]:
    """Each protocol's datasets: --datasets (those of a task it accepts), else its own profile list,
    else the profile's classification list."""
    from cxrbench.benchmark.protocols.registry import PROTOCOLS
    from cxrbench.datasets import DATASETS, available_datasets

    if args.datasets is not None and not _csv(args.datasets):
        raise CliError("--datasets is empty; expected comma-separated dataset names (bench list datasets)")
    requested = _csv(args.datasets) if args.datasets is not None else None
    if requested is not None:
        _check_choices("dataset", requested, available_datasets())
    datasets_by_protocol = {}
    for protocol in protocols:
        accepts = PROTOCOLS[protocol].tasks
        try:
            settings = config.protocol_settings(protocol)
        except KeyError as error:
            raise CliError(error.args[0]) from None
        if requested is None:
            datasets_by_protocol[protocol] = list(settings.get("datasets", config.evaluation.datasets))
            continue
        datasets_by_protocol[protocol] = [name for name in requested if DATASETS.get(name)().task in accepts]
        if not datasets_by_protocol[protocol] and len(protocols) == 1:
            raise CliError(f"--datasets {args.datasets}: none is a {'/'.join(accepts)} dataset, "
                           f"which the {protocol} protocol needs")
    return datasets_by_protocol


def _apply_run_flags(args, profile: dict) -> None:
    """The flags that set profile values (--pretrain-dataset, --backbone, --precision, ...,
    --data-root): a flag that was given overrides the profile (RunConfig checks the values)."""
    from cxrbench.datasets import available_datasets

    if args.pretrain_dataset:
        _check_choices("pretraining dataset", [args.pretrain_dataset], available_datasets())
        profile["pretrain"]["dataset"] = args.pretrain_dataset
    if args.backbone:
        profile.setdefault("model", {})["backbone"] = args.backbone
    for key, value in (("precision", args.precision), ("channels_last", args.channels_last or None),
                       ("sync_batchnorm", args.sync_batchnorm or None), ("augment_on", args.augment_on)):
        if value is not None:
            profile["pretrain"][key] = value
    if args.data_root:
        if not Path(args.data_root).is_dir():
            raise CliError(f"--data-root {args.data_root}: no such directory (expected the parent of bench prepare's --out)")
        profile["data"]["root"] = str(Path(args.data_root).resolve())


def _check_available(config: RunConfig, methods: list[str], datasets_by_protocol: dict[str, list[str]]) -> None:
    """Every dataset the run reads is there, and every method's hyperparameters resolve."""
    from cxrbench.datasets import DATASETS
    from cxrbench.methods import get_method

    needed = {name for names in datasets_by_protocol.values() for name in names}
    if any(get_method(name).pretrains for name in methods):
        needed.add(config.pretrain.dataset)
    for name in sorted(needed):
        reason = DATASETS.get(name)().unavailable_reason(config.data)
        if reason:
            raise CliError(reason)
    for name in methods:
        try:
            config.method_hyperparameters(name)
        except ValueError as error:
            raise CliError(str(error)) from None


def _announce(args, run: ResolvedRun, plan, world) -> None:
    """One line: the grid, what is left of it, what cannot run here, where the records go."""
    cannot_run = [cell for cell in plan.cells if cell.method in plan.cannot_run]
    folder = ResultsFolder(run.out_dir)
    have_record = sum(1 for cell in plan.runnable() if folder.cell_record(cell.record_name).is_file())
    to_run = len(plan.cells) - len(cannot_run) - have_record
    grid = "; ".join(f"{protocol} on {', '.join(datasets) or 'no dataset'}" for protocol, datasets in run.datasets_by_protocol.items())
    print(f"bench run: {len(run.methods)} method(s) x ({grid}) x {len(run.fractions)} fraction(s) x {len(run.seeds)} seed(s) "
          f"= {len(plan.cells)} cells: {to_run} to run"
          + (f", {have_record} with a record already" if have_record else "")
          + (f", {len(cannot_run)} that cannot run here ({', '.join(sorted(plan.cannot_run))})" if cannot_run else "")
          + f"; profile {args.profile}; records in {run.out_dir}"
          + (f"; {world.size} processes" if world.distributed else "")
          + (f"; {args.executor} executor, {run.dispatch_options['jobs']} job(s) at once" if args.executor != "inline" else ""), flush=True)


def _execute(args, run: ResolvedRun, plan, runner) -> tuple[int, dict[str, str], list[str]]:
    """The plan run inline (this process, or every torchrun rank) or as jobs; (records written,
    method -> why not run, failed jobs)."""
    from cxrbench.distributed import sum_across_processes

    if args.executor == "inline":
        written = sum_across_processes(len(runner.run(plan)))
        if runner.claimed_elsewhere:
            print(f"bench run: {len(runner.claimed_elsewhere)} cell(s) were being evaluated by another process and were "
                  f"skipped here; the same command picks up any that process did not finish")
        return written, runner.missing, []
    from cxrbench.benchmark.dispatch import Executors, dispatch

    options = run.dispatch_options
    # each job resolves --device where it runs (a SLURM login node has no GPU)
    executors = Executors(args.executor, run.out_dir / "jobs", options["slurm"], args.pretrain_processes,
                          device=args.device, local_gpus=options["gpu_count"], threads=options["threads"])
    with _signals_as_exit():
        outcome = dispatch(runner, plan, executors, jobs=options["jobs"])
    return outcome.written, outcome.missing, outcome.failures


def _summarise(run: ResolvedRun, written: int, missing: dict[str, str], failures: list[str], seconds: float) -> int:
    """The paired tests and the learning check written and said; the exit status."""
    from cxrbench.records.comparisons import write_paired_tests

    tests = write_paired_tests(run.out_dir, resamples=run.config.evaluation.bootstrap_resamples)
    for method, reason in missing.items():
        print(f"bench run: missing: {method}: {reason}")
    print(f"bench run: paired tests against the baseline row in {tests}")
    _report_learning(run.out_dir)
    # a folder of its own beside the records: never a committed report under reports/
    print(f"bench run: {written} new record(s) in {seconds:.0f}s; "
          f"render tables with: bench report --results {run.out_dir} --out {run.out_dir / 'report'}")
    if failures:
        for line in failures:
            print(f"bench run: failed: {line}", file=sys.stderr)
        print(f"bench run: {len(failures)} job(s) failed or not run; the same command re-runs only what has no record", file=sys.stderr)
        return 1
    return 0


@contextlib.contextmanager
def _signals_as_exit():
    """SIGINT, SIGTERM and SIGHUP (a closed login session) end the dispatcher: its jobs are cancelled.

    SIGINT works even in a dispatcher started in the background by a script (which inherits it
    ignored), and so in its jobs; a SIGHUP that ``nohup`` ignores stays ignored.
    """
    from cxrbench.benchmark.dispatch import interruptible

    def leave(signum, frame):
        raise SystemExit(128 + signum)

    interruptible()
    watched = [signal.SIGTERM] + ([signal.SIGHUP] if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN else [])
    previous = {signum: signal.signal(signum, leave) for signum in watched}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _report_learning(out_dir: Path) -> None:
    """The end of a run: which methods did not beat random initialisation in any cell."""
    from cxrbench.records.comparisons import decided_methods, did_not_learn, learning_check

    check = learning_check(out_dir)
    if check.empty:
        print("bench run: learning check: no method cells beside Sup.1 (random initialisation) cells to compare with; "
              "run sup1 on the same cells to check that the methods learn")
        return
    verdicts = did_not_learn(check)
    decided = decided_methods(check)
    learned = sorted(decided - set(verdicts))
    print(f"bench run: learning check against random initialisation (Sup.1), paired tests, Holm per protocol: "
          f"{len(learned)} of {len(decided)} method(s) significantly above it in at least one frozen (else fine-tune) cell"
          + (f" ({', '.join(learned)})" if learned else ""))
    for method, reason in sorted(verdicts.items()):
        print(f"bench run: did not learn here: {reason}")


def _dispatch_options(args) -> dict:
    """The executor's settings, checked before anything is written."""
    from cxrbench.benchmark.dispatch import SlurmOptions, default_threads, parse_slurm_time

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and args.executor != "inline":
        raise CliError(f"--executor {args.executor} under torchrun: torchrun already runs one distributed job; "
                       f"use --executor inline (the default) there")
    slurm_flags = {flag: getattr(args, flag.removeprefix("--").replace("-", "_"))
                   for flag in ("--slurm-partition", "--slurm-mem-gb", "--slurm-account", "--slurm-qos", "--slurm-constraint")}
    if args.executor != "slurm":
        given = [flag for flag, value in slurm_flags.items() if value is not None] + (["--slurm-nodes"] if args.slurm_nodes != 1 else [])
        if given:
            raise CliError(f"{given[0]} applies to --executor slurm only (this run uses --executor {args.executor})")
    elif shutil.which("srun") is None:
        raise CliError("--executor slurm: no SLURM on this machine (srun is not on PATH); run it on a login node, "
                       "or use --executor local")
    if args.pretrain_processes < 1 or args.slurm_nodes < 1:
        raise CliError(f"--pretrain-processes {args.pretrain_processes} / --slurm-nodes {args.slurm_nodes}: expected at least 1")
    if args.executor == "inline" and args.pretrain_processes != 1:
        raise CliError("--pretrain-processes applies to --executor local or slurm; inline, start bench under torchrun instead")
    if args.executor == "inline" and args.jobs is not None:
        raise CliError("--jobs applies to --executor local or slurm; inline runs one cell after another")
    jobs = args.jobs if args.jobs is not None else (64 if args.executor == "slurm" else 1)
    if jobs < 1:
        raise CliError(f"--jobs {jobs}: expected at least 1")
    if args.slurm_gpus < 0 or args.slurm_cpus < 1:
        raise CliError(f"--slurm-gpus {args.slurm_gpus} / --slurm-cpus {args.slurm_cpus}: expected 0 or more GPUs and 1 or more CPUs")
    try:
        minutes = parse_slurm_time(args.slurm_time)
    except ValueError as error:
        raise CliError(str(error)) from None
    slurm = SlurmOptions(nodes=args.slurm_nodes, partition=args.slurm_partition, gpus=args.slurm_gpus, cpus=args.slurm_cpus, mem_gb=args.slurm_mem_gb,
                         time_minutes=minutes, account=args.slurm_account, constraint=args.slurm_constraint, qos=args.slurm_qos)
    import torch

    # slurm jobs get a node's CPUs of their own; local jobs share this machine's cores
    threads = 0 if args.executor == "slurm" else default_threads(jobs)
    gpu_count = torch.cuda.device_count() if args.executor == "local" else 0
    return {"jobs": jobs, "slurm": slurm, "threads": threads, "gpu_count": gpu_count}


def command_report(args) -> int:
    from cxrbench.reports.report import write_report
    from cxrbench.reports.tables import ReportError

    if not args.results and not args.reference:
        raise CliError("give --results DIR (a `bench run --out`), --reference NAME (e.g. optiml-paper), or both")
    results = Path(args.results) if args.results else None
    if results is not None and not results.is_dir():
        raise CliError(f"--results {results}: no such directory (expected the --out of `bench run`)")
    # default: beside the records (never a committed report under reports/); the paper's tables alone: reports/NAME
    default = results / "report" if results is not None else Path("reports") / args.reference
    out_dir = Path(args.out) if args.out else default
    _check_writable(out_dir, "--out")
    _check_writable(out_dir.resolve().parent, "--out")  # the report is staged beside it and renamed into place
    try:
        written = write_report(results, out_dir, reference=args.reference, baseline=args.baseline,
                               display_names=registered_display_names())
    except ReportError as error:
        raise CliError(str(error)) from None
    for path in written:
        print(path)
    return 0


def registered_display_names() -> dict[str, str]:
    """Every registered method's name as tables show it (the paper's rows of methods with no record)."""
    from cxrbench.methods import available_methods, get_method

    return {name: get_method(name).display_name for name in available_methods()}


def command_prepare(args) -> int:
    from cxrbench.datasets.prepare import READERS, prepare_dataset
    from cxrbench.datasets.real.common import PrepareError

    _check_choices("dataset", [args.dataset], sorted(READERS))
    if args.size < 32 or args.size % 32:
        raise CliError(f"--size {args.size}: expected a multiple of 32 (the U-Net halves it five times), at least 32")
    out = Path(args.out)
    _check_writable(out.parent if out.parent != Path("") else Path("."), "--out")
    try:
        manifest = prepare_dataset(
            args.dataset, Path(args.root), out, size=args.size, strict=args.strict, seed=args.seed,
            seeds=tuple(_parse_seeds(args.subset_seeds)), fractions=tuple(_parse_fractions(args.fractions)),
            splits=args.splits, splits_dir=Path(args.splits_dir) if args.splits_dir else None,
            label_rule=args.label_rule, workers=args.workers,
        )
    except PrepareError as error:
        raise CliError(str(error)) from None
    counts = ", ".join(f"{part} {count}" for part, count in manifest["counts_per_split"].items())
    print(f"bench prepare: {args.dataset}: {manifest['num_images']} images ({counts}) at {args.size} px in {out}; "
          f"{len(manifest['skipped'])} problem(s) listed in {out / 'manifest.json'}")
    return 0


def command_phantom(args) -> int:
    from cxrbench.benchmark.profiles import available_profiles, load_profile
    from cxrbench.reports.figures import phantom_samples_figure

    _check_choices("profile", [args.profile], available_profiles())
    out = Path(args.out)
    if out.suffix.lower() not in (".png", ".pdf", ".svg"):
        raise CliError(f"--out {out}: expected a .png, .pdf or .svg file name")
    _check_writable(out.parent, "--out")
    print(phantom_samples_figure(load_profile(args.profile)["data"], out))
    return 0


def command_speed(args) -> int:
    from tabulate import tabulate

    from cxrbench.benchmark import speed
    from cxrbench.records.io import atomic_write_json

    out = Path(args.out)
    if out.suffix != ".json":
        raise CliError(f"--out {out}: expected a .json file name")
    _check_writable(out.parent, "--out")
    from cxrbench.benchmark.config import ConfigError, RunConfig
    from cxrbench.benchmark.profiles import available_profiles, load_profile

    _check_choices("profile", [args.profile], available_profiles())
    profile = load_profile(args.profile)
    device = _device(args.device)  # a torch.device, resolved once
    on_gpu = device.type == "cuda"
    import torch

    # on a GPU the throughput worth knowing is the one a user would run: bf16 and channels-last
    precision = args.precision if args.precision != "auto" else (
        "bf16" if on_gpu and torch.cuda.is_bf16_supported() else profile["pretrain"].get("precision", "fp32"))
    channels_last = {"auto": on_gpu or bool(profile["pretrain"].get("channels_last")), "on": True, "off": False}[args.channels_last]
    profile["pretrain"].update(precision=precision, channels_last=channels_last)
    report = {"machine": speed.machine()}
    if args.backbone:
        profile.setdefault("model", {})["backbone"] = args.backbone
    try:
        config = RunConfig.from_profile(profile)
    except ConfigError as error:
        raise CliError(str(error)) from None
    widths = _csv(args.solver_widths)
    if not widths or not all(width.isdigit() and int(width) > 0 for width in widths):
        raise CliError(f"--solver-widths {args.solver_widths!r}: expected comma-separated positive whole numbers, e.g. 512,2048")
    report["sinkhorn_by_width"] = {}
    for width in map(int, widths):
        print(f"bench speed: Sinkhorn solver, {args.batch_size} problems of {width} x {width}, on {device} against POT "
              f"ot.solve_batch (CPU) and the memory floor ...", flush=True)
        report["sinkhorn_by_width"][str(width)] = speed.sinkhorn_benchmark(
            batch=args.batch_size, dim=width, iterations=args.iterations, device=device)
    print("bench speed: prepared uint8 array against per-sample PNG decoding ...", flush=True)
    report["loader"] = speed.loader_benchmark()
    print(f"bench speed: frozen protocol, cached features against recomputing them ({args.profile} profile) ...", flush=True)
    report["frozen_cache"] = speed.frozen_cache_benchmark(config, device=device)
    if not args.skip_step:
        print(f"bench speed: pretraining steps of every method at {profile['data']['image_size']} px, batch "
              f"{profile['pretrain']['batch_size']}, {precision}{', channels-last' if channels_last else ''} "
              f"({args.profile} profile), and each method's model-only bound ...", flush=True)
        report["pretraining"] = speed.pretraining_benchmark(config, device=device)
    atomic_write_json(out, report)
    print(tabulate(_speed_rows(report), headers=["measure", "value"], tablefmt="simple"))
    print(out)
    return 0


def command_doctor(args) -> int:
    from cxrbench.benchmark.profiles import available_profiles

    _check_choices("profile", [args.profile], available_profiles())
    device = _device(args.device)
    out = Path(args.out) if args.out else None
    if out is not None:
        if out.suffix != ".json":
            raise CliError(f"--out {out}: expected a .json file name")
        _check_writable(out.parent, "--out")
    data_root = Path(args.data_root) if args.data_root else None
    if data_root is not None and not data_root.is_dir():
        raise CliError(f"--data-root {data_root}: not a directory")
    from cxrbench.benchmark.doctor import run_doctor
    from cxrbench.records.io import atomic_write_json

    from cxrbench.methods import available_methods, get_method

    methods = None
    if args.methods != "all":
        methods = _csv(args.methods)
        _check_choices("method", methods, available_methods())
        without = [name for name in methods if not get_method(name).pretrains]
        if without:
            raise CliError(f"--methods {','.join(without)}: no pretraining stage to check; valid: "
                           + ", ".join(name for name in available_methods() if get_method(name).pretrains))
    report = run_doctor(device, args.profile, out.parent if out else Path.cwd(), data_root,
                        echo=lambda line: print(line, flush=True), methods=methods)
    if out is not None:
        atomic_write_json(out, report)
        print(out)
    return 0 if report["passed"] else 1


def command_status(args) -> int:
    from cxrbench.benchmark.status import describe, grid_status

    out_dir = Path(args.results)
    if not out_dir.is_dir():
        raise CliError(f"{out_dir}: no such results folder (expected a bench run --out folder)")
    folder = ResultsFolder(out_dir)
    if not folder.cells.is_dir() and not folder.plan_json.is_file() and not folder.pretrain.is_dir():
        raise CliError(f"{out_dir}: not a results folder (no cells/, pretrain/ or plan.json; expected a bench run --out folder)")
    for line in describe(grid_status(out_dir)):
        print(line)
    return 0


def _speed_rows(report: dict) -> list[tuple[str, str]]:
    def shown(value):
        return f"{value:.4g}" if isinstance(value, float) else value

    rows = []
    for width, figures in report.get("sinkhorn_by_width", {}).items():
        rows += [(f"sinkhorn[d={width}].{key}", shown(value)) for key, value in figures.items()]
    for section in ("loader", "frozen_cache"):
        rows += [(f"{section}.{key}", shown(value)) for key, value in report.get(section, {}).items()]
    pretraining = report.get("pretraining")
    if pretraining:
        for name, timing in pretraining["methods"].items():
            rows += [(f"pretraining.{name}.images_per_second", shown(timing["images_per_second"])),
                     (f"pretraining.{name}.model_only_images_per_second", shown(timing["model_only_images_per_second"])),
                     (f"pretraining.{name}.data_path_ratio", shown(timing["data_path_ratio"]))]
        rows += [(f"pretraining.{key}", shown(value)) for key, value in pretraining.items() if key != "methods"]
    return rows


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench",
        description="cxrbench: pretrain self-supervised methods on chest X-rays and evaluate them under one protocol.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_list(commands)
    _add_run(commands)
    _add_report(commands)
    _add_prepare(commands)
    _add_phantom(commands)
    _add_speed(commands)
    _add_status(commands)
    _add_doctor(commands)
    return parser


def _add_list(commands) -> None:
    listing = commands.add_parser("list", help="list methods, datasets, profiles or protocols",
                                  description="List what is registered, with a one-line description and its origin "
                                              "(built-in, or the plugin package it came from).")
    listing.add_argument("what", nargs="?", default="all", choices=["methods", "datasets", "profiles", "protocols", "all"])
    listing.add_argument("--details", metavar="METHOD",
                         help="every hyperparameter of METHOD as each profile resolves it (from the profile files)")
    listing.set_defaults(handler=command_list)


def _add_run(commands) -> None:
    run = commands.add_parser(
        "run", help="pretrain methods and evaluate every (method, dataset, protocol, fraction, seed) cell",
        description="Pretrain each method once, then evaluate every cell; one JSON record per cell under OUT/cells. "
                    "Cells that already have a record are skipped, so re-running resumes. Defaults come from the profile.",
    )
    run.add_argument("--methods", default="all",
                     help="'all', comma-separated names (see `bench list methods`) or a group such as "
                          "optiml-ablation; default: all")
    run.add_argument("--protocol", default="finetune",
                     help="comma-separated: frozen, finetune, segmentation, or all; default: finetune. Classification "
                          "protocols use the profile's evaluation.datasets, segmentation its own list (phantom-siim)")
    run.add_argument("--datasets", help="comma-separated evaluation datasets; default: the profile's")
    run.add_argument("--data-root", help="directory holding prepared real datasets (DATA_ROOT/nih, DATA_ROOT/siim ...) "
                                         "written by `bench prepare`; default: the profile's data.root")
    run.add_argument("--pretrain-dataset", help="dataset the SSL methods pretrain on; default: the profile's (phantom-nih)")
    run.add_argument("--backbone", choices=["resnet18", "resnet50"],
                     help="trunk every method pretrains and every protocol evaluates; default: the profile's model.backbone "
                          "(resnet18, the paper's). An --encoder row keeps its file's trunk")
    run.add_argument("--fractions", help="label fractions in percent, e.g. 1,10,100; default: the profile's")
    run.add_argument("--seeds", help="comma-separated seeds, e.g. 0,1; default: the profile's")
    run.add_argument("--profile", default="quick", help="smoke, quick, standard or paper (see `bench list profiles`); default: quick")
    run.add_argument("--out", help="directory for the run records; default: results/PROFILE")
    run.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N; default: auto")
    run.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="override a profile value, e.g. --set pretrain.epochs=30 or --set methods.vicreg.base_lr=0.3 "
                          "(repeatable; stored in every record's resolved config)")
    run.add_argument("--encoder", action="append", metavar="NAME=PATH",
                     help="add a row NAME whose encoder is read from the checkpoint PATH (torchvision/timm, cxrbench, "
                          "solo-learn/Lightning, lightly, mmselfsup/mmpretrain, official MoCo/DenseCL/SimSiam; recognised "
                          "from its keys) and not pretrained; repeatable. Stored in the profile's encoders section")
    gpu = run.add_argument_group("GPU options of pretraining (stored in the profile's pretrain section)")
    gpu.add_argument("--precision", choices=["fp32", "bf16", "fp16"], help="autocast dtype; default: the profile's (fp32)")
    gpu.add_argument("--channels-last", action="store_true", help="NHWC memory layout (faster convolutions on tensor cores)")
    gpu.add_argument("--sync-batchnorm", action="store_true",
                     help="under torchrun: BatchNorm statistics over the global batch instead of each process's share")
    gpu.add_argument("--augment-on", choices=["device", "cpu"],
                     help="where views are made: on the training device from the uint8 batch, or on the CPU; default: device")
    grid = run.add_argument_group(
        "grid dispatch", "Every pretraining and every cell as a job of its own (submitit); a method's cells start once its "
                         "encoder is stored. Under torchrun use the default, inline.")
    grid.add_argument("--executor", choices=["inline", "local", "slurm"], default="inline",
                      help="inline: this process, one cell after another; local: parallel processes on this machine; "
                           "slurm: SLURM jobs through submitit; default: inline")
    grid.add_argument("--jobs", type=int, metavar="N", help="jobs at once; default: 1 for local, 64 for slurm")
    grid.add_argument("--pretrain-processes", type=int, default=1, metavar="P",
                      help="processes (GPUs) of each pretraining job, trained as one DistributedDataParallel run; "
                           "cells always take one; default: 1")
    grid.add_argument("--slurm-nodes", type=int, default=1, metavar="N", help="nodes of each pretraining job (--pretrain-processes "
                                                                   "per node); default: 1")
    grid.add_argument("--slurm-partition", metavar="NAME", help="SLURM partition; default: the cluster's")
    grid.add_argument("--slurm-gpus", type=int, default=1, metavar="G", help="GPUs per cell job (a pretraining job of P processes takes P); default: 1")
    grid.add_argument("--slurm-cpus", type=int, default=8, metavar="C", help="CPUs per job; default: 8")
    grid.add_argument("--slurm-mem-gb", type=int, metavar="GB", help="memory per job in GB; default: the partition's")
    grid.add_argument("--slurm-time", default="24:00:00", metavar="T", help="time limit per job: minutes, H:MM:SS or D-HH:MM:SS; "
                                                               "default: 24:00:00 (also the local executor's limit)")
    grid.add_argument("--slurm-account", metavar="NAME", help="SLURM account to charge")
    grid.add_argument("--slurm-qos", metavar="NAME", help="SLURM quality of service")
    grid.add_argument("--slurm-constraint", metavar="FEATURE", help="SLURM node constraint, e.g. a100")
    run.set_defaults(handler=command_run)


def _add_report(commands) -> None:
    report = commands.add_parser(
        "report", help="render the paper's tables and figures from run records and/or the paper's numbers",
        description="Tables I (fine-tune), II (frozen), III (OPTiML ablation) and the segmentation table as Markdown, "
                    "LaTeX (booktabs) and CSV; label-efficiency curves, Grad-CAM heatmaps with localisation scores, "
                    "segmentation overlays and pretraining curves (PNG and PDF); index.md and a self-contained "
                    "index.html listing everything with each cell's provenance. Reads records only; never trains. "
                    "--reference alone regenerates the paper's tables from results/reference/NAME.csv, footnoting every "
                    "printed delta that disagrees with the paper's own numbers; with --results, ours and the paper's "
                    "side by side.")
    report.add_argument("--results", help="a `bench run --out` directory")
    report.add_argument("--reference", help="published numbers: a name in results/reference/ (optiml-paper) or a CSV path")
    report.add_argument("--baseline", help="method of the baseline row; default: sup2, else sup1")
    report.add_argument("--out", help="directory for the report, written whole (a new report replaces an older one entirely); default: RESULTS/report, or reports/NAME for --reference alone")
    report.set_defaults(handler=command_report)


def _add_prepare(commands) -> None:
    prepare = commands.add_parser(
        "prepare", help="read a released dataset once into a prepared directory (uint8 array, index, splits)",
        description="Read NIH ChestX-ray14, VinDr-CXR, RSNA Pneumonia or SIIM-ACR in the layout it was released in "
                    "(see the README) and write a prepared directory: index.csv, images.npy (uint8, N x S x S), "
                    "masks.npy (SIIM), boxes.csv, splits/ (nested label-fraction subsets) and manifest.json. Built in a "
                    "temporary directory and renamed into place at the end. Bad images are skipped and listed in the "
                    "manifest; with --strict any problem stops it and nothing is left behind.")
    prepare.add_argument("--dataset", required=True, help="nih, vindr, rsna or siim")
    prepare.add_argument("--root", required=True, help="the dataset's directory as released")
    prepare.add_argument("--out", required=True, help="the prepared directory to create (DATA_ROOT/NAME for bench run)")
    prepare.add_argument("--size", type=int, default=224,
                         help="square image size in pixels (the paper profile's 224; quick uses 64); default: 224")
    prepare.add_argument("--strict", action="store_true", help="stop at the first problem instead of skipping the image")
    prepare.add_argument("--splits", choices=["default", "benchx"], default="default",
                         help="default: the release's test split where it has one, else a seeded patient-wise "
                              "stratified split; benchx: BenchX's published lists (shipped with cxrbench)")
    prepare.add_argument("--splits-dir", help="read the BenchX lists from this directory instead of the shipped copy")
    prepare.add_argument("--label-rule", choices=["any", "majority"], default="any",
                         help="VinDr-CXR: a class is positive when any reader, or most readers, marked it; default: any")
    prepare.add_argument("--seed", type=int, default=0, help="seed of the train/val/test split; default: 0")
    prepare.add_argument("--subset-seeds", default="0,1,2", help="seeds of the label-fraction subsets; default: 0,1,2")
    prepare.add_argument("--fractions", default="1,10", help="label fractions written to splits/; default: 1,10")
    prepare.add_argument("--workers", type=int, help="decoding processes; default: min(8, CPU count)")
    prepare.set_defaults(handler=command_prepare)


def _add_phantom(commands) -> None:
    phantom = commands.add_parser("phantom", help="draw sample phantom images with labels, boxes and masks",
                                  description="Render a grid of sample images of every phantom dataset (generated on "
                                              "first use into $CXRBENCH_CACHE) with their labels and finding boxes.")
    phantom.add_argument("--out", default="docs/phantom-samples.png", help="image file (.png, .pdf, .svg)")
    phantom.add_argument("--profile", default="quick", help="whose image size and dataset sizes to use; default: quick")
    phantom.set_defaults(handler=command_phantom)


def _add_speed(commands) -> None:
    bench_speed = commands.add_parser(
        "speed", help="measure speed in one run: pretraining images/s per method, Sinkhorn vs POT, loader, frozen cache",
        description="Benchmarks measured back to back in one process, reported as ratios: the batched Sinkhorn "
                    "solver against POT's ot.solve_batch (same size and iterations) and against the memory floor, "
                    "training views from the prepared uint8 array against decoding a 1024 px PNG per sample, "
                    "the frozen protocol with cached features against recomputing them every epoch, and the "
                    "pretraining images/second of every method at the profile's image size and batch, with the "
                    "OPTiML/VICReg step-time ratio. Under 5 minutes on 2 CPU cores with the quick profile.")
    bench_speed.add_argument("--out", default="reports/speed.json", help="JSON file for the figures; default: reports/speed.json")
    bench_speed.add_argument("--batch-size", type=int, default=64, help="B of the Sinkhorn problems; default: 64")
    bench_speed.add_argument("--iterations", type=int, default=100, help="Sinkhorn iterations for both solvers; default: 100")
    bench_speed.add_argument("--profile", default="quick", help="image size, batch and frozen-probe settings of the "
                                                                "pretraining and frozen benchmarks; default: quick")
    bench_speed.add_argument("--skip-step", action="store_true", help="leave out the per-method pretraining steps")
    bench_speed.add_argument("--backbone", choices=["resnet18", "resnet50"],
                             help="trunk of the pretraining steps; default: the profile's model.backbone (resnet18)")
    bench_speed.add_argument("--solver-widths", default="512,2048",
                             help="feature widths d of the B x d x d Sinkhorn problems: 512 is OPTiML at ResNet-18, 2048 at "
                                  "ResNet-50; default: 512,2048")
    bench_speed.add_argument("--device", default="auto", help="device of the training steps: auto, cpu, cuda")
    bench_speed.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                             help="autocast of the pretraining steps; default auto: bf16 on a GPU that has it, else the profile's")
    bench_speed.add_argument("--channels-last", default="auto", choices=["auto", "on", "off"],
                             help="NHWC layout of the pretraining steps; default auto: on for a GPU, else the profile's")
    bench_speed.set_defaults(handler=command_speed)


def _add_status(commands) -> None:
    status = commands.add_parser(
        "status", help="what a grid has done, is running, has failed and has left, with the time left",
        description="Reads a results folder (a bench run --out), also while the grid runs elsewhere (SLURM, another "
                    "shell): cells done, being evaluated (live claims) and left against the latest bench run's plan; "
                    "pretrainings stored, running (live leases), interrupted or to do; damaged records; and the time "
                    "left, estimated from the folder's own records.")
    status.add_argument("results", help="the results folder (bench run --out)")
    status.set_defaults(handler=command_status)


def _add_doctor(commands) -> None:
    doctor = commands.add_parser(
        "doctor", help="self-check of an installation: environment, a pretraining step of every method, cells, DDP",
        description="Run this first on a new machine or cluster node. Reports the environment (versions, CUDA, cuDNN, "
                    "NCCL, GPUs, threads, free disk, Sup.2's ImageNet weights, prepared datasets), then checks, one "
                    "PASS/FAIL line each: three pretraining steps of every registered method (plugins included) at the "
                    "profile's image size under each precision the device supports, with channels-last and views made "
                    "on the device; a frozen and a fine-tune cell written through the runner; one step of a one-process "
                    "DistributedDataParallel group (gloo on CPU, NCCL on CUDA). Exit code 0 only if every check passed. "
                    "A few minutes on 2 CPU cores with the quick profile (24 checks).")
    doctor.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N; default: auto")
    doctor.add_argument("--profile", default="quick", help="whose image size the steps use; default: quick")
    doctor.add_argument("--methods", default="all", help="comma-separated methods whose pretraining step to check; "
                                                          "default: all that pretrain (plugins included)")
    doctor.add_argument("--data-root", default=None, help="directory of prepared real datasets to list (DATA_ROOT/nih, ...)")
    doctor.add_argument("--out", default=None, help="also write the report as JSON to this file")
    doctor.set_defaults(handler=command_doctor)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except CliError as error:
        print(f"bench {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (PretrainingInProgressError, StoredEncoderError) as error:  # not usage errors: the message says what to do
        print(f"bench {args.command}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"bench {args.command}: interrupted; finished cells keep their records, re-run to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
