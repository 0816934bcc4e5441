"""`calm check-reports`: a committed report against the profile that would produce it, on a copy of the study's report."""
import re
import shutil
from pathlib import Path

from calm.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _copy(tmp_path) -> tuple[Path, Path]:
    "reports/study's manifest and README, and the study profile, copied into `tmp_path`."
    reports, profiles = tmp_path / "reports", tmp_path / "profiles"
    (reports / "study").mkdir(parents=True); profiles.mkdir()
    for f in ("manifest.json", "README.md"): shutil.copy(ROOT / "reports" / "study" / f, reports / "study")
    shutil.copy(ROOT / "calm" / "profiles" / "study.yaml", profiles)
    return reports, profiles


def test_a_changed_profile_value_makes_the_report_stale_until_it_is_archived(tmp_path, capsys):
    reports, profiles = _copy(tmp_path)
    args = ["check-reports", "--reports", str(reports), "--profiles", str(profiles)]
    assert main(args) == 0                                        # as committed: the profile still produces it
    assert "| study/manifest.json | current" in re.sub(r" +", " ", capsys.readouterr().out)
    y = profiles / "study.yaml"
    y.write_text(re.sub(r"(?m)^(\s+max_steps:) *\d+", r"\g<1> 41", y.read_text()), encoding="utf-8")
    assert main(args) == 1
    out = capsys.readouterr()
    assert "training.max_steps: 40 -> 41" in out.out and "FAILED: stale or missing, not archived: study/manifest.json" in out.err
    readme = reports / "study" / "README.md"
    readme.write_text(readme.read_text() + "\narchived: the 40-step run, kept for comparison\n", encoding="utf-8")
    assert main(args) == 0
    assert "stale (archived)" in capsys.readouterr().out


def test_a_description_or_estimate_change_is_not_staleness(tmp_path, capsys):
    reports, profiles = _copy(tmp_path)
    y = profiles / "study.yaml"
    text = re.sub(r"(?m)^description: .*$", "description: reworded", y.read_text())
    y.write_text(re.sub(r"(?m)^(\s+tokens_per_s:) *\d+", r"\g<1> 99", text), encoding="utf-8")
    assert main(["check-reports", "--reports", str(reports), "--profiles", str(profiles)]) == 0


def test_a_report_folder_without_a_manifest_fails_and_a_reasonless_mark_is_an_error(tmp_path, capsys):
    reports, profiles = _copy(tmp_path)
    (reports / "testbed").mkdir(); (reports / "testbed" / "results.md").write_text("| a |\n")
    assert main(["check-reports", "--reports", str(reports), "--profiles", str(profiles)]) == 1
    assert "testbed/" in capsys.readouterr().err
    (reports / "testbed" / "README.md").write_text("archived:\n")
    assert main(["check-reports", "--reports", str(reports), "--profiles", str(profiles)]) == 2
    assert "needs a reason" in capsys.readouterr().err

