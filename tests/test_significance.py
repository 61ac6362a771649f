"""Tables mark only what is significant: paired DeLong / t tests, Holm over the table's cells."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cxrbench.records.comparisons import write_paired_tests
from cxrbench.records.statistics import delong_mean_auroc_test, holm_reject, paired_bootstrap_test, mean_auroc_statistic
from cxrbench.reports.report import write_report
from cxrbench.reports.tables import layout, load_records, mark_significance, summarise

N = 400
RNG = np.random.default_rng(0)
TARGETS = (RNG.random((N, 3)) < 0.25).astype(np.float32)
NOISE = RNG.normal(size=(N, 3)).astype(np.float32)


def write_cell(out, method, scores, *, baseline=False, display=None, fraction=100.0, seed=0, protocol="frozen"):
    cell = {"method": method, "dataset": "phantom-nih", "protocol": protocol, "label_fraction": fraction, "seed": seed}
    stem = f"{method}__phantom-nih__{protocol}__{fraction:g}pct__seed{seed}"
    (out / "cells").mkdir(parents=True, exist_ok=True)
    np.savez(out / "cells" / f"{stem}.predictions.npz", image_ids=np.array([f"img{i}" for i in range(N)]),
             targets=TARGETS, scores=np.asarray(scores, dtype=np.float32))
    metric = float(np.mean([_auroc(TARGETS[:, c], scores[:, c]) for c in range(3)]))
    record = {"cell": cell, "method_display_name": display or method, "method_is_baseline": baseline,
              "headline_metric": "mean_auroc", "metrics": {"mean_auroc": metric},
              "predictions_file": f"{stem}.predictions.npz"}
    (out / "cells" / f"{stem}.json").write_text(json.dumps(record))


def _auroc(targets, scores):
    from sklearn.metrics import roc_auc_score

    return roc_auc_score(targets, scores)


def scores_with_signal(strength, seed):
    """Scores that rank positives above negatives with the given strength, plus own noise."""
    noise = np.random.default_rng(seed).normal(size=(N, 3))
    return strength * TARGETS + 0.3 * NOISE + noise


def test_delong_p_values_go_far_below_a_bootstrap_p_values_floor():
    strong, weak = scores_with_signal(2.0, 1), scores_with_signal(0.3, 2)
    exact = delong_mean_auroc_test(TARGETS, strong, weak)
    boot = paired_bootstrap_test(mean_auroc_statistic(TARGETS, strong), mean_auroc_statistic(TARGETS, weak), N, resamples=1000)
    assert boot.p_value >= 1 / 1001  # the floor of 1,000 resamples: 72 cells could never pass Holm at 5 %
    assert exact.p_value < 1e-6 < 0.05 / 72
    # the two agree on the spread of the difference
    assert exact.standard_error == pytest.approx((boot.high - boot.low) / 3.92, rel=0.25)


def test_delong_of_one_class_is_delongs_formula():
    """Brute-force DeLong (structural components from all positive-negative pairs)."""
    targets, a, b = TARGETS[:, 0], scores_with_signal(1.0, 3)[:, 0], scores_with_signal(0.6, 4)[:, 0]
    positive = targets > 0.5

    def components(scores):
        kernel = (scores[positive][:, None] > scores[~positive][None, :]) + 0.5 * (scores[positive][:, None] == scores[~positive][None, :])
        return kernel.mean(axis=1), kernel.mean(axis=0), kernel.mean()

    v10_a, v01_a, auc_a = components(a)
    v10_b, v01_b, auc_b = components(b)
    s10, s01 = np.cov(np.vstack([v10_a, v10_b])), np.cov(np.vstack([v01_a, v01_b]))
    covariance = s10 / positive.sum() + s01 / (~positive).sum()
    expected_se = np.sqrt(covariance[0, 0] + covariance[1, 1] - 2 * covariance[0, 1])
    test = delong_mean_auroc_test(targets, a, b)
    assert test.difference == pytest.approx(auc_a - auc_b)
    assert test.standard_error == pytest.approx(expected_se, rel=1e-9)


def test_holm_is_step_down():
    assert holm_reject([0.01, 0.04, 0.03, 0.2]) == [True, False, False, False]  # 0.01 < 0.05/4; 0.03 > 0.05/3
    assert holm_reject([0.001, 0.02, 0.012]) == [True, True, True]  # 0.001 < .05/3, 0.012 < .05/2, 0.02 < .05
    assert holm_reject([float("nan"), 0.001]) == [False, True]


def test_a_clear_difference_gets_an_arrow_a_tie_none_and_ties_with_the_best_are_bold(tmp_path):
    baseline = scores_with_signal(0.3, 10)
    write_cell(tmp_path, "sup1", baseline, baseline=True, display="Sup.1")
    write_cell(tmp_path, "good", scores_with_signal(2.0, 11), display="Good")
    write_cell(tmp_path, "twin", scores_with_signal(2.0, 14), display="Twin")  # as good, its own noise
    write_cell(tmp_path, "same", baseline + np.random.default_rng(13).normal(scale=0.05, size=(N, 3)), display="Same")
    records = load_records(tmp_path)
    table = mark_significance(layout(summarise(records, "frozen")), records, tmp_path, "frozen")
    text = {row: table.cells[(row, table.columns[0])].text() for row in table.rows}
    assert text["Good"].endswith("↑**") and text["Twin"].endswith("↑**")  # far above Sup.1; tied with each other
    assert "↑" not in text["Same"] and "↓" not in text["Same"] and not text["Same"].startswith("**")  # a tie with Sup.1
    assert not text["Sup.1 (bs)"].startswith("**")
    write_paired_tests(tmp_path)
    write_report(tmp_path, tmp_path / "report")
    caption = (tmp_path / "report" / "table2_frozen.md").read_text().splitlines()[0]
    assert "2 of 3 cells differ significantly" in caption and "Holm" in caption


def test_holm_decides_over_the_tables_cells(tmp_path, monkeypatch):
    """Three deltas each at p = 0.02: significant alone, not after Holm over the table's 3 cells."""
    from cxrbench.records import comparisons
    from cxrbench.records.statistics import ExactTest

    baseline = scores_with_signal(0.3, 20)
    write_cell(tmp_path, "sup1", baseline, baseline=True, display="Sup.1")
    for index, name in enumerate(("a", "b", "c")):
        write_cell(tmp_path, name, scores_with_signal(1.5, 21 + index), display=name.upper())  # deltas above 0, as the stand-in tests say
    monkeypatch.setattr(comparisons, "exact_test_between", lambda *args: ExactTest(0.01, 0.004, 0.02, "delong"))
    records = load_records(tmp_path)
    table = mark_significance(layout(summarise(records, "frozen")), records, tmp_path, "frozen")
    assert not any(cell.significant for cell in table.cells.values())
    monkeypatch.setattr(comparisons, "exact_test_between", lambda *args: ExactTest(0.01, 0.004, 0.01, "delong"))
    table = mark_significance(layout(summarise(records, "frozen")), records, tmp_path, "frozen")
    assert sum(cell.significant for cell in table.cells.values()) == 3  # 0.01 <= 0.05 / 3 for all three


def test_a_cell_of_several_seeds_is_significant_only_when_every_seed_is(tmp_path):
    write_cell(tmp_path, "sup1", scores_with_signal(0.3, 30), baseline=True, display="Sup.1")
    write_cell(tmp_path, "sup1", scores_with_signal(0.3, 31), baseline=True, display="Sup.1", seed=1)
    write_cell(tmp_path, "mixed", scores_with_signal(2.0, 32), display="Mixed")  # seed 0: far better
    write_cell(tmp_path, "mixed", scores_with_signal(0.3, 31) + 0.01, display="Mixed", seed=1)  # seed 1: the same
    records = load_records(tmp_path)
    table = mark_significance(layout(summarise(records, "frozen")), records, tmp_path, "frozen")
    cell = table.cells[("Mixed", table.columns[0])]
    assert cell.delta > 5 and not cell.significant


def test_the_caption_says_which_arrows_rest_on_one_seed(tmp_path):
    """An arrow from one seed compares two trained networks; the caption says so, counting the
    seeds the test used (those both rows have), and says nothing once two seeds agree."""
    from cxrbench.reports.tables import significance_sentence

    def caption() -> tuple[str, bool]:
        records = load_records(tmp_path)
        table = mark_significance(layout(summarise(records, "frozen")), records, tmp_path, "frozen")
        return significance_sentence(table), table.cells[("Good", table.columns[0])].significant

    write_cell(tmp_path, "sup1", scores_with_signal(0.3, 50), baseline=True, display="Sup.1")
    write_cell(tmp_path, "good", scores_with_signal(2.0, 51), display="Good")
    assert "The arrow rests on one seed" in caption()[0]
    write_cell(tmp_path, "good", scores_with_signal(2.0, 53), display="Good", seed=1)  # the baseline has seed 0 only
    assert "The arrow rests on one seed" in caption()[0]
    write_cell(tmp_path, "sup1", scores_with_signal(0.3, 52), baseline=True, display="Sup.1", seed=1)
    text, significant = caption()
    assert significant and "one seed" not in text  # every seed agrees: the arrow stays, unqualified


def test_the_learning_check_flags_a_method_that_did_not_learn(tmp_path):
    from cxrbench.records.comparisons import did_not_learn, learning_check

    random_features = scores_with_signal(0.3, 40)
    write_cell(tmp_path, "sup1", random_features, baseline=True, display="Sup.1")
    write_cell(tmp_path, "learned", scores_with_signal(2.0, 41), display="Learned")
    # an encoder that never moved: the random network's predictions, up to float noise
    write_cell(tmp_path, "unmoved", random_features + 1e-6, display="Unmoved")
    check = learning_check(tmp_path)
    assert set(check["method"]) == {"learned", "unmoved"}
    assert set(did_not_learn(check)) == {"unmoved"}
    row = check.set_index("method").loc["learned"]
    assert row["significant"] and row["low"] > 0 and row["difference"] > 20
    write_report(tmp_path, tmp_path / "report")
    text = (tmp_path / "report" / "learning_check_frozen.md").read_text()
    assert any("Unmoved" in line and "did not learn here" in line for line in text.splitlines())
    assert any("Learned" in line and "✓" in line and "learned" in line for line in text.splitlines())


def test_a_report_replaces_the_old_one_whole_and_a_failed_one_leaves_it_intact(tmp_path, capsys, monkeypatch):
    from cxrbench.benchmark.cli import main

    write_cell(tmp_path / "run", "sup1", scores_with_signal(0.3, 50), baseline=True, display="Sup.1")
    write_cell(tmp_path / "run", "good", scores_with_signal(2.0, 51), display="Good")
    out = tmp_path / "report"
    assert main(["report", "--results", str(tmp_path / "run"), "--out", str(out)]) == 0
    (out / "stale_table_of_an_older_run.md").write_text("old")
    assert main(["report", "--results", str(tmp_path / "run"), "--out", str(out)]) == 0
    assert not (out / "stale_table_of_an_older_run.md").exists() and (out / "index.html").is_file()
    before = {path.name: path.read_bytes() for path in out.iterdir() if path.is_file()}
    # a record whose predictions file is gone: one line, figures skipped, the tables still tested without it
    predictions = next((tmp_path / "run" / "cells").glob("good*.npz"))
    predictions.unlink()
    capsys.readouterr()
    assert main(["report", "--results", str(tmp_path / "run"), "--out", str(out)]) == 0
    assert "predictions file" in capsys.readouterr().err
    assert "without their predictions file" in (out / "index.md").read_text()
    # a report that fails half-way (tables written, then an error) leaves the previous one as it was
    from cxrbench.reports import report

    def fail_after_the_tables(*args):
        raise RuntimeError("failed half-way")

    monkeypatch.setattr(report, "_learning_check", fail_after_the_tables)
    shown = {path.name: path.read_bytes() for path in out.iterdir() if path.is_file()}
    with pytest.raises(RuntimeError, match="half-way"):
        write_report(tmp_path / "run", out)
    assert {path.name: path.read_bytes() for path in out.iterdir() if path.is_file()} == shown
    assert not [path for path in tmp_path.iterdir() if "staging" in path.name]
    assert before.keys() >= {"index.md", "table2_frozen.md"}


def test_a_report_never_replaces_a_folder_that_is_not_a_report(tmp_path, capsys):
    from cxrbench.benchmark.cli import main

    write_cell(tmp_path / "run", "sup1", scores_with_signal(0.3, 60), baseline=True, display="Sup.1")
    precious = tmp_path / "thesis"
    precious.mkdir()
    (precious / "chapter1.tex").write_text("...")
    (precious / "index.md").write_text("# My documentation site\n")  # an index.md alone does not make a report
    assert main(["report", "--results", str(tmp_path / "run"), "--out", str(precious)]) == 2
    assert "not a cxrbench report" in capsys.readouterr().err
    assert (precious / "chapter1.tex").read_text() == "..."
    # a report folder is readable by others (mkdtemp's 0700 is not kept)
    assert main(["report", "--results", str(tmp_path / "run"), "--out", str(tmp_path / "shared-report")]) == 0
    import os
    import stat

    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "shared-report").stat().st_mode) == 0o777 & ~umask


@pytest.mark.parametrize("damage, field", [
    (lambda r: r["metrics"].update(mean_auroc="0.9"), "metrics.mean_auroc"),
    (lambda r: r["metrics"].update(mean_auroc=[0.9]), "metrics.mean_auroc"),
    (lambda r: r["metrics"].update(mean_auroc=1e308), "metrics.mean_auroc"),
    (lambda r: r["metrics"].update(mean_auroc=1.7), "metrics.mean_auroc"),
    (lambda r: r["cell"].update(label_fraction="100"), "cell.label_fraction"),
    (lambda r: r.clear() or r.update(cell=None, metrics={}), "cell"),
])
def test_a_malformed_record_is_named_left_out_and_never_bolded(tmp_path, capsys, damage, field):
    from cxrbench.benchmark.cli import main

    write_cell(tmp_path / "run", "sup1", scores_with_signal(0.3, 70), baseline=True, display="Sup.1")
    write_cell(tmp_path / "run", "good", scores_with_signal(2.0, 71), display="Good")
    write_cell(tmp_path / "run", "bad", scores_with_signal(0.3, 72), display="Bad")
    path = next((tmp_path / "run" / "cells").glob("bad*.json"))
    record = json.loads(path.read_text())
    damage(record)
    path.write_text(json.dumps(record))
    assert main(["report", "--results", str(tmp_path / "run"), "--out", str(tmp_path / "report")]) == 0
    errors = [line for line in capsys.readouterr().err.splitlines() if path.name in line]
    assert len(errors) == 1 and field in errors[0]
    table = (tmp_path / "report" / "table2_frozen.md").read_text()
    assert "Bad" not in table and "1 invalid record(s) left out" in table and "**" in table


def test_a_record_that_is_a_json_list_is_left_out(tmp_path, capsys):
    write_cell(tmp_path, "sup1", scores_with_signal(0.3, 73), baseline=True, display="Sup.1")
    (tmp_path / "cells" / "list.json").write_text("[1, 2]")
    records = load_records(tmp_path)
    assert list(records["method"]) == ["sup1"] and "list.json" in records.attrs["skipped"][0]


def test_method_pairs_tell_a_clear_difference_from_a_tie_and_leave_the_baseline_out(tmp_path):
    from cxrbench.records.comparisons import method_pairs

    write_cell(tmp_path, "sup1", scores_with_signal(0.3, 60), baseline=True, display="Sup.1")
    write_cell(tmp_path, "strong", scores_with_signal(2.0, 61), display="Strong")
    write_cell(tmp_path, "twin", scores_with_signal(2.0, 62), display="Twin")  # the same strength: a tie
    write_cell(tmp_path, "weak", scores_with_signal(0.3, 63), display="Weak")
    write_cell(tmp_path, "strong", scores_with_signal(0.3, 64), display="Strong", protocol="finetune")  # another protocol
    pairs = method_pairs(tmp_path, "frozen", 100.0).set_index(["method_a", "method_b"])
    assert set(pairs.index) == {("strong", "twin"), ("strong", "weak"), ("twin", "weak")}  # Sup.1 in no pair
    assert pairs.loc[("strong", "weak"), "significant"] and pairs.loc[("twin", "weak"), "significant"]
    assert pairs.loc[("strong", "weak"), "difference"] > 20 and pairs.loc[("strong", "weak"), "low"] > 0
    assert pairs.loc[("strong", "weak"), "display_a"] == "Strong"
    assert not pairs.loc[("strong", "twin"), "significant"]
    # a fraction with no records gives no pairs, not an error
    assert method_pairs(tmp_path, "frozen", 10.0).empty
    write_report(tmp_path, tmp_path / "report")
    lines = (tmp_path / "report" / "method_pairs_frozen.md").read_text().splitlines()
    assert "2 of 3 comparisons are significant" in lines[0]
    assert any("Strong – Weak" in line and "✓" in line for line in lines)
    assert any("Strong – Twin" in line and "✓" not in line for line in lines)


def test_a_method_pair_counts_only_when_every_shared_seed_agrees(tmp_path):
    from cxrbench.records.comparisons import method_pairs

    for seed in (0, 1):
        write_cell(tmp_path, "sup1", scores_with_signal(0.3, 70 + seed), baseline=True, display="Sup.1", seed=seed)
        write_cell(tmp_path, "steady", scores_with_signal(2.0, 72 + seed), display="Steady", seed=seed)
    write_cell(tmp_path, "mixed", scores_with_signal(0.3, 74), display="Mixed", seed=0)  # clearly below Steady
    write_cell(tmp_path, "mixed", scores_with_signal(2.0, 75) + 0.01, display="Mixed", seed=1)  # the same as Steady
    write_cell(tmp_path, "single", scores_with_signal(0.3, 76), display="Single", seed=0)  # one seed only
    pairs = method_pairs(tmp_path, "frozen", 100.0).set_index(["method_a", "method_b"])
    assert pairs.loc[("mixed", "steady"), "seeds"] == 2 and not pairs.loc[("mixed", "steady"), "significant"]
    # a pair is decided on the seeds both methods have
    assert pairs.loc[("single", "steady"), "seeds"] == 1 and pairs.loc[("single", "steady"), "significant"]
